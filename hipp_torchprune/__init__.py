"""hipp-torchprune: HiPP-Prune (preference-controllable structured pruning of VLMs) on Torch-Pruning.

The public API is imported lazily so that ``import hipp_torchprune`` stays cheap and creates no
global state::

    import hipp_torchprune as hipp
    ratios = hipp.allocate(model, strategy="uniform", sparsity=0.225)   # pruning_ratio_dict
    scorer = hipp.importance("wanda", model, stats)                     # a tp Importance
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "allocate": "hipp_torchprune.api",
    "importance": "hipp_torchprune.api",
    "make_plan": "hipp_torchprune.api",
    "plan_from_ratios": "hipp_torchprune.api",
    "calibrate": "hipp_torchprune.api",
    "prune_model": "hipp_torchprune.api",
    "get_adapter": "hipp_torchprune.api",
    "save_pruned": "hipp_torchprune.checkpoint",
    "load_pruned": "hipp_torchprune.checkpoint",
    "load_model": "hipp_torchprune.loading",
    "prune_with_method": "hipp_torchprune.methods",
    "MethodContext": "hipp_torchprune.methods",
    "cap_pixels": "hipp_torchprune.models.processors",
    "Plan": "hipp_torchprune.pruning.plan",
    "PlanMasks": "hipp_torchprune.pruning.operator",
    "HippError": "hipp_torchprune.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import public names on first access."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hipp_torchprune' has no attribute {name!r}")
