"""Kept MLP channels of our baselines against the references' own public code, on a tiny random Llama.

The references are run from checkouts outside the project (``--refs DIR`` holds ``FLAP``,
``LLM-Pruner`` and ``OWL``; none of their code is copied here) on one seeded tiny Llama and one
fixed calibration batch of random tokens; our scorers (``hipp_torchprune.api.importance``) see the
same model and the same tokens. For each method: per-layer Spearman correlation of the channel
scores, and the Jaccard index of the kept channels at each ratio.

* ``wanda-sp``: FLAP's ``lib/prune.py`` ``prune_wanda_sp`` (scores read at ratio 0, the dense model;
  kept channels from its own run at each ratio, which re-collects statistics on the pruned model
  layer by layer and also removes attention heads).
* ``flap``: FLAP's ``prune_flap`` with ``--metrics WIFV --structure AL-AM`` (scores through its
  ``metrics`` table; our run removes as many MLP channels as the reference's global threshold did).
* ``llm-pruner``: LLM-Pruner's ``TaylorImportance(group_reduction="sum", taylor="param_first")`` inside
  its own vendored ``MetaPruner`` (block-wise, MLP roots of the layers our rule prunes).
* ``owl``: OWL's ``lib/prune_all.py`` ``prune_wanda_outlier``: layer outlier ratios ``D`` and layer
  sparsities (a second table; OWL prunes unstructured inside a layer).

Shims, all in this file (the references target older transformers and a GPU): a stand-in ``data``
module serving the calibration batch (instead of downloading C4 or WikiText), ``Tensor.cuda`` as the
identity while FLAP's code runs, the rotary embeddings passed to each decoder layer and ``num_heads`` set on each attention
(transformers 5 computes the former outside the layer and dropped the latter), zero ``o_proj``/``down_proj`` biases on the reference's copy
(FLAP's own modeling file has them), FLAP's half-precision mean cast back to the model's dtype
before its bias product, ``hf_device_map = {}`` for OWL, and LLM-Pruner's package ``__init__`` files
skipped (they import model files written for old transformers). The project's adapters are VLM-only,
so our side sees the same Llama modules inside a LLaVA wrapper (the Llama is its language model).

    python benchmarks/reference_agreement.py --refs /tmp/refs
    python benchmarks/reference_agreement.py --self-check     # reference := our own scorer (CI)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from hipp_torchprune import api
from hipp_torchprune.pruning.calibration import CalibrationStats, collect_stats
from hipp_torchprune.pruning.operator import keep_indices, layer_scores
from hipp_torchprune.registry import Registry

#: Hidden width and head size: FLAP's code hard-codes 128-wide heads.
HIDDEN, HEAD_DIM, VOCAB = 256, 128, 512
METHODS = ("wanda-sp", "flap", "llm-pruner", "owl")


# ------------------------------------------------------------------------------------------ metrics


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors (ties broken by position)."""
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"spearman needs two vectors of one length >= 2, got {a.numel()} and {b.numel()}")
    ra = torch.argsort(torch.argsort(a.double().flatten())).double()
    rb = torch.argsort(torch.argsort(b.double().flatten())).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two index sets (1.0 for two empty sets)."""
    sa, sb = set(a.flatten().tolist()), set(b.flatten().tolist())
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


@dataclass
class Selection:
    """One side of a comparison: per-layer channel scores and, per ratio, per-layer kept channels."""

    scores: list[torch.Tensor]
    kept: dict[float, list[torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One table row: a method's layer, score correlation, kept-channel Jaccard per ratio and widths."""

    method: str
    layer: int
    rho: float
    overlap: dict[float, float]
    widths: dict[float, tuple[int, int]]


