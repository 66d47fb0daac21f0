"""The policy's state: which features each :class:`StateConfig` builds, the grounding drops in
the profile, and policies saved with and without them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hipp_torchprune.errors import CheckpointError, HippError
from hipp_torchprune.hipp.policy import HippPolicy, PolicyConfig
from hipp_torchprune.hipp.policy_io import load_policy, query, save_policy
from hipp_torchprune.hipp.profile import LayerProfile, ModelProfile
from hipp_torchprune.hipp.state import LEGACY_STATE, STATIC_FEATURES, StateConfig, static_features

DROPS = torch.tensor([[3.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
PROFILE = ModelProfile("Toy", tuple(LayerProfile(i, 64, 0.5 + 0.1 * i, 1.0 + i, 0.1, 2.0, 1.0, (0.1, 0.2, 0.3),
                                                 (0.01, 0.02, 0.03)) for i in range(3)), (48,) * 3, 4)


@pytest.mark.parametrize("config, dropped", [
    (StateConfig(), set()),
    (StateConfig(visual_sensitivity=False), {"visual_sensitivity", "visual_sensitivity_raw"}),
    (LEGACY_STATE, {"grounding_drop_rob", "grounding_drop_util"}),
    (StateConfig(visual_sensitivity=False, grounding_drops=False),
     {"visual_sensitivity", "visual_sensitivity_raw", "grounding_drop_rob", "grounding_drop_util"}),
])
def test_each_config_builds_its_columns(config: StateConfig, dropped: set[str]) -> None:
    names = config.feature_names()
    assert names == tuple(n for n in STATIC_FEATURES if n not in dropped)
    static = static_features(PROFILE.with_grounding_drops(DROPS), config)  # (L, F)
    assert static.shape == (3, len(names))
    col = {n: static[:, i] for i, n in enumerate(names)}
    assert torch.allclose(col["depth"], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(col["act_norm_mean"], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)  # z-scored 1, 2, 3
    assert torch.equal(col["row_score_mean"], torch.zeros(3))  # constant -> 0
    if config.grounding_drops:  # rob drops 3, 0, 1: z-scored; util constant -> 0
        assert torch.allclose(col["grounding_drop_rob"], torch.tensor([1.3363, -1.0690, -0.2673]), atol=1e-4)
        assert torch.equal(col["grounding_drop_util"], torch.zeros(3))
    if config.visual_sensitivity:
        assert torch.allclose(col["visual_sensitivity_raw"], torch.tensor([0.5, 0.6, 0.7]))


def test_drops_are_required_when_the_state_reads_them() -> None:
    with pytest.raises(HippError, match="no"):
        static_features(PROFILE, StateConfig())
    with pytest.raises(ValueError, match="for 3 layers"):
        PROFILE.with_grounding_drops(torch.zeros(2, 2))


def test_profile_round_trips_with_and_without_drops() -> None:
    with_drops = PROFILE.with_grounding_drops(DROPS)
    assert ModelProfile.from_dict(json.loads(json.dumps(with_drops.to_dict()))) == with_drops
    old = PROFILE.to_dict()
    for layer in old["layers"]:
        del layer["grounding_drop"]  # a profile written before the field existed
    assert ModelProfile.from_dict(old) == PROFILE and PROFILE.layers[0].grounding_drop is None


def test_saved_policy_queries_with_the_state_it_was_trained_on(tmp_path: Path) -> None:
    profile = PROFILE.with_grounding_drops(DROPS)
    for config in (StateConfig(), StateConfig(visual_sensitivity=False)):
        torch.manual_seed(0)
        policy = HippPolicy(len(config.feature_names()) + 5, PolicyConfig(hidden=8))
        torch.nn.init.normal_(policy.alloc_head.weight)  # a non-uniform allocation
        save_policy(tmp_path / str(config.visual_sensitivity), policy, profile, 16, state=config)
        loaded = load_policy(tmp_path / str(config.visual_sensitivity))
        assert loaded.state == config
        assert query(loaded, (1.0, 0.0, 0.0)).widths != (48, 48, 48)
    meta_path = tmp_path / "True" / "policy.json"
    meta = json.loads(meta_path.read_text())
    del meta["state"]  # a policy saved before StateConfig: legacy features (16 + 5 columns do not fit)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="reads 21 features per layer"):
        load_policy(tmp_path / "True")
    meta["n_features"] = len(LEGACY_STATE.feature_names()) + 5
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit policy.json"):
        load_policy(tmp_path / "True")
