"""The recovery loop: fixed mask, trainable head/norm/projector (+ LoRA), POPE-aware loss,
tqdm progress, TensorBoard, resumable checkpoints, LoRA merged back at the same widths."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hipp_torchprune.atomic import write_atomic
from hipp_torchprune.recovery.config import RecoveryConfig, RecoveryError, SelectMode
from hipp_torchprune.recovery.data import Row, encode_rows, load_pool, step_rows
from hipp_torchprune.recovery.lora import ShapeSnapshot, attach, merge
from hipp_torchprune.recovery.losses import (
    answer_nll,
    class_balanced_mean,
    margin_hinge,
    next_token_nll,
    option_logprobs,
    yes_rate_penalty,
)
from hipp_torchprune.recovery.selection import guard_keeps, paired_gain, replaces, row_weights

#: Resumable state inside a work directory.
STATE_FILE = "recovery_state.pt"


@dataclass
class RecoveryResult:
    """The recovered (merged) model, the per-step loss log, and which step was handed back
    (``best_step``: the last step, or the best-scoring one with ``select_every``; 0 = unchanged)."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    best_step: int | None = None


def selection_score(metrics: dict[str, dict[str, float]]) -> float:
    """Mean of POPE balanced accuracy and multiple-choice accuracy over the scored tasks."""
    values = [m["balanced_accuracy"] if "balanced_accuracy" in m else m["accuracy"] for m in metrics.values()]
    if not values:
        raise RecoveryError("selection_score needs at least one task's metrics")
    return sum(values) / len(values)


@dataclass(frozen=True)
class _Selection:
    """Prepared held-out rows, their selection weights (``weights @ correct`` is the selection
    score) and the replacement threshold ``z`` (:mod:`~hipp_torchprune.recovery.selection`)."""

    prepared: Any
    weights: np.ndarray
    z: float
    mode: SelectMode = "best"

    def due(self, done: int, config: RecoveryConfig) -> bool:
        """Whether the state after ``done`` steps is scored (``guard``: only the last)."""
        return done == config.steps or (self.mode == "best" and done % config.select_every == 0)


class _BestState:
    """The held trainable parameters (step 0 = before recovery) and their per-row correctness on the
    selection rows; a later state replaces them when its paired gain clears ``z`` standard errors."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.score: float | None = state.get("score")
        self.step: int | None = state.get("step")
        self.correct: list[int] | None = state.get("correct")
        self.params: dict[str, torch.Tensor] = dict(state.get("params") or {})

    def offer(self, correct: np.ndarray, selection: _Selection, step: int, params: dict[str, nn.Parameter]) -> float:
        """Hold ``params`` when they are the first offered, or when ``selection``'s rule prefers them to
        the held ones (``best``: ties keep the earlier state); returns their selection score."""
        score = float(selection.weights @ correct)
        take = self.correct is None
        if not take:
            gain, se = paired_gain(correct, np.asarray(self.correct), selection.weights)
            take = guard_keeps(gain, se, selection.z) if selection.mode == "guard" else replaces(gain, se, selection.z)
        if take:
            self.score, self.step, self.correct = score, step, [int(c) for c in correct]
            self.params = {n: p.detach().cpu().clone() for n, p in params.items()}
        return score

    def restore(self, params: dict[str, nn.Parameter]) -> None:
        """Copy the held parameters back into the trainable ones."""
        with torch.no_grad():
            for name, value in self.params.items():
                params[name].copy_(value)

    def to_dict(self) -> dict[str, Any]:
        """State for the resumable checkpoint."""
        return {"score": self.score, "step": self.step, "correct": self.correct, "params": self.params}


def recovery_loss(logprobs: torch.Tensor, rows: list[tuple[str, Row]], config: RecoveryConfig
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its terms for one batch of answer-position log-probabilities ``(B, V)``.

    ``total = nll + w_margin * margin + w_yes_rate * yes_rate`` where ``nll`` is the gold answer
    token's next-token loss with every row counted once (:func:`answer_nll`: ScienceQA rows
    plainly, POPE rows class-balanced, their part scaled by ``w_balanced``), ``margin`` the hinge
    over all rows and ``yes_rate`` the penalty pulling the POPE rows' mean p(yes) to their gold
    yes-rate. ``balanced`` (the POPE rows' class-balanced loss) is reported, not added again.
    """
    cands = [r.candidates for _, r in rows]
    gold = torch.tensor([r.gold for _, r in rows], device=logprobs.device)
    targets = torch.tensor([r.candidates[r.gold][0] for _, r in rows], device=logprobs.device)
    is_pope = torch.tensor([fam == "pope" for fam, _ in rows], device=logprobs.device)
    opt = option_logprobs(logprobs, cands)
    nll = next_token_nll(logprobs, targets)
    gold_yes_rate = (gold[is_pope] == 0).float().mean() if bool(is_pope.any()) else 0.5  # POPE: 0 = yes
    terms = {
        "nll": answer_nll(nll, is_pope, gold, config.w_balanced),
        "margin": margin_hinge(opt, gold, config.margin),
        "yes_rate": yes_rate_penalty(opt[is_pope, 0], opt[is_pope, 1], gold_yes_rate),
    }
    total = terms["nll"] + config.w_margin * terms["margin"] + config.w_yes_rate * terms["yes_rate"]
    report = {**terms, "balanced": class_balanced_mean(nll[is_pope], gold[is_pope])}
    return total, {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in report.items()}}