def compare(method: str, ours: Selection, ref: Selection) -> list[Row]:
    """Rows for every layer: Spearman of the scores, Jaccard and (ours, reference) kept widths per ratio."""
    rows = []
    for layer, (mine, theirs) in enumerate(zip(ours.scores, ref.scores)):
        overlap = {r: jaccard(ours.kept[r][layer], ref.kept[r][layer]) for r in ref.kept}
        widths = {r: (ours.kept[r][layer].numel(), ref.kept[r][layer].numel()) for r in ref.kept}
        rows.append(Row(method, layer, spearman(mine, theirs), overlap, widths))
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table; a kept cell is ``Jaccard (our width/reference width)``."""
    ratios = sorted({r for row in rows for r in row.overlap})
    head = "| method | layer | Spearman of scores | " + " | ".join(f"kept at {r:g}" for r in ratios) + " |"
    lines = [head, "|" + "---|" * (3 + len(ratios))]
    for row in rows:
        cells = [f"{row.overlap[r]:.3f} ({row.widths[r][0]}/{row.widths[r][1]})" if r in row.overlap else "—"
                 for r in ratios]
        lines.append(f"| {row.method} | {row.layer} | {row.rho:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- model and data


@dataclass(frozen=True)
class Setup:
    """The tiny model and the calibration batch."""

    #: Decoder layers.
    layers: int = 4
    #: MLP intermediate width.
    intermediate: int = 128
    #: Calibration sequences (FLAP/OWL run them one at a time).
    samples: int = 8
    #: Tokens per sequence.
    seqlen: int = 32
    #: Seed of the weights and of the tokens.
    seed: int = 0


def build_model(setup: Setup) -> tuple[nn.Module, LlamaForCausalLM]:
    """A seeded random ``LlamaForCausalLM`` (hidden 256, two 128-wide heads) and a LLaVA whose
    language model and ``lm_head`` are that Llama's own modules (what our adapters understand)."""
    text = LlamaConfig(hidden_size=HIDDEN, intermediate_size=setup.intermediate, num_hidden_layers=setup.layers,
                       num_attention_heads=HIDDEN // HEAD_DIM, num_key_value_heads=HIDDEN // HEAD_DIM,
                       head_dim=HEAD_DIM, vocab_size=VOCAB, max_position_embeddings=4 * setup.seqlen)
    torch.manual_seed(setup.seed)
    causal = LlamaForCausalLM(text).eval()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                      image_token_index=VOCAB - 1)).eval()
    llava.model.language_model = causal.model
    llava.lm_head = causal.lm_head
    return llava, causal


def calibration_ids(setup: Setup) -> torch.Tensor:
    """``(samples, seqlen)`` random token ids, never the image token."""
    generator = torch.Generator().manual_seed(setup.seed + 1)
    return torch.randint(0, VOCAB - 1, (setup.samples, setup.seqlen), generator=generator)


def our_stats(llava: nn.Module, ids: torch.Tensor, grads: bool) -> CalibrationStats:
    """Our calibration pass over the batch (with gradients: the next-token loss of every token)."""
    adapter = api.get_adapter(llava)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return collect_stats(llava, adapter, [batch], with_grads=grads)


def our_selection(llava: nn.Module, stats: CalibrationStats, importance: str,
                  widths: dict[float, Sequence[int]], registry: Registry) -> Selection:
    """Our scorer's per-layer scores and, per ratio, the top channels at the given widths."""
    scores = layer_scores(api.get_adapter(llava), api.importance(importance, llava, stats, registry=registry))
    return Selection(scores, {r: [keep_indices(s, k) for s, k in zip(scores, ws)] for r, ws in widths.items()})


def plan_widths(llava: nn.Module, strategy: str, sparsities: dict[float, float], registry: Registry,
                **options: Any) -> dict[float, tuple[int, ...]]:
    """Our plan's kept widths (``round_to`` 1, ``r_max`` 0.95) for each ``ratio -> sparsity``."""
    return {r: api.make_plan(llava, strategy, s, round_to=1, r_max=0.95, registry=registry, **options).widths_after
            for r, s in sparsities.items()}


# ------------------------------------------------------------------------- the references' code


