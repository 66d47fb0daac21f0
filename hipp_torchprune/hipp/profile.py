"""The calibration profile a policy is trained on: per-layer statistics and visual sensitivity.

Computed once per model and calibration set, cached on disk (``profile.json`` plus the raw
activation statistics in ``calibration.safetensors``), and stored inside every trained policy so
that ``hipp query`` never needs the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hipp_torchprune.atomic import write_atomic, write_text_atomic
from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.methods import DEFAULT_ROW_SCORE
from hipp_torchprune.pruning.calibration import CalibrationStats
from hipp_torchprune.registry import Registry


@dataclass(frozen=True)
class LayerProfile:
    """Statistics of one decoder layer's MLP (``grounding_drop``: the robustness and utility
    return lost when this layer alone is pruned, see :mod:`hipp_torchprune.hipp.grounding`;
    ``None`` until measured)."""

    index: int
    width: int
    visual_sensitivity: float
    act_norm_mean: float
    act_norm_std: float
    row_score_mean: float
    row_score_std: float
    weight_abs_mean: tuple[float, float, float]
    weight_abs_std: tuple[float, float, float]
    grounding_drop: tuple[float, float] | None = None


@dataclass(frozen=True)
class ModelProfile:
    """Every layer's profile plus what identifies the model it came from."""

    model_class: str
    layers: tuple[LayerProfile, ...]
    row_params: tuple[int, ...]
    n_samples: int

    @property
    def widths(self) -> tuple[int, ...]:
        """Dense MLP width of each layer."""
        return tuple(layer.width for layer in self.layers)

    def signature(self) -> dict[str, Any]:
        """What a policy checks a model against: class, layer count, widths, row sizes."""
        return {"model_class": self.model_class, "widths": list(self.widths), "row_params": list(self.row_params)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"model_class": self.model_class, "row_params": list(self.row_params), "n_samples": self.n_samples,
                "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        """Inverse of :meth:`to_dict`."""
        def drop(layer: dict[str, Any]) -> tuple[float, float] | None:
            value = layer.get("grounding_drop")
            return None if value is None else (float(value[0]), float(value[1]))

        layers = tuple(LayerProfile(**{**layer, "weight_abs_mean": tuple(layer["weight_abs_mean"]),
                                       "weight_abs_std": tuple(layer["weight_abs_std"]), "grounding_drop": drop(layer)})
                       for layer in data["layers"])
        return cls(data["model_class"], layers, tuple(data["row_params"]), int(data["n_samples"]))

    def with_grounding_drops(self, drops: torch.Tensor) -> ModelProfile:
        """This profile with every layer's grounding drop set from ``drops`` ``(L, 2)``."""
        if tuple(drops.shape) != (len(self.layers), 2):
            raise ValueError(f"grounding drops of shape {tuple(drops.shape)} for {len(self.layers)} layers")
        layers = tuple(replace(layer, grounding_drop=(float(d[0]), float(d[1]))) for layer, d in zip(self.layers, drops))
        return replace(self, layers=layers)


def build_profile(model: nn.Module, stats: CalibrationStats, sensitivity: list[float],
                  row_scores: list[torch.Tensor], registry: Registry | None = None) -> ModelProfile:
    """Assemble the profile from calibration statistics, sensitivity and per-row scores
    (``registry``: where the model's adapter is looked up; default: the default registry)."""
    from hipp_torchprune.api import get_adapter, row_params
    from hipp_torchprune.pruning.calibration import mlp_module_names

    adapter = get_adapter(model, registry)
    names = mlp_module_names(model, adapter)
    layers = []
    for i, (mlp, sens, scores) in enumerate(zip(adapter.mlps(), sensitivity, row_scores)):
        norms = stats.input_norms(names[mlp.gate]) / max(stats.n_tokens, 1) ** 0.5  # RMS per feature
        weights = [p.weight.detach().float().abs() for p in (mlp.gate, mlp.up, mlp.down)]
        layers.append(LayerProfile(
            index=i, width=mlp.gate.out_features, visual_sensitivity=float(sens),
            act_norm_mean=float(norms.mean()), act_norm_std=float(norms.std()),
            row_score_mean=float(scores.mean()), row_score_std=float(scores.std()),
            weight_abs_mean=tuple(float(w.mean()) for w in weights),
            weight_abs_std=tuple(float(w.std()) for w in weights),
        ))
    return ModelProfile(type(model).__name__, tuple(layers), row_params(adapter), stats.n_samples)


def save_calibration(directory: str | Path, profile: ModelProfile, stats: CalibrationStats,
                     source: dict[str, Any] | None = None) -> Path:
    """Write ``profile.json`` and ``calibration.safetensors`` atomically into ``directory``;
    ``source`` (e.g. data directory and sample count) is recorded for cache checks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"in_sq/{k}": v.contiguous() for k, v in stats.in_sq.items()}
    meta = {**profile.to_dict(), "n_tokens": stats.n_tokens, "source": source or {}}
    write_atomic(directory / "calibration.safetensors", lambda tmp: save_file(tensors, tmp))
    write_text_atomic(directory / "profile.json", json.dumps(meta, indent=1))
    return directory


def model_fingerprint(model: Any) -> str:
    """A short, cheap identity of a model's weights: names, shapes, dtypes and the first values of
    every parameter, hashed (two checkpoints of one architecture get different fingerprints, and so
    does one checkpoint loaded in another dtype: its calibration statistics differ)."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        head = param.detach().reshape(-1)[:32].float().cpu().numpy()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(head.tobytes())
    return digest.hexdigest()[:16]


def data_fingerprint(data: str | Path) -> str:
    """The identity of a calibration data source: a proving-ground world's content hash when it
    has a manifest, else the resolved path ("random" stays "random")."""
    if str(data) == "random":
        return "random"
    root = Path(data).resolve()
    try:
        return "world:" + str(json.loads((root / "manifest.json").read_text())["content_hash"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return str(root)


def calibration_key(model: Any, data: str | Path, n: int, max_pixels: int | None = None,
                    row_score: str = DEFAULT_ROW_SCORE) -> dict[str, Any]:
    """What a calibration cache is valid for: the model's weights, the data, the sample count,
    the cap on calibration images' pixels and the row score its profile's statistics came from."""
    return {"model": model_fingerprint(model), "data": data_fingerprint(data), "n": n, "max_pixels": max_pixels,
            "row_score": row_score}


def calibration_source(directory: str | Path) -> dict[str, Any]:
    """The ``source`` a cache was written with (empty when unknown or missing)."""
    path = Path(directory) / "profile.json"
    try:
        return dict(json.loads(path.read_text()).get("source") or {})
    except (OSError, json.JSONDecodeError):
        return {}


def load_calibration(directory: str | Path) -> tuple[ModelProfile, CalibrationStats]:
    """Read what :func:`save_calibration` wrote."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "profile.json").read_text())
        tensors = load_file(directory / "calibration.safetensors")
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"no readable calibration cache in {directory}: {exc}") from exc
    stats = CalibrationStats(in_sq={k.split("/", 1)[1]: v for k, v in tensors.items()},
                             n_tokens=int(meta.get("n_tokens", 0)), n_samples=int(meta["n_samples"]))
    return ModelProfile.from_dict(meta), stats
