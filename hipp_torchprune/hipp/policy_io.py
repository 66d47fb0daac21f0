"""Trained policies on disk, and the query-once interface.

A policy directory holds ``policy.safetensors`` and ``policy.json`` (configs, the model
profile it was trained on, ``round_to``). ``query`` needs nothing else: no model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hipp_torchprune.atomic import write_atomic, write_text_atomic
from hipp_torchprune.errors import CheckpointError, HippError
from hipp_torchprune.hipp.policy import Policy, PolicyConfig, make_policy
from hipp_torchprune.hipp.preferences import validate_preference
from hipp_torchprune.hipp.profile import ModelProfile
from hipp_torchprune.hipp.state import LEGACY_STATE, StateConfig, layer_states, static_features
from hipp_torchprune.pruning.plan import budget_matched_widths, realized_sparsity

#: Format tag of ``policy.json``.
POLICY_FORMAT = "hipp-policy/1"


class PolicyMismatchError(HippError, ValueError):
    """A policy was trained for a different model (layer count or widths)."""


@dataclass
class LoadedPolicy:
    """A policy network with the profile, rounding and state features it was trained for."""

    policy: Policy
    profile: ModelProfile
    round_to: int
    meta: dict[str, Any]
    state: StateConfig = LEGACY_STATE

    def check_model(self, model_class: str, widths: Sequence[int], row_params: Sequence[int]) -> None:
        """Refuse a model whose class, layer count or widths differ from the training model's."""
        sig = self.profile.signature()
        if list(widths) != sig["widths"] or list(row_params) != sig["row_params"] or model_class != sig["model_class"]:
            raise PolicyMismatchError(
                f"policy was trained for {sig['model_class']} with {len(sig['widths'])} layers of MLP widths "
                f"{sig['widths']}; this model is {model_class} with {len(widths)} layers of widths {list(widths)}")


def trained_refit(loaded: LoadedPolicy) -> str:
    """The refit (``"none"`` or ``"lstsq"``) the policy's rewards were scored with during training
    (``policy.json``'s ``"reward"``); ``"none"`` for policies saved before the setting existed."""
    return str(loaded.meta.get("reward", {}).get("reconstruct", "none"))


@dataclass(frozen=True)
class QueryResult:
    """A queried plan: normalized preference, ratios, rounded widths, realized sparsity."""

    preference: tuple[float, float, float]
    plan: tuple[float, ...]
    widths: tuple[int, ...]
    realized_sparsity: float

    def to_dict(self) -> dict[str, Any]:
        """The ``hipp query --json`` object."""
        return {"preference": list(self.preference), "plan": list(self.plan), "widths": list(self.widths),
                "realized_sparsity": self.realized_sparsity}


def save_policy(directory: str | Path, policy: Policy, profile: ModelProfile, round_to: int,
                extra: dict[str, Any] | None = None, state: StateConfig = LEGACY_STATE) -> Path:
    """Write ``policy.safetensors`` and ``policy.json`` into ``directory`` (each atomically;
    the JSON, written last, is what marks the directory as a policy)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in policy.state_dict().items()}
    meta = {"format": POLICY_FORMAT, "policy": dataclasses.asdict(policy.config),
            "kind": policy.kind, "n_features": policy.n_features, "round_to": round_to, "profile": profile.to_dict(),
            "state": dataclasses.asdict(state), **(extra or {})}
    write_atomic(directory / "policy.safetensors", lambda tmp: save_file(weights, tmp))
    write_text_atomic(directory / "policy.json", json.dumps(meta, indent=1))
    return directory


def load_policy(directory: str | Path) -> LoadedPolicy:
    """Read a policy directory written by :func:`save_policy`."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "policy.json").read_text())
        weights = load_file(directory / "policy.safetensors")
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{directory} is not a HiPP policy directory: {exc}") from exc
    if meta.get("format") != POLICY_FORMAT:
        raise CheckpointError(f"{directory}/policy.json has format {meta.get('format')!r}, expected {POLICY_FORMAT}")
    kind = meta.get("kind", "hierarchical")  # policies saved before the flat ablation are hierarchical
    if kind not in ("hierarchical", "flat"):
        raise CheckpointError(f"{directory}/policy.json has policy kind {kind!r}, expected 'hierarchical' or 'flat'")
    policy = make_policy(kind, int(meta["n_features"]), PolicyConfig(**meta["policy"]))
    try:
        policy.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}/policy.safetensors does not fit policy.json: {exc}") from exc
    state = StateConfig(**meta["state"]) if "state" in meta else LEGACY_STATE  # saved before StateConfig
    if len(state.feature_names()) + 5 != int(meta["n_features"]):
        raise CheckpointError(f"{directory}/policy.json: the policy reads {meta['n_features']} features per layer, "
                              f"its state {state} builds {len(state.feature_names()) + 5}")
    return LoadedPolicy(policy.eval(), ModelProfile.from_dict(meta["profile"]), int(meta["round_to"]), meta, state)


def query(loaded: LoadedPolicy, preference: Sequence[float]) -> QueryResult:
    """The deterministic plan for ``preference`` (Beta and Dirichlet means), rounded."""
    w = validate_preference(preference)
    cfg = loaded.policy.config
    states = layer_states(static_features(loaded.profile, loaded.state), torch.tensor(w), (cfg.rho_min, cfg.rho_max))
    widths, params = loaded.profile.widths, loaded.profile.row_params
    sizes = [wd * p for wd, p in zip(widths, params)]
    ratios = loaded.policy.plans(loaded.policy.mean_action(states), sizes)[0]
    kept = budget_matched_widths(ratios, widths, loaded.round_to, cfg.r_max, params)
    return QueryResult(w, tuple(ratios), kept, realized_sparsity(widths, kept, params))
