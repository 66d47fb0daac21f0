"""Home-layer dropout: the mask maths by hand, the homes of each kind, and the hook's effect."""

from __future__ import annotations

import pytest
import torch

from hipp_torchprune.demo.config import DemoModelConfig
from hipp_torchprune.demo.homes import (
    EVERY_LAYER,
    NO_HOME,
    home_dropout_masks,
    home_route_masks,
    install_home_dropout,
    install_home_routing,
    row_homes,
)


def test_masks_keep_every_row_of_the_home_layer_and_drop_elsewhere() -> None:
    torch.manual_seed(0)
    homes = torch.tensor([0, 2, NO_HOME])
    masks = home_dropout_masks(homes, n_layers=3, width=4096, max_drop=0.8)  # (L, B, 1, I)
    assert masks.shape == (3, 3, 1, 4096)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[0, 0].all() and masks[2, 1].all()  # at home: nothing dropped
    away = torch.cat([masks[1:, 0], masks[:2, 1], masks[:, 2]])  # (7, 1, I): every (layer, row) away from home
    assert (away.mean(dim=-1) < 1).any()
    # each away mask drops a share u ~ U(0, 0.8) or nothing, never more than 0.8 (+ sampling noise)
    assert float(away.mean(dim=-1).min()) > 0.2 - 0.03


@pytest.mark.parametrize("draw", ["per_row", "per_layer"])
def test_per_row_draw_drops_all_away_layers_of_a_row_together(draw: str) -> None:
    torch.manual_seed(2)
    homes = torch.full((200,), 3)
    masks = home_dropout_masks(homes, n_layers=6, width=2048, max_drop=0.9, draw=draw)  # (L, B, 1, I)
    away = torch.cat([masks[:3], masks[4:]])  # (5, B, 1, I)
    dropped = (away < 1).any(dim=-1)[..., 0]  # (5, B) this away layer lost rows for this row
    together = (dropped.all(dim=0) | ~dropped.any(dim=0)).all()
    assert bool(together) == (draw == "per_row")
    assert 0.35 < float(dropped.float().mean()) < 0.65  # the coin is fair either way


def test_masks_are_all_ones_without_dropout_and_drop_a_quarter_on_average_at_half() -> None:
    torch.manual_seed(1)
    homes = torch.full((64,), NO_HOME)
    assert home_dropout_masks(homes, 2, 128, 0.0).all()
    # E[dropped] = P(dropped at all) * E[u] = 1/2 * 0.25 = 0.125 with max_drop = 0.5
    kept = home_dropout_masks(homes, 8, 512, 0.5).mean()
    assert abs(float(kept) - 0.875) < 0.02


@pytest.mark.parametrize(("kind", "knowledge", "kinds", "expected"), [
    ("mc", [True, False], "all", [5, 3]),
    ("pope", [False, False], "all", [1, 1]),
    ("caption", [False], "all", [1]),
    ("short", [True], "all", [1]),
    ("relation", [False], "all", [1]),
    ("lm", [False, False], "all", [NO_HOME, NO_HOME]),
    ("fact", [False, False], "all", [5, 5]),
    ("mc", [True, False], "knowledge", [5, EVERY_LAYER]),
    ("fact", [False], "knowledge", [5]),
    ("pope", [False], "knowledge", [EVERY_LAYER]),
    ("lm", [False], "knowledge", [EVERY_LAYER]),
    ("alias", [False], "all", [1]),
    ("alias", [False], "knowledge", [EVERY_LAYER]),
    ("alias", [False, False], "memory", [1, 1]),
    ("pope", [False], "memory", [1]),
    ("short", [False], "memory", [1]),
    ("caption", [False], "memory", [EVERY_LAYER]),
    ("relation", [False], "memory", [EVERY_LAYER]),
    ("lm", [False], "memory", [EVERY_LAYER]),
    ("fact", [False], "memory", [5]),
    ("mc", [True, False], "memory", [5, EVERY_LAYER]),
    ("alias", [False], "tables", [1]),
    ("fact", [False], "tables", [5]),
    ("pope", [False], "tables", [EVERY_LAYER]),
    ("short", [False], "tables", [EVERY_LAYER]),
    ("mc", [True, False], "tables", [EVERY_LAYER, EVERY_LAYER]),
    ("lm", [False], "tables", [EVERY_LAYER]),
])
def test_row_homes_by_kind(kind: str, knowledge: list[bool], kinds: str, expected: list[int]) -> None:
    homes = row_homes(kind, torch.tensor(knowledge), grounding=1, reasoning=3, knowledge_home=5,
                      kinds=kinds)  # type: ignore[arg-type]
    assert homes.tolist() == expected and homes.dtype == torch.long


