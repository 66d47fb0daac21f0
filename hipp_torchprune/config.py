"""Frozen configuration dataclasses and YAML loading into them."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from hipp_torchprune.errors import HippError


class ConfigError(HippError, ValueError):
    """A configuration file is unreadable or names unknown fields."""


@dataclass(frozen=True)
class PruneConfig:
    """One pruning run (the options of ``hipp prune``)."""

    #: Layer-allocation strategy name (a registered plugin).
    strategy: str = "uniform"
    #: Row-importance scorer name (a registered plugin).
    importance: str = "wanda"
    #: A registered pruning method (``random``, ``wanda``, ``slicegpt``, ``hipp``, ...); replaces
    #: ``strategy`` and ``importance``, which must then keep their defaults. None: the pair.
    method: str | None = None
    #: The shared row score of the methods that take one (``random``, ``owl``, ``ecoflap``,
    #: ``hipp``): which rows go inside a layer (``hipp_torchprune.methods.DEFAULT_ROW_SCORE``).
    row_score: Literal["wanda", "wanda-sp", "wanda-mix"] = "wanda-mix"
    #: Target fraction of prunable MLP parameters to remove.
    sparsity: float = 0.225
    #: Kept widths round to this multiple (fast GEMM shapes).
    round_to: int = 64
    #: Cap on any layer's removal ratio.
    r_max: float = 0.8
    #: Calibration samples for scorers that need them.
    calib_n: int = 32
    #: Seed for stochastic strategies.
    seed: int = 0
    #: Physical removal, or reversible masks.
    mode: Literal["physical", "mask"] = "physical"
    #: How an MLP-row method refits each pruned down_proj on the calibration samples
    #: (``lstsq``: kept columns and a bias by least squares; ``hipp_torchprune.pruning.reconstruct``).
    reconstruct: Literal["none", "lstsq"] = "none"


T = TypeVar("T")


def from_mapping(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data`` (nested dataclass fields from nested mappings; lists
    become tuples); unknown keys and values outside a ``Literal`` field's choices raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{where}.{key}: {value!r} is not one of {choices}")
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_mapping(hint, value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


def read_yaml_mapping(path: str | Path, expected: str = "a mapping of fields") -> dict[str, Any]:
    """The YAML mapping in ``path`` (an empty file is ``{}``); anything else raises :class:`ConfigError`
    (saying the file should hold ``expected``)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected {expected}, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load a YAML mapping from ``path`` into dataclass ``cls``."""
    return from_mapping(cls, read_yaml_mapping(path), str(path))
