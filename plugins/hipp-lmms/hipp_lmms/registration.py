"""The ``lmms_eval.models`` entry point, kept free of heavy imports.

lmms-eval loads entry points while ``lmms_eval.models`` itself is being imported; pointing the
entry point at :mod:`hipp_lmms.models` (which imports lmms-eval) would be a circular import
whenever ``hipp_lmms.models`` is imported first, and lmms-eval would drop the model silently.
"""

from __future__ import annotations

from typing import Any

#: The model name on lmms-eval's command line.
MODEL_ID = "hipp_vlm"
#: Where the wrapper class lives.
CLASS_PATH = "hipp_lmms.models.HippVLM"


def model_manifests() -> list[Any]:
    """The ``hipp_vlm`` :class:`lmms_eval.models.registry_v2.ModelManifest`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]