def _forward_logprobs(net: nn.Module, batch: dict[str, torch.Tensor], device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
    inputs = {k: (v.to(device=device, dtype=dtype) if k == "pixel_values" else v.to(device))
              for k, v in batch.items() if hasattr(v, "to")}
    out = net(**inputs, use_cache=False, logits_to_keep=1)
    return torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)


def _save_state(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _trainable(net: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


def _resume(work: Path | None, meta: dict[str, Any], params: dict[str, nn.Parameter],
            opt: torch.optim.Optimizer, device: torch.device) -> tuple[int, list[dict[str, float]], _BestState]:
    """The step, history and best state to continue from: those of ``work``'s saved state when it
    exists (written by this same run, else :class:`RecoveryError`), else a fresh start."""
    if work is None:
        return 0, [], _BestState()
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / STATE_FILE
    if not state_path.exists():
        return 0, [], _BestState()
    state = torch.load(state_path, map_location=device, weights_only=False)
    if state["meta"] != meta:
        raise RecoveryError(f"{state_path} was written by a different recovery run (config or model "
                            "differ); delete it or use another work directory")
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["history"]), _BestState(state.get("best"))


def _train_step(net: nn.Module, processor: Any, pool: Any, config: RecoveryConfig, step: int,
                opt: torch.optim.Optimizer, params: dict[str, nn.Parameter], device: torch.device,
                dtype: torch.dtype) -> dict[str, float]:
    """One optimizer step on step ``step``'s rows; returns its loss record."""
    rows = step_rows(pool, config, step)
    lp = _forward_logprobs(net, encode_rows(processor, pool, rows), device, dtype)
    loss, record = recovery_loss(lp, rows, config)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
    opt.step()
    record["step"] = step + 1
    return record


def _log(writer: Any, record: dict[str, float], step: int) -> None:
    """Every value of ``record`` (but its step) to TensorBoard under ``recovery/``."""
    if writer is not None:
        for k, v in record.items():
            if k != "step":
                writer.add_scalar(f"recovery/{k}", v, step)


def _hand_back(net: nn.Module, model: nn.Module, requires_grad: dict[str, bool], was_training: bool,
               snapshot: ShapeSnapshot, adapter: Any) -> nn.Module:
    """Merge LoRA into ``model``, restore its mode and gradient flags, and check its shapes."""
    with torch.no_grad():
        merged = merge(net, model)
    merged.train(was_training)
    for name, p in merged.named_parameters():
        p.requires_grad_(requires_grad.get(name, p.requires_grad))
    snapshot.check(merged, adapter.__class__(merged))
    return merged


def recover(model: nn.Module, processor: Any, data_dir: str | Path, config: RecoveryConfig, *,
            work_dir: str | Path | None = None, progress: bool = True, registry: Any = None,
            split: str = "train") -> RecoveryResult:
    """Recover a pruned ``model`` in place and return it with LoRA merged back.

    ``work_dir`` (optional) holds ``recovery_state.pt`` (saved every ``config.save_every``
    steps; a run with the same config resumes from it) and TensorBoard logs. The widths,
    linear shapes and parameter count after merging are checked against the ones before.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from hipp_torchprune.api import get_adapter

    # -- set-up: rows, LoRA, optimizer, resume --
    adapter = get_adapter(model, registry)
    snapshot = ShapeSnapshot.of(model, adapter)
    pool = load_pool(processor, data_dir, config, split=split)
    select = _selection_data(processor, data_dir, config)  # bad rows fail here, before LoRA touches the model
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    torch.manual_seed(config.seed)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    net = attach(model, adapter, config)
    params = _trainable(net)
    opt = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    work = Path(work_dir) if work_dir is not None else None
    # ``steps`` is left out: batches depend on (seed, step) only, so a run can be extended.
    meta = {"config": {k: v for k, v in config.to_dict().items() if k != "steps"},
            "widths": list(snapshot.widths), "params": snapshot.params}
    start, history, best = _resume(work, meta, params, opt, device)
    writer = SummaryWriter(str(work / "tensorboard"), purge_step=start) if work is not None else None
    was_training = model.training
    net.eval()  # no dropout: same seed, same result
    bar = tqdm(range(start, config.steps), desc="recover", disable=not progress, initial=start, total=config.steps)
    if select is not None and start == 0:
        best.offer(_correct(net, processor, select), select, 0, params)
    # -- the loop: step, log, select, save --
    try:
        for step in bar:
            record = _train_step(net, processor, pool, config, step, opt, params, device, dtype)
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", yes=f"{record['yes_rate']:.3f}")
            _log(writer, record, step + 1)
            done = step + 1
            if select is not None and select.due(done, config):
                record["select_score"] = best.offer(_correct(net, processor, select), select, done, params)
                _log(writer, {"select_score": record["select_score"]}, done)
            if work is not None and config.save_every and (done % config.save_every == 0 or done == config.steps):
                _save_state(work / STATE_FILE, {
                    "meta": meta, "step": done, "history": history, "optimizer": opt.state_dict(),
                    "params": {n: p.detach().cpu().clone() for n, p in params.items()}, "best": best.to_dict()})
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if select is not None:
        best.restore(params)
    merged = _hand_back(net, model, requires_grad, was_training, snapshot, adapter)
    return RecoveryResult(merged, history, start, best.step if select is not None else config.steps)


def _selection_data(processor: Any, data_dir: str | Path, config: RecoveryConfig) -> _Selection | None:
    """Prepared held-out rows for state selection and their weights, or None when selection is off."""
    if not config.select_every:
        return None
    from hipp_torchprune.evaluation import prepare_eval

    prepared = prepare_eval(processor, data_dir, config.select_tasks, limit=config.select_limit,
                            split=config.select_split)
    return _Selection(prepared, row_weights([(t.family, t.gold) for t in prepared.tasks]), config.select_z,
                      config.select_mode)


def _correct(net: nn.Module, processor: Any, selection: _Selection) -> np.ndarray:
    """Per-row correctness (0/1) of the current (LoRA-attached) model on the selection rows, tasks
    concatenated in order (``evaluate`` restores the train/eval mode it found)."""
    from hipp_torchprune.evaluation import evaluate

    scored = evaluate(net, processor, selection.prepared, per_row=True)
    return np.array([int(c) for t in selection.prepared.tasks for c in scored[t.name]["correct"]], dtype=np.int64)


def recover_checkpoint(model_dir: str | Path, data_dir: str | Path, out: str | Path, config: RecoveryConfig, *,
                       work_dir: str | Path | None = None, progress: bool = True,
                       dtype: str | None = None) -> RecoveryResult:
    """Load a pruned checkpoint, recover it, and save it to ``out`` at the same widths.

    ``out`` is written atomically (:func:`~hipp_torchprune.checkpoint.save_pruned`) and gets
    ``recovery.json`` (config and loss log). ``work_dir`` defaults to ``OUT.recovery``; ``dtype`` is
    the model's (default: the checkpoint's own, see :func:`~hipp_torchprune.loading.parse_dtype`).
    """
    from hipp_torchprune.checkpoint import read_pruning_meta, save_pruned
    from hipp_torchprune.loading import load_model, resolve_model_dir
    from hipp_torchprune.models.tiny import TINY_MODELS

    model, processor = load_model(model_dir, seed=config.seed, dtype=dtype)
    meta = None if str(model_dir) in TINY_MODELS else read_pruning_meta(resolve_model_dir(model_dir))
    out = Path(out)
    work = Path(work_dir) if work_dir is not None else out.parent / f"{out.name}.recovery"
    result = recover(model, processor, data_dir, config, work_dir=work, progress=progress)
    report = {"config": config.to_dict(), "source": str(model_dir), "kept_step": result.best_step,
              "history": result.history}
    plan = dict((meta or {}).get("plan") or {})
    plan["recovery"] = {"steps": config.steps, "seed": config.seed, "kept_step": result.best_step}
    save_pruned(result.model, out, processor, plan=plan, extra_files={"recovery.json": json.dumps(report, indent=1)})
    return result
