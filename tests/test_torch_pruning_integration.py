"""What a torch_pruning user writes: our ratio dict and scorer inside tp's own BasePruner."""

from __future__ import annotations

import torch
import torch_pruning as tp

import hipp_torchprune as hipp
from tests.conftest import PROMPTS, images, samples


def test_base_pruner_realizes_our_widths(tiny) -> None:
    _, model, processor = tiny
    adapter = hipp.get_adapter(model)
    stats = hipp.calibrate(model, processor, samples(3))
    plan = hipp.make_plan(model, "random", 0.4, round_to=16, seed=5)
    ratio_dict = hipp.allocate(model, strategy="random", sparsity=0.4, round_to=16, seed=5)
    assert set(ratio_dict) <= {m.gate for m in adapter.mlps()}
    batch = adapter.encode(processor, images(1), PROMPTS[:1])
    pruner = tp.pruner.BasePruner(
        model, example_inputs=dict(batch), importance=hipp.importance("wanda", model, stats),
        pruning_ratio_dict=ratio_dict, ignored_layers=adapter.non_mlp_modules(), round_to=16,
        output_transform=lambda out: out.logits,
    )
    pruner.step()
    assert tuple(adapter.intermediate_widths()) == plan.widths_after
    assert model.config.text_config.hidden_size == adapter.mlps()[0].down.out_features  # residual intact
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_dense_layers_stay_dense_in_base_pruner(tiny) -> None:
    """A plan that keeps some layers dense must not let Torch-Pruning's default ratio cut them."""
    _, model, processor = tiny
    adapter = hipp.get_adapter(model)
    plan = hipp.make_plan(model, "uniform", 0.02, round_to=16)
    assert plan.widths_after.count(256) >= 2  # rounding keeps most layers dense
    ratio_dict = hipp.allocate(model, strategy="uniform", sparsity=0.02, round_to=16)
    assert len(ratio_dict) == 4
    batch = adapter.encode(processor, images(1), PROMPTS[:1])
    tp.pruner.BasePruner(model, example_inputs=dict(batch), importance=hipp.importance("magnitude", model),
                         pruning_ratio_dict=ratio_dict, ignored_layers=adapter.non_mlp_modules(), round_to=16,
                         output_transform=lambda out: out.logits).step()
    assert tuple(adapter.intermediate_widths()) == plan.widths_after
