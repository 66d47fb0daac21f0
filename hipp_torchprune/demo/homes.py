"""Home layers: where each skill of the demo model lives (training-time MLP row dropout).

A trained transformer spreads a small skill over many layers, and its first MLP becomes a
generic bottleneck that every task needs; then no layer is critical for one task and idle for
another, and there is nothing for a pruning allocator to find. Home-layer dropout gives each
training row a *home* decoder layer by the kind of question it asks. During training, every
other layer's MLP loses a random share of its rows for that row (with probability 1/2, a share
drawn uniformly from ``[0, max_drop]``), so the model learns that only the home layer's MLP is
reliable for that skill and puts the skill there: grounding (yes/no object questions, captions)
in one layer, image reasoning (the ScienceQA-style image kinds) in another, world knowledge in a
third. Pruning then removes a skill exactly when it removes its home layer's rows, as the
vision-grounding layers of a real VLM are the ones whose pruning makes it hallucinate.

The mask maths is a pure function (:func:`home_dropout_masks`); :func:`install_home_dropout`
hooks it into a Llama decoder's ``down_proj`` inputs; :func:`row_homes` maps a batch to homes.

Dropout also teaches every layer to do without its rows, which makes the trained model robust to
row pruning everywhere (probes 22-26, and ``benchmarks/memory_tables.py``: 1,000 aliases and 800
facts keep 98 % exact recall at uniform 50 % pruning after home dropout, 33-53 % when routed).
*Home routing* (:func:`home_route_masks`, :func:`install_home_routing`) places skills without
that side effect: the forward pass is untouched, and each row's gradient reaches only its home
layer's MLP (every other MLP's output is detached for that row), so what a row teaches is
written into its home layer, as gradient routing does (Cloud et al., 2024). Routing with dropout
on the forward pass (``memory_tables.py --homes both``) also keeps a downstream table's keys
robust to an upstream layer's pruning: the lore's critical layer is then its home (layer 1 at
75 % costs it 16 points, its home layer 5 costs 57), where routing alone lets layer 1 cost 79.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

#: How the drop/no-drop coin is shared (see :func:`home_dropout_masks`).
DropDraw = Literal["per_row", "per_layer"]

#: Home of the rows that have none (text-only corpus rows): every layer is dropped.
NO_HOME = -1
#: Home of the rows that home-layer dropout leaves alone: no layer is dropped.
EVERY_LAYER = -2
#: Which rows get a home: every kind; world-knowledge rows only; the memorized tables' rows
#: ("memory": world knowledge and stated facts in the knowledge home, stated aliases and the
#: aliased yes/no questions in the grounding home); or only the stated tables ("tables": stated
#: facts in the knowledge home, stated aliases in the grounding home, every question free).
HomeKinds = Literal["all", "knowledge", "memory", "tables"]
#: The kinds that read the alias dictionary (homed with grounding under ``"memory"``).
ALIAS_KINDS: frozenset[str] = frozenset({"alias", "pope", "short"})


def home_dropout_masks(homes: torch.Tensor, n_layers: int, width: int, max_drop: float,
                       draw: DropDraw = "per_row") -> torch.Tensor:
    """Keep-masks of the MLP rows, per decoder layer and batch row.

    Args:
        homes: (B,) home layer of each batch row (``NO_HOME`` = none, ``EVERY_LAYER`` = all).
        n_layers: decoder layers.
        width: MLP intermediate size (rows per layer).
        max_drop: largest share of a layer's rows one mask drops, in [0, 1).
        draw: "per_row": one coin per batch row decides whether *all* its away layers drop
            rows, so no away layer is a reliable backup of another; "per_layer": one coin per
            (layer, row), which lets a skill survive spread redundantly over the away layers.

    Returns:
        (L, B, 1, I) float tensor of 0/1: all ones at a row's home layer; elsewhere, with
        probability 1/2 all ones, else each MLP row kept with probability ``1 - u``, u ~ U(0, max_drop)
        drawn per (layer, row). Drawn from torch's global RNG (seeded and checkpointed by the trainer).
    """
    b = homes.shape[0]
    coins = (1 if draw == "per_row" else n_layers, b, 1, 1)
    active = (torch.rand(coins) < 0.5).expand(n_layers, b, 1, 1)  # (L, B, 1, 1) this (layer, row) drops rows
    share = torch.rand(n_layers, b, 1, 1) * max_drop  # (L, B, 1, 1)
    keep = (torch.rand(n_layers, b, 1, width) >= share) | ~active  # (L, B, 1, I)
    at_home = (torch.arange(n_layers)[:, None] == homes[None, :]) | (homes[None, :] == EVERY_LAYER)  # (L, B)
    return (keep | at_home[:, :, None, None]).float()


def row_homes(kind: str, knowledge: torch.Tensor, grounding: int, reasoning: int, knowledge_home: int,
              kinds: HomeKinds = "all") -> torch.Tensor:
    """(B,) home layer of each row of a one-kind batch.

    Multiple-choice rows live in ``knowledge_home`` when they are world-knowledge questions
    (``knowledge`` is their (B,) flag) and in ``reasoning`` otherwise; stated lore facts ("fact")
    live in ``knowledge_home``; the text corpus ("lm") has no home; every other kind asks about
    the image directly, or (stated aliases, "alias") states what a POPE question's word names,
    and lives in ``grounding``. With ``kinds="knowledge"`` every row that is
    not world knowledge gets ``EVERY_LAYER`` (never dropped); with ``kinds="memory"`` so does every
    row but world knowledge and the :data:`ALIAS_KINDS` (which live in ``grounding``); with
    ``kinds="tables"`` only stated facts and stated aliases have a home.
    """
    if kinds == "tables":
        home = {"fact": knowledge_home, "alias": grounding}.get(kind, EVERY_LAYER)
        return torch.full_like(knowledge, home, dtype=torch.long)
    if kind == "mc":
        other = reasoning if kinds == "all" else EVERY_LAYER
        return torch.where(knowledge.bool(), knowledge_home, other)
    if kind == "fact":
        return torch.full_like(knowledge, knowledge_home, dtype=torch.long)
    if kinds == "memory" and kind in ALIAS_KINDS:
        return torch.full_like(knowledge, grounding, dtype=torch.long)
    if kinds in ("knowledge", "memory"):
        return torch.full_like(knowledge, EVERY_LAYER, dtype=torch.long)
    return torch.full_like(knowledge, NO_HOME if kind == "lm" else grounding, dtype=torch.long)


def home_route_masks(homes: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Gradient masks of home routing: (L, B, 1, 1) float, 1 where row ``b``'s gradient may reach
    layer ``l``'s MLP (its home, or every layer for ``EVERY_LAYER`` and ``NO_HOME`` rows), else 0."""
    free = (homes == EVERY_LAYER) | (homes == NO_HOME)  # (B,)
    at_home = (torch.arange(n_layers)[:, None] == homes[None, :]) | free[None, :]  # (L, B)
    return at_home[:, :, None, None].float()