def load_reference(alias: str, root: Path, module: str, stubs: dict[str, types.ModuleType] | None = None,
                   packages: Sequence[str] = ()) -> types.ModuleType:
    """Import ``root/<module path>`` as ``alias.<module>`` without running any package ``__init__``:
    ``alias`` and each of ``packages`` become bare packages over their folders; ``stubs`` are
    registered first (e.g. a stand-in ``data`` module)."""
    if not root.is_dir():
        raise FileNotFoundError(f"reference checkout not found: {root}")
    for name in [k for k in sys.modules if k == alias or k.startswith(alias + ".")]:
        del sys.modules[name]
    for name in (alias, *packages):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root / Path(*name.split(".")[1:]))]
        sys.modules[name] = pkg
    for name, stub in (stubs or {}).items():
        sys.modules[f"{alias}.{name}"] = stub
    return importlib.import_module(f"{alias}.{module}")


def data_stub(ids: torch.Tensor) -> types.ModuleType:
    """A stand-in for a reference's ``lib/data.py``: ``get_loaders`` serves the calibration batch,
    one sequence per batch as ``(input, target)`` pairs."""
    stub = types.ModuleType("data")
    stub.get_loaders = lambda *args, **kwargs: ([(ids[i:i + 1], ids[i:i + 1]) for i in range(len(ids))], None)
    return stub


