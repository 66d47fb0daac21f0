"""Recovery configuration (one frozen dataclass shared by every compared method) and its error."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from hipp_torchprune.errors import HippError

DataMix = Literal["mix", "pope", "scienceqa"]
SelectMode = Literal["best", "guard"]


class RecoveryError(HippError, ValueError):
    """Recovery was given bad settings, unusable data, or would change the pruned widths."""


@dataclass(frozen=True)
class RecoveryConfig:
    """One recovery run. The same instance is used for every method in a comparison.

    The pruning mask is fixed: only the LM head, the final norm, the multimodal projector and
    LoRA adapters on every projection of the decoder layers (``lora_layers``) train.
    """

    #: Optimizer steps.
    steps: int = 100
    #: Examples per step.
    batch_size: int = 8
    #: AdamW learning rate (head, norm, projector and LoRA). 3e-4 rather than 1e-3: on the demo
    #: model 1e-3 lost 2.6-6.0 points of POPE-adversarial on every plan tried (docs/notes.md).
    lr: float = 3e-4
    #: AdamW weight decay.
    weight_decay: float = 0.0
    #: Gradient-norm clip.
    grad_clip: float = 1.0
    #: LoRA on the projections of every decoder layer (None, the default: LLM-Pruner's recovery
    #: scope, ``post_training.py``'s seven projections of every layer), or of the last this many
    #: (2: the scope of the earlier comparisons; 0: no LoRA).
    lora_layers: int | None = None
    #: LoRA rank.
    lora_rank: int = 8
    #: LoRA alpha (scale ``alpha / rank``).
    lora_alpha: float = 16.0
    #: Which rows train: POPE and ScienceQA mixed, or one of them.
    data: DataMix = "mix"
    #: POPE share of a mixed batch before the preference bias.
    pope_base_fraction: float = 0.5
    #: Robustness weight of the preference that biases the mix toward POPE (None: no bias).
    w_rob: float | None = None
    #: Weight of the POPE rows' part of the token loss (class-balanced; 1 = every row counts once).
    w_balanced: float = 1.0
    #: Weight of the margin hinge.
    w_margin: float = 0.5
    #: Target log-margin of the hinge.
    margin: float = 1.0
    #: Weight of the batch yes-rate regularizer (POPE rows).
    w_yes_rate: float = 1.0
    #: Train-split rows used per task (None: all).
    limit: int | None = None
    #: Seed for data order and LoRA initialization.
    seed: int = 0
    #: Save a resumable checkpoint every this many steps (0: never).
    save_every: int = 50
    #: Every this many steps (and before the first), score the model on ``select_split`` and hand
    #: back the best-scoring state, the unrecovered model included, so recovery never returns a
    #: model that is worse on held-out rows than the one it was given (0: keep the last step).
    select_every: int = 0
    #: Split whose rows score the states (never the test split).
    select_split: str = "calibration"
    #: Tasks whose rows score the states (comma-separated task names; ``pope`` pools its three
    #: categories). The score is the mean of their POPE balanced accuracies and accuracies.
    select_tasks: str = "pope_adversarial,scienceqa"
    #: First rows per task in that score.
    select_limit: int | None = 128
    #: ``best``: every ``select_every`` steps a state replaces the one held when its paired gain on
    #: the selection rows clears ``select_z`` standard errors (0: the best score wins). ``guard``:
    #: only the unrecovered and the last state are scored, and the last is handed back unless it is
    #: worse by more than ``select_z`` standard errors (:mod:`~hipp_torchprune.recovery.selection`).
    select_mode: SelectMode = "best"
    #: The standard errors of ``select_mode``'s test.
    select_z: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise RecoveryError(f"steps must be >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if self.lr <= 0 or (self.lora_layers is not None and self.lora_layers < 0) or self.lora_rank < 1:
            raise RecoveryError("lr must be > 0, lora_layers >= 0 (or None: every layer) and lora_rank >= 1")
        if self.select_mode not in ("best", "guard"):
            raise RecoveryError(f"select_mode must be 'best' or 'guard', got {self.select_mode!r}")
        if self.data not in ("mix", "pope", "scienceqa"):
            raise RecoveryError(f"data must be 'mix', 'pope' or 'scienceqa', got {self.data!r}")
        if not 0.0 <= self.pope_base_fraction <= 1.0:
            raise RecoveryError(f"pope_base_fraction must lie in [0, 1], got {self.pope_base_fraction}")
        if self.w_rob is not None and not 0.0 <= self.w_rob <= 1.0:
            raise RecoveryError(f"w_rob must lie in [0, 1], got {self.w_rob}")
        if self.select_every < 0 or (self.select_limit is not None and self.select_limit < 1) or self.select_z < 0:
            raise RecoveryError(f"select_every and select_z must be >= 0 and select_limit >= 1 (or None), got "
                                f"{self.select_every}, {self.select_z}, {self.select_limit}")
        if self.select_every and self.select_split == "test":
            raise RecoveryError("select_split must not be the test split (it would select on the test rows)")
        if self.limit is not None and self.limit < 1:
            raise RecoveryError(f"limit must be >= 1 or None, got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (checkpoint metadata, resume checks)."""
        return dataclasses.asdict(self)


