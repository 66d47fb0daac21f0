"""``strategy="hipp"``: a trained policy queried at a preference, as an allocation strategy."""

from __future__ import annotations

from typing import ClassVar

from hipp_torchprune.errors import HippError
from hipp_torchprune.hipp.policy_io import LoadedPolicy, load_policy, query
from hipp_torchprune.pruning.allocators import AllocationRequest


class HippAllocator:
    """Layer ratios from a HiPP policy. Options: ``policy`` (a directory or :class:`LoadedPolicy`)
    and ``preference`` ``(w_rob, w_util, w_comp)``. The policy's budget interval, not ``sparsity``,
    sets the compression; the realized sparsity is reported with the plan."""

    name: ClassVar[str] = "hipp"

    def allocate(self, request: AllocationRequest) -> list[float]:
        """Query the policy and check it was trained for this model."""
        policy = request.options.get("policy")
        preference = request.options.get("preference")
        if policy is None or preference is None:
            raise HippError("strategy 'hipp' needs a trained policy and a preference "
                            "(--policy DIR --preference w_rob,w_util,w_comp)")
        loaded = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
        model = request.options.get("model")
        loaded.check_model(type(model).__name__ if model is not None else loaded.profile.model_class,
                           request.widths, request.row_params)
        return list(query(loaded, preference).plan)