@contextmanager
def reference_model(causal: LlamaForCausalLM, seqlen: int, biases: bool = False) -> Iterator[LlamaForCausalLM]:
    """A deep copy for a reference to prune: ``seqlen``, ``hf_device_map`` and each attention's
    ``num_heads`` set, each decoder layer handed its rotary embeddings, optionally zero
    ``o_proj``/``down_proj`` biases (FLAP's modeling file)."""
    model = copy.deepcopy(causal)
    model.seqlen, model.hf_device_map = seqlen, {}
    rotary = model.model.rotary_emb

    def rope(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if kwargs.get("position_embeddings") is None:
            hidden = args[0] if args else kwargs["hidden_states"]
            positions = kwargs.get("position_ids")
            if positions is None:
                positions = torch.arange(hidden.shape[-2]).unsqueeze(0)
            kwargs["position_embeddings"] = rotary(hidden, positions)
        return args, kwargs

    for layer in model.model.layers:
        layer.self_attn.num_heads = model.config.num_attention_heads  # the old LlamaAttention's attribute
    if biases:
        for layer in model.model.layers:
            for linear in (layer.self_attn.o_proj, layer.mlp.down_proj):
                linear.bias = nn.Parameter(torch.zeros(linear.out_features))
    handles = [layer.register_forward_pre_hook(rope, with_kwargs=True) for layer in model.model.layers]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def cuda_as_identity(record: list[torch.Tensor]) -> Iterator[None]:
    """``Tensor.cuda`` returns the tensor itself (CPU run) and records it: FLAP's code moves each
    metric to the GPU right before sorting it, so the records are its scores in call order."""
    original = torch.Tensor.cuda

    def identity(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        record.append(self.detach().clone())
        return self

    torch.Tensor.cuda = identity
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def kept_rows(model: LlamaForCausalLM) -> list[torch.Tensor]:
    """Channels whose ``gate_proj`` row is not all zero (the references' masking mode zeroes the rest)."""
    return [torch.nonzero(layer.mlp.gate_proj.weight.abs().sum(1) > 0).flatten() for layer in model.model.layers]


def _args(setup: Setup, **values: Any) -> types.SimpleNamespace:
    """The reference's argparse namespace: calibration size and seed plus ``values``."""
    return types.SimpleNamespace(nsamples=setup.samples, seed=setup.seed, unstr=True, **values)


# ------------------------------------------------------------------------------------ the methods


def wanda_sp_reference(refs: Path, causal: LlamaForCausalLM, ids: torch.Tensor, setup: Setup,
                       ratios: Sequence[float]) -> Selection:
    """FLAP's ``prune_wanda_sp``: its down_proj scores at ratio 0 (nothing removed: the dense model),
    its kept channels at each ratio."""
    prune = load_reference("ref_flap", refs / "FLAP" / "lib", "prune", {"data": data_stub(ids)})
    cpu = torch.device("cpu")
    record: list[torch.Tensor] = []
    with reference_model(causal, setup.seqlen) as model, cuda_as_identity(record):
        prune.prune_wanda_sp(_args(setup, pruning_ratio=0.0), model, None, device=cpu)
    selection = Selection(scores=record[1::2])  # per layer: o_proj's head scores, then down_proj's
    for r in ratios:
        with reference_model(causal, setup.seqlen) as model, cuda_as_identity([]):
            prune.prune_wanda_sp(_args(setup, pruning_ratio=r), model, None, device=cpu)
            selection.kept[r] = kept_rows(model)
    return selection


def flap_reference(refs: Path, causal: LlamaForCausalLM, ids: torch.Tensor, setup: Setup,
                   ratios: Sequence[float]) -> tuple[Selection, dict[float, list[torch.Tensor]]]:
    """FLAP's ``prune_flap`` (WIFV, AL-AM): its MLP scores, kept channels and down_proj biases per ratio."""
    prune = load_reference("ref_flap", refs / "FLAP" / "lib", "prune", {"data": data_stub(ids)})
    record: list[torch.Tensor] = []
    wifv, compress = prune.metrics["WIFV"], prune.compress

    def recording(wrapped: dict[str, Any], subset: dict[str, nn.Module], name: str) -> torch.Tensor:
        value = wifv(wrapped, subset, name)
        if name == "mlp.down_proj":
            record.append(value.detach().clone())
        return value

    def float_means(layer: nn.Module, attn_mask: Any, mlp_mask: Any, attn_mean: Any, mlp_mean: Any,
                    device: torch.device, bias: bool = True, unstr: bool = False) -> None:
        cast = lambda t: None if t is None else t.to(layer.mlp.down_proj.weight.dtype)
        compress(layer, attn_mask, mlp_mask, cast(attn_mean), cast(mlp_mean), device, bias=bias, unstr=unstr)

    prune.metrics["WIFV"], prune.compress = recording, float_means
    selection, biases = Selection(scores=[]), {}
    for r in ratios:
        record.clear()
        with reference_model(causal, setup.seqlen, biases=True) as model:
            prune.prune_flap(_args(setup, pruning_ratio=r, metrics="WIFV", structure="AL-AM", remove_heads=0),
                             model, None, device=torch.device("cpu"))
            selection.kept[r] = kept_rows(model)
            biases[r] = [layer.mlp.down_proj.bias.detach().clone() for layer in model.model.layers]
        selection.scores = list(record)
    return selection, biases


def llm_pruner_reference(refs: Path, causal: LlamaForCausalLM, ids: torch.Tensor, pruned: Sequence[int],
                         ratios: Sequence[float]) -> Selection:
    """LLM-Pruner's ``TaylorImportance`` (``param_first``, ``sum``) on its own dependency groups, and its
    ``MetaPruner`` (block-wise, gate_proj roots of the ``pruned`` layers) choosing channels per ratio."""
    pruner_mod = load_reference("LLMPruner", refs / "LLM-Pruner" / "LLMPruner", "pruner.hf_llama_pruner",
                                packages=("LLMPruner.pruner",))
    tp = sys.modules["LLMPruner.torch_pruning"]
    selection = Selection(scores=[])
    for r in ratios:
        model = copy.deepcopy(causal)
        model.requires_grad_(True)
        imp = pruner_mod.TaylorImportance(group_reduction="sum", taylor="param_first")
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        meta = tp.pruner.MetaPruner(
            model, ids[:2, :8], importance=imp, global_pruning=False, iterative_steps=1, ch_sparsity=r,
            ignored_layers=[], channel_groups={},
            consecutive_groups={layer.self_attn.q_proj: HEAD_DIM for layer in model.model.layers},
            customized_pruners={LlamaRMSNorm: pruner_mod.hf_rmsnorm_pruner}, root_module_types=None,
            root_instances=[model.model.layers[i].mlp.gate_proj for i in pruned],
            output_transform=lambda out: out.logits)  # trace the logits only (the output also holds a cache)
        model.zero_grad()
        model(ids, labels=ids).loss.backward()  # hf_prune.py: loss = model(x, labels=x).loss
        gates = [layer.mlp.gate_proj for layer in model.model.layers]
        selection.scores = [imp(meta.DG.get_pruning_group(g, tp.prune_linear_out_channels,
                                                          list(range(g.out_features)))).detach() for g in gates]
        removed = {group[0][0].target.module: set(group[0][1]) for group in meta.step(interactive=True)}
        selection.kept[r] = [torch.tensor([j for j in range(g.out_features) if j not in removed.get(g, set())])
                             for g in gates]
    return selection


def owl_reference(refs: Path, causal: LlamaForCausalLM, ids: torch.Tensor, setup: Setup, sparsity: float,
                  lam: float, m: float) -> tuple[list[float], list[float]]:
    """OWL's ``prune_wanda_outlier``: each layer's outlier ratio ``D`` (percent, via its
    ``check_outlier_mean``) and the sparsity it then gives the layer (zeros over the layer's linears)."""
    prune = load_reference("ref_owl", refs / "OWL" / "lib", "prune_all", {"data": data_stub(ids)})
    outliers: list[float] = []
    check = prune.check_outlier_mean
    prune.check_outlier_mean = lambda metric, threshold: outliers.append(check(metric, threshold)) or outliers[-1]
    args = _args(setup, Lamda=lam, Hyper_m=m, sparsity_ratio=sparsity, model="llama", use_variant=False)
    with reference_model(causal, setup.seqlen) as model:
        prune.prune_wanda_outlier(args, model, None, device=torch.device("cpu"))
        linears = [[mod for mod in layer.modules() if isinstance(mod, nn.Linear)] for layer in model.model.layers]
        ratios = [sum(int((x.weight == 0).sum()) for x in group) / sum(x.weight.numel() for x in group)
                  for group in linears]
    return outliers, ratios


def owl_ours(llava: nn.Module, ids: torch.Tensor, stats: CalibrationStats, sparsity: float, lam: float,
             m: float) -> dict[str, list[float]]:
    """Our ``D`` (fractions) over the MLP projections (what ships) and over all seven projections (the
    reference's scope, input norms from a hook here), and the layer ratios ``owl_ratios`` gives each."""
    from hipp_owl.plugin import layer_outlier_ratio, owl_ratios

    layers = api.get_adapter(llava).decoder_layers()
    linears = [[mod for mod in layer.modules() if isinstance(mod, nn.Linear)] for layer in layers]
    in_sq: dict[nn.Module, torch.Tensor] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        in_sq[module] = in_sq.get(module, 0) + args[0].detach().double().pow(2).flatten(0, -2).sum(0)

    handles = [x.register_forward_pre_hook(hook) for group in linears for x in group]
    with torch.no_grad():
        llava(input_ids=ids, attention_mask=torch.ones_like(ids))
    for handle in handles:
        handle.remove()
    names = {mod: name for name, mod in llava.named_modules()}
    mlp = [layer_outlier_ratio([(p.weight, stats.in_sq[names[p]]) for p in (x.gate, x.up, x.down)], m)
           for x in api.get_adapter(llava).mlps()]
    every = [layer_outlier_ratio([(x.weight, in_sq[x]) for x in group], m) for group in linears]
    return {"D_mlp": mlp, "D_all": every, "r_mlp": owl_ratios(mlp, sparsity, lam), "r_all": owl_ratios(every, sparsity, lam)}


def owl_table(ref_d: Sequence[float], ref_r: Sequence[float], ours: dict[str, list[float]]) -> str:
    """OWL per layer: ``D`` in percent and layer sparsity, reference against ours (both scopes)."""
    head = ("| layer | D reference % | D ours, 7 projections % | D ours, MLP (shipped) % | sparsity reference "
            "| ours, 7 projections | ours, MLP (shipped) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for i, (d, r) in enumerate(zip(ref_d, ref_r)):
        lines.append(f"| {i} | {d:.4f} | {100 * ours['D_all'][i]:.4f} | {100 * ours['D_mlp'][i]:.4f} | {r:.4f} "
                     f"| {ours['r_all'][i]:.4f} | {ours['r_mlp'][i]:.4f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ runs


@dataclass
class Bench:
    """Everything a run shares: the setup, both views of the model, the tokens, our registry."""

    setup: Setup
    ratios: tuple[float, ...]
    llava: nn.Module
    causal: LlamaForCausalLM
    ids: torch.Tensor
    registry: Registry

    @classmethod
    def build(cls, setup: Setup, ratios: Sequence[float]) -> Bench:
        """Build the model and tokens; our registry holds the ``hipp-owl`` and ``hipp-baselines`` plugins."""
        import hipp_baselines.plugin
        import hipp_owl.plugin

        from hipp_torchprune.registry import make_plugin_manager

        registry = Registry(make_plugin_manager(autoload=False))
        registry.pm.register(hipp_owl.plugin)
        registry.pm.register(hipp_baselines.plugin)
        llava, causal = build_model(setup)
        return cls(setup, tuple(ratios), llava, causal, calibration_ids(setup), registry)

    def ours(self, importance: str, strategy: str, sparsities: dict[float, float], grads: bool = False,
             stats: CalibrationStats | None = None) -> Selection:
        """Our scorer ``importance`` with the widths of our ``strategy`` plan at each ``ratio -> sparsity``."""
        stats = stats or our_stats(self.llava, self.ids, grads)
        widths = plan_widths(self.llava, strategy, sparsities, self.registry, stats=stats)
        return our_selection(self.llava, stats, importance, widths, self.registry)

    def pruned_layers(self) -> list[int]:
        """The layers LLM-Pruner's rule prunes at this depth (the others stay dense)."""
        from hipp_baselines.llm_pruner import dense_end_layers

        return [i for i in range(self.setup.layers) if i not in dense_end_layers(self.setup.layers)]


def run_wanda_sp(bench: Bench, refs: Path) -> list[Row]:
    """Wanda-sp: our ``wanda-sp`` scorer, uniform widths, against FLAP's ``prune_wanda_sp``."""
    ref = wanda_sp_reference(refs, bench.causal, bench.ids, bench.setup, bench.ratios)
    return compare("wanda-sp", bench.ours("wanda-sp", "uniform", {r: r for r in bench.ratios}), ref)


def run_flap(bench: Bench, refs: Path) -> tuple[list[Row], float]:
    """FLAP: our ``flap`` plan removing as many MLP channels as the reference did, against ``prune_flap``;
    also the largest relative difference of our compensation bias on the reference's kept channels."""
    from hipp_baselines.flap import compensation_bias

    ref, biases = flap_reference(refs, bench.causal, bench.ids, bench.setup, bench.ratios)
    total = bench.setup.layers * bench.setup.intermediate
    removed = {r: 1 - sum(k.numel() for k in kept) / total for r, kept in ref.kept.items()}
    stats = our_stats(bench.llava, bench.ids, False)
    rows = compare("flap", bench.ours("flap", "flap", removed, stats=stats), ref)
    names = {mod: name for name, mod in bench.llava.named_modules()}
    worst = 0.0
    for r, kept in ref.kept.items():
        for mlp, keep, bias in zip(api.get_adapter(bench.llava).mlps(), kept, biases[r]):
            mean = stats.in_sum[names[mlp.down]] / stats.n_tokens
            mine = compensation_bias(mlp.down.weight, mean, keep)
            worst = max(worst, float((mine - bias.double()).abs().max() / bias.double().abs().max()))
    return rows, worst


def run_llm_pruner(bench: Bench, refs: Path) -> list[Row]:
    """LLM-Pruner: our element-wise ``taylor`` scorer and ``llm-pruner`` widths against the reference's
    ``TaylorImportance`` and ``MetaPruner`` on the same pruned layers."""
    pruned = bench.pruned_layers()
    ref = llm_pruner_reference(refs, bench.causal, bench.ids, pruned, bench.ratios)
    share = len(pruned) / bench.setup.layers
    return compare("llm-pruner", bench.ours("taylor", "llm-pruner", {r: r * share for r in bench.ratios}, True), ref)


def run_owl(bench: Bench, refs: Path, sparsity: float, lam: float, m: float) -> str:
    """OWL: the per-layer table of :func:`owl_table`."""
    ref_d, ref_r = owl_reference(refs, bench.causal, bench.ids, bench.setup, sparsity, lam, m)
    stats = our_stats(bench.llava, bench.ids, False)
    return owl_table(ref_d, ref_r, owl_ours(bench.llava, bench.ids, stats, sparsity, lam, m))


def self_check(bench: Bench) -> list[Row]:
    """The comparison with the reference replaced by our own scorers on a copy of the model (the
    whole pipeline without the external code): every figure must be 1."""
    rows = []
    twin = dataclasses.replace(bench, llava=copy.deepcopy(bench.llava))
    share = len(bench.pruned_layers()) / bench.setup.layers
    for method, importance, strategy, grads, scale in (("wanda-sp", "wanda-sp", "uniform", False, 1.0),
                                                       ("flap", "flap", "flap", False, 1.0),
                                                       ("llm-pruner", "taylor", "llm-pruner", True, share)):
        sparsities = {r: r * scale for r in bench.ratios}
        rows += compare(method, bench.ours(importance, strategy, sparsities, grads),
                        twin.ours(importance, strategy, sparsities, grads))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags, run the comparisons, print markdown tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--refs", type=Path, help="folder holding the FLAP, LLM-Pruner and OWL checkouts")
    mode.add_argument("--self-check", action="store_true", help="reference := our own scorer (no external code)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--ratios", default="0.25,0.5,0.75", help="comma-separated removal ratios")
    p.add_argument("--layers", type=int, default=Setup.layers)
    p.add_argument("--intermediate", type=int, default=Setup.intermediate)
    p.add_argument("--samples", type=int, default=Setup.samples)
    p.add_argument("--seqlen", type=int, default=Setup.seqlen)
    p.add_argument("--seed", type=int, default=Setup.seed)
    p.add_argument("--owl", default="0.5,0.08,5", help="OWL's sparsity, lambda and M")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
    except ValueError:
        p.error(f"--ratios must be comma-separated numbers, got {args.ratios!r}")
    if not all(0.0 < r < 0.95 for r in ratios):
        p.error(f"every ratio must lie in (0, 0.95), got {args.ratios}")
    if args.refs is not None and not args.refs.is_dir():
        p.error(f"--refs {args.refs} is not a folder")
    bench = Bench.build(Setup(args.layers, args.intermediate, args.samples, args.seqlen, args.seed), ratios)
    with redirect_stdout(sys.stderr):  # the references print their progress
        text = report(bench, args.refs, methods, [float(x) for x in args.owl.split(",")])
    print(text)


def report(bench: Bench, refs: Path | None, methods: Sequence[str], owl: Sequence[float]) -> str:
    """The markdown report: the channel table, FLAP's bias difference and OWL's layer table."""
    if refs is None:
        return markdown_table(self_check(bench))
    rows, notes = [], []
    runners: dict[str, Callable[[Bench, Path], list[Row]]] = {"wanda-sp": run_wanda_sp, "llm-pruner": run_llm_pruner}
    for method in methods:
        if method == "flap":
            flap_rows, worst = run_flap(bench, refs)
            rows += flap_rows
            notes.append(f"FLAP bias on the reference's kept channels: largest relative difference {worst:.2e}")
        elif method == "owl":
            notes.append(run_owl(bench, refs, *owl))
        else:
            rows += runners[method](bench, refs)
    return "\n\n".join([markdown_table(rows)] * bool(rows) + notes)


if __name__ == "__main__":
    main()