def install_home_routing(model: Any, masks: dict[str, Any]) -> None:
    """Forward hooks on every decoder layer's MLP that, while the trainer has set
    ``masks["route"]`` (L, B, 1, 1), return ``m * out + (1 - m) * out.detach()``: the same
    output, with the gradient of the rows whose mask is 0 stopped at this MLP."""
    for i, layer in enumerate(model.model.language_model.layers):
        layer.mlp.register_forward_hook(_router(masks, i))


def _router(masks: dict[str, Any], layer: int) -> Any:
    def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        stack = masks.get("route")
        if stack is None:
            return None
        m = stack[layer].to(out.dtype)  # (B, 1, 1)
        return m * out + (1 - m) * out.detach()
    return hook


def install_home_dropout(model: Any, masks: dict[str, Any]) -> None:
    """Pre-hooks on every decoder layer's ``down_proj`` that multiply its input (B, T, I) by
    ``masks["mlp"][layer]`` (B, 1, I) while the trainer has set it (training forwards only)."""
    for i, layer in enumerate(model.model.language_model.layers):
        layer.mlp.down_proj.register_forward_pre_hook(_masker(masks, i))


def _masker(masks: dict[str, Any], layer: int) -> Any:
    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        stack = masks.get("mlp")
        if stack is None:
            return None
        return (args[0] * stack[layer].to(args[0].dtype), *args[1:])  # the trainer put it on the device
    return hook
