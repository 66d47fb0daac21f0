"""``method="hipp"``: a trained HiPP policy queried at a preference, rows by the shared row score,
as a registered pruning method (``hipp prune --method hipp``, ``hipp compare``)."""

from __future__ import annotations

from typing import Any, ClassVar

from hipp_torchprune.methods import DEFAULT_ROW_SCORE, MethodContext, MethodError, MLPRowMethod


class HippMethod(MLPRowMethod):
    """Layer ratios from the policy in the context's ``policy`` option (a directory or a
    :class:`~hipp_torchprune.hipp.policy_io.LoadedPolicy`) queried at its ``preference`` option
    ``(w_rob, w_util, w_comp)``; rows by the shared row score (``MethodContext.row_score``). The
    preference, not ``sparsity``, sets the compression (see
    :class:`~hipp_torchprune.hipp.allocator.HippAllocator`). The policy's state features keep the
    gate/up Wanda statistics it was trained on, whatever the row score."""

    name: ClassVar[str] = "hipp"
    strategy: ClassVar[str] = "hipp"
    importance: ClassVar[str] = DEFAULT_ROW_SCORE
    shared_row_score: ClassVar[bool] = True

    def strategy_options(self, context: MethodContext) -> dict[str, Any]:
        """The policy and preference (required), plus the calibration options."""
        if context.options.get("policy") is None or context.options.get("preference") is None:
            raise MethodError("method 'hipp' needs a trained policy and a preference "
                              "(--policy DIR --preference w_rob,w_util,w_comp)")
        return super().strategy_options(context)