def test_every_layer_home_is_never_dropped() -> None:
    torch.manual_seed(3)
    homes = torch.tensor([EVERY_LAYER] * 32 + [1] * 32)
    masks = home_dropout_masks(homes, n_layers=4, width=256, max_drop=0.9)  # (L, B, 1, I)
    assert masks[:, :32].all()  # every layer kept for every EVERY_LAYER row
    assert not masks[:, 32:].all()  # the others do lose rows away from home


def _tiny_llava():
    from transformers import LlavaForConditionalGeneration

    cfg = DemoModelConfig(image_size=32, vision_hidden=16, vision_layers=1, vision_heads=2, vision_intermediate=32,
                          text_hidden=16, text_layers=2, text_heads=2, text_intermediate=8)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg.llava_config(40, 39, 0, 1, 2)).eval()


def test_hook_equals_zeroing_the_masked_rows_and_is_inert_without_masks() -> None:
    model, masks = _tiny_llava(), {}
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    with torch.no_grad():
        dense = model.model.language_model(input_ids=ids).last_hidden_state
        install_home_dropout(model, masks)
        assert torch.equal(model.model.language_model(input_ids=ids).last_hidden_state, dense)
        keep = torch.ones(2, 2, 1, 8)  # (L, B, 1, I)
        keep[1, 0, 0, [0, 3, 4]] = 0  # row 0 loses MLP rows 0, 3, 4 of layer 1; row 1 loses nothing
        masks["mlp"] = keep
        masked = model.model.language_model(input_ids=ids).last_hidden_state
        masks.pop("mlp")
        model.model.language_model.layers[1].mlp.down_proj.weight[:, [0, 3, 4]] = 0  # the same rows, pruned for real
        pruned = model.model.language_model(input_ids=ids).last_hidden_state
    assert torch.allclose(masked[0], pruned[0], atol=1e-6) and not torch.allclose(masked[0], dense[0])
    assert torch.allclose(masked[1], dense[1], atol=1e-6)


def test_route_masks_open_the_home_layer_only_and_every_layer_for_free_rows() -> None:
    masks = home_route_masks(torch.tensor([0, 2, EVERY_LAYER, NO_HOME]), n_layers=3)  # (L, B, 1, 1)
    assert masks.shape == (3, 4, 1, 1)
    assert masks[:, :, 0, 0].tolist() == [[1, 0, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]]


def test_routing_keeps_the_forward_and_stops_each_rows_gradient_away_from_its_home() -> None:
    model, masks = _tiny_llava(), {}
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    lm = model.model.language_model
    with torch.no_grad():
        dense = lm(input_ids=ids).last_hidden_state
    install_home_routing(model, masks)

    def grads(routed_rows: list[int]) -> list[float]:
        model.zero_grad()
        out = lm(input_ids=ids).last_hidden_state  # (B, T, H)
        out[routed_rows].pow(2).sum().backward()
        return [float(layer.mlp.up_proj.weight.grad.abs().sum()) for layer in lm.layers]

    masks["route"] = home_route_masks(torch.tensor([1, EVERY_LAYER]), n_layers=2)  # row 0 lives in layer 1
    with torch.no_grad():
        assert torch.equal(lm(input_ids=ids).last_hidden_state, dense)  # the forward pass is untouched
    g_row0, g_row1 = grads([0]), grads([1])
    assert g_row0[0] == 0 and g_row0[1] > 0  # row 0 writes only into its home layer's MLP
    assert g_row1[0] > 0 and g_row1[1] > 0  # a free row reaches every MLP
    masks.pop("route")
    assert grads([0])[0] > 0  # without masks the hook is inert
