"""The ``slicegpt`` pruning method: SliceGPT at the parameter count of an MLP-sparsity budget (LLaVA).

Two variants (context option ``slicegpt_variant``, :class:`SliceGPTOptions`):

* ``global``: one PCA basis for the whole residual stream, ``lm_head`` sliced too, no shortcut
  matrices (:mod:`hipp_baselines.slicegpt`);
* ``per-block`` (default): the reference's variant, one sequential PCA basis per residual-stream
  site, shortcut matrices in the residual connections, ``lm_head`` unsliced
  (:mod:`hipp_baselines.slicegpt_blocks`).

Both delete the number of hidden dimensions whose parameter count (shortcuts counted) is closest
to the budget; ``docs/baselines.md`` has the measured comparison that picks the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from torch import nn

from hipp_baselines.slicegpt import (
    closest_cut,
    fold_norms,
    llava_parts,
    params_per_hidden_dim,
    pca_basis,
    residual_covariance,
    rotate_and_slice,
)
from hipp_baselines.slicegpt_blocks import (
    install_shortcuts,
    per_block_removed_params,
    shortcut_param_count,
    slice_per_block,
)
from hipp_torchprune.errors import CalibrationError, HippError
from hipp_torchprune.methods import MethodContext, MethodNeeds, MethodReport, mlp_param_total
from hipp_torchprune.registry import Registry

#: ``global``: one rotation, head sliced; ``per-block``: a rotation per site, shortcuts, head unsliced.
Variant = Literal["global", "per-block"]
#: The variant ``slicegpt`` uses when the context does not name one: the stronger one on the demo
#: model's calibration split (``benchmarks/slicegpt_variants.py``, ``docs/baselines.md``).
DEFAULT_VARIANT: Variant = "per-block"


class SliceGPTOptionError(HippError, ValueError):
    """A ``slicegpt`` context option is invalid."""


@dataclass(frozen=True)
class SliceGPTOptions:
    """``slicegpt``'s options, read from :attr:`MethodContext.options`."""

    #: Which SliceGPT (context key ``slicegpt_variant``).
    variant: Variant = DEFAULT_VARIANT
    #: The kept hidden width is a multiple of this (key ``slicegpt_multiple``; 1: the closest budget match).
    multiple: int = 1

    @classmethod
    def from_context(cls, options: dict[str, Any]) -> SliceGPTOptions:
        """Read and check the options; :class:`SliceGPTOptionError` on a bad value."""
        variant = options.get("slicegpt_variant", DEFAULT_VARIANT)
        if variant not in get_args(Variant):
            raise SliceGPTOptionError(f"slicegpt_variant must be one of {get_args(Variant)}, got {variant!r}")
        multiple = options.get("slicegpt_multiple", 1)
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise SliceGPTOptionError(f"slicegpt_multiple must be a positive integer, got {multiple!r}")
        return cls(variant, multiple)


class SliceGPTMethod:
    """SliceGPT at the parameter count of an MLP-sparsity budget (LLaVA), in either variant.

    Either variant's model saves with :func:`~hipp_torchprune.checkpoint.save_pruned` and reloads
    with :func:`~hipp_torchprune.checkpoint.load_pruned` (the per-block shortcuts through the
    checkpoint reshaper :data:`~hipp_baselines.slicegpt_blocks.RESHAPER`).
    """

    name: ClassVar[str] = "slicegpt"
    kind: ClassVar[str] = "slicing"

    def needs(self, registry: Registry | None = None) -> MethodNeeds:
        """Calibration samples for the PCA; no statistics, no gradients."""
        return MethodNeeds(samples=True, stats=False, grads=False)

    def check(self, model: nn.Module) -> None:
        """Raise :class:`~hipp_baselines.slicegpt.SliceGPTUnsupportedError` for a model family other than LLaVA."""
        llava_parts(model)

    def prune(self, model: nn.Module, sparsity: float, context: MethodContext) -> MethodReport:
        """Fold, PCA on the context's calibration prompts, rotate, slice ``k`` dims (budget-matched).

        Options and samples are checked before the model is touched.
        """
        from hipp_torchprune.api import get_adapter

        options = SliceGPTOptions.from_context(context.options)
        hidden = llava_parts(model)["embed"].weight.shape[1]
        if not context.samples:
            raise CalibrationError("slicegpt needs calibration samples for its PCA")
        total = mlp_param_total(model, context.registry)
        if options.variant == "per-block":
            details = self._per_block(model, sparsity * total, hidden, options.multiple, context)
        else:
            details = self._global(model, sparsity * total, hidden, options.multiple, context)
        widths = tuple(get_adapter(model, context.registry).intermediate_widths())
        return MethodReport(self.name, "slicing", details["removed_params"] / total, widths,
                            {"variant": options.variant, "hidden_before": hidden, **details})

    @staticmethod
    def _global(model: nn.Module, budget: float, hidden: int, multiple: int, context: MethodContext
                ) -> dict[str, int]:
        per_dim = params_per_hidden_dim(model)
        k = closest_cut(budget, lambda cut: cut * per_dim, hidden, multiple)
        fold_norms(model)
        rotate_and_slice(model, pca_basis(residual_covariance(model, context.processor, context.samples)), hidden - k)
        return {"hidden_after": hidden - k, "params_per_dim": per_dim, "removed_params": k * per_dim}

    @staticmethod
    def _per_block(model: nn.Module, budget: float, hidden: int, multiple: int, context: MethodContext
                   ) -> dict[str, int]:
        k = closest_cut(budget, lambda cut: per_block_removed_params(model, cut), hidden, multiple)
        removed = per_block_removed_params(model, k)
        install_shortcuts(model)  # checks the layers before any change
        fold_norms(model)
        slice_per_block(model, context.processor, context.samples, hidden - k)
        shortcuts = shortcut_param_count(len(llava_parts(model)["layers"]), hidden, hidden - k)
        return {"hidden_after": hidden - k, "shortcut_params": shortcuts, "removed_params": removed}