#: ``hipp compare``'s selection (session 36, docs/results.md "Which recovery state to hand back"): the
#: last state unless it is worse than the unrecovered model by one standard error on every calibration
#: row. Best-of-quarters selection on 228 rows cost about 0.25 test points against the last state.
GUARD_SELECTION: dict[str, Any] = {"select_mode": "guard", "select_tasks": "pope,scienceqa", "select_limit": None,
                                   "select_z": 1.0}


def _all_or_count(text: str, flag: str, what: str, minimum: int) -> int | None:
    """A flag that takes ``"all"`` (None) or an integer count of at least ``minimum``."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise RecoveryError(f"{flag} takes 'all' or {what}, got {text!r}") from exc
    if value < minimum:
        raise RecoveryError(f"{flag} must be 'all' or >= {minimum}, got {value}")
    return value


def lora_layers(text: str) -> int | None:
    """``--lora-layers``: ``"all"`` -> None (every decoder layer), else a non-negative layer count."""
    return _all_or_count(text, "--lora-layers", "a layer count", 0)


def row_limit(text: str) -> int | None:
    """``--select-limit``: ``"all"`` -> None (every row), else a positive row count."""
    return _all_or_count(text, "--select-limit", "a row count", 1)


def add_selection_arguments(p: Any, d: RecoveryConfig | None = None) -> None:
    """``--select-mode``, ``--select-tasks``, ``--select-limit`` and ``--select-z`` (how recovery picks
    the state it hands back) on an argparse parser, defaulting to ``d``'s (default
    :class:`RecoveryConfig`'s); read back by :func:`selection_kwargs`."""
    d = d or RecoveryConfig()
    p.add_argument("--select-mode", choices=("best", "guard"), default=d.select_mode,
                   help="best: a scored state replaces the held one when it is better by --select-z standard "
                        "errors; guard: the last state unless it is worse than the unrecovered one by "
                        f"--select-z standard errors (default {d.select_mode})")
    p.add_argument("--select-tasks", default=d.select_tasks,
                   help=f"tasks whose calibration rows score the recovery states (default {d.select_tasks}; "
                        "'pope' pools its three categories)")
    p.add_argument("--select-limit", type=row_limit, default=d.select_limit, metavar="all|N",
                   help=f"first rows per selection task (default {d.select_limit or 'all'})")
    p.add_argument("--select-z", type=float, default=d.select_z,
                   help="a later state replaces the held one only when its paired gain on the selection rows "
                        f"clears this many standard errors (default {d.select_z:g}; 0: any strict gain)")


def selection_kwargs(args: Any) -> dict[str, Any]:
    """The :class:`RecoveryConfig` fields set by :func:`add_selection_arguments`."""
    return {"select_mode": args.select_mode, "select_tasks": args.select_tasks, "select_limit": args.select_limit,
            "select_z": args.select_z}
