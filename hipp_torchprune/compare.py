"""``hipp compare``: every method at matched realized sparsity, matched calibration and matched
recovery, over several seeds; Tables 1, 3 and 4 and the robustness-utility figure.

One *cell* is (table, method, preference, seed): prune a copy of the model, evaluate it, recover
it with the shared :class:`~hipp_torchprune.recovery.RecoveryConfig`, evaluate again. Cells are
written to ``results.json`` as they finish (atomically), so an interrupted run resumes where it
stopped. Matching:

* **sparsity**: HiPP is queried first; every baseline then prunes at HiPP's realized sparsity
  and must land within ``tolerance`` (default 0.5 percentage points) of it, or the cell is
  marked ``matched: false`` (never silently dropped);
* **calibration**: one calibration set (``calib_n`` rows of the world's calibration split) and
  one set of statistics of the dense model serve every method and seed;
* **recovery**: the same config (steps, batch, learning rate, LoRA, data mix) for every method;
  the seed varies data order and LoRA init together with the random strategies.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hipp_torchprune.atomic import write_text_atomic
from hipp_torchprune.errors import HippError
from hipp_torchprune.methods import DEFAULT_ROW_SCORE, ROW_SCORES
from hipp_torchprune.provenance import code_fingerprint, world_fingerprint
from hipp_torchprune.pruning.reconstruct import RECONSTRUCTIONS, Reconstruction
from hipp_torchprune.recovery.config import RecoveryConfig

#: Evaluation tasks of every cell.
TASKS = "pope_adversarial,pope_random,scienceqa"
#: Default Table-3 preferences (w_rob, w_util, w_comp): a robustness-utility sweep at fixed
#: ``w_comp = 0.1``, over which the controllability correlations are taken.
TABLE3_PREFERENCES: tuple[tuple[float, float, float], ...] = (
    (0.8, 0.1, 0.1), (0.6, 0.3, 0.1), (0.45, 0.45, 0.1), (0.3, 0.6, 0.1), (0.1, 0.8, 0.1))
#: ``w_comp`` values of the compression sweep (``w_rob = w_util = (1 - w_comp) / 2``), queried
#: without evaluation: r(w_comp, realized sparsity).
COMPRESSION_SWEEP: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
#: Preferences each sampler-ablation policy is queried at (Table 4).
TABLE4_PREFERENCES: tuple[tuple[float, float, float], ...] = ((0.7, 0.2, 0.1), (1 / 3, 1 / 3, 1 / 3), (0.2, 0.7, 0.1))
#: Baselines of Table 1, in order.
BASELINES: tuple[str, ...] = ("random", "wanda", "llm-pruner", "slicegpt", "owl", "ecoflap", "flap")


#: Tasks whose per-row correctness every cell keeps, and the metric each is reported by: the
#: paired bootstrap of HiPP minus the best baseline (:func:`bootstrap_lines`).
BOOTSTRAP_TASKS: dict[str, str] = {"pope_adversarial": "pope_adv_bal_acc", "scienceqa": "sqa_acc"}


class CompareError(HippError, ValueError):
    """A comparison was misconfigured, or its results file belongs to another configuration."""


@dataclass(frozen=True)
class CompareConfig:
    """One comparison run."""

    #: Model spec (``demo``, a checkpoint directory, or a tiny model name).
    model: str
    #: Proving-ground world (train split: recovery; calibration split: calibration; test split: tables).
    data: str
    #: HiPP policy directory (its ``round_to`` is used for every MLP-row method).
    policy: str
    #: Baseline method names (registered ``hipp_pruning_methods``).
    methods: tuple[str, ...] = BASELINES
    #: Seeds; every table reports mean +- std over them.
    seeds: tuple[int, ...] = (0, 1, 2)
    #: The preference HiPP is queried at in Table 1.
    preference: tuple[float, float, float] = (0.6, 0.3, 0.1)
    #: Table-3 preferences.
    table3: tuple[tuple[float, float, float], ...] = TABLE3_PREFERENCES
    #: Table-4 sampler policies as ``(name, directory)``; empty: Table 4 is skipped.
    samplers: tuple[tuple[str, str], ...] = ()
    #: Table-4 preferences.
    table4: tuple[tuple[float, float, float], ...] = TABLE4_PREFERENCES
    #: Table-5 ablation policies as ``(name, directory)`` (each trained with one part removed:
    #: ``hipp train --no-gate``, ``--flat-policy``, no visual sensitivity ...), queried at the
    #: Table-1 preference beside the full policy; empty: Table 5 is skipped.
    ablations: tuple[tuple[str, str], ...] = ()
    #: Shared recovery config (its seed is replaced by the cell's seed).
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    #: Calibration samples (shared by every method).
    calib_n: int = 64
    #: Test rows per task (None: all).
    limit: int | None = None
    #: Allowed |realized - target| sparsity gap for baselines.
    tolerance: float = 0.005
    #: Device for every cell (None: ``cuda`` when available, else ``cpu``). Not part of the signature.
    device: str | None = None
    #: Model dtype (``auto``: the checkpoint's own; see :data:`~hipp_torchprune.loading.DTYPE_CHOICES`).
    dtype: str = "auto"
    #: The shared row score of HiPP and the baselines that take it (one of
    #: :data:`~hipp_torchprune.methods.ROW_SCORES`).
    row_score: str = DEFAULT_ROW_SCORE
    #: How every MLP-row method, HiPP included, refits each pruned down_proj on the calibration
    #: samples (``none`` or ``lstsq``; :mod:`~hipp_torchprune.pruning.reconstruct`). Slicing
    #: methods (SliceGPT) refit by their own rotation and ignore it.
    reconstruct: Reconstruction = "none"
    #: Also recover the unpruned model with the shared recovery config, once per seed: the
    #: ``dense + recovery`` row of Table 1, the most any pruned cell's recovery could reach.
    dense_recovery: bool = False

    def signature(self) -> str:
        """Hash of everything that changes results (not ``seeds``/``methods``/``dense_recovery``:
        those only add cells)."""
        d = asdict(self)
        for k in ("seeds", "methods", "table3", "samplers", "table4", "ablations", "device", "dense_recovery"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- pure math


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value). Example: [1, 3] -> (2, 1.414...)."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (both coordinates maximized), sorted by x.

    Example: ``[(1, 1), (2, 0), (0, 2), (0.5, 0.5)]`` -> ``[2, 0, 1]``.
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((a >= x and b >= y) and (a > x or b > y) for j, (a, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant (nothing to follow).
    Example: ``pearson([1, 2, 3], [2, 4, 7]) = 0.993...``."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"pearson needs two sequences of the same length >= 2, got {len(x)} and {len(y)}")
    dx, dy = x - x.mean(), y - y.mean()
    denom = float(np.sqrt((dx * dx).sum() * (dy * dy).sum()))
    return 0.0 if denom < 1e-12 else float((dx * dy).sum() / denom)


def controllability(cells: Sequence[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per seed, over Table-3 cells: r(w_rob, POPE-adversarial) and r(w_util, ScienceQA) after recovery."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for cell in cells:
        by_seed.setdefault(int(cell["seed"]), []).append(cell)
    return {seed: {"r_rob_pope_adv": pearson([c["preference"][0] for c in group],
                                             [c["post_recovery"]["pope_adv_bal_acc"] for c in group]),
                   "r_util_sqa": pearson([c["preference"][1] for c in group],
                                         [c["post_recovery"]["sqa_acc"] for c in group])}
            for seed, group in sorted(by_seed.items()) if len(group) >= 2}


def compression_control(policy: Any, sweep: Sequence[float] = COMPRESSION_SWEEP) -> tuple[list[float], float]:
    """Realized sparsity of ``policy``'s plans along ``w_comp`` (robustness and utility splitting
    the rest), and r(w_comp, realized sparsity)."""
    from hipp_torchprune.hipp.policy_io import query

    realized = [query(policy, ((1 - w) / 2, (1 - w) / 2, w)).realized_sparsity for w in sweep]
    return realized, pearson(list(sweep), realized)


def fmt_pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` in percent."""
    m, s = mean_std([scale * v for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# ---------------------------------------------------------------- results file


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def cell_key(table: str, method: str, preference: Sequence[float] | None, seed: int) -> str:
    """Stable key of one cell."""
    pref = "-" if preference is None else ",".join(f"{p:.3f}" for p in preference)
    return f"{table}|{method}|{pref}|{seed}"


def _metrics(result: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {"pope_adv_bal_acc": float(result["pope_adversarial"]["balanced_accuracy"]),
            "pope_rand_bal_acc": float(result["pope_random"]["balanced_accuracy"]),
            "sqa_acc": float(result["scienceqa"]["accuracy"]),
            "pope_yes_ratio": float(result["pope_adversarial"]["yes_ratio"])}


# ---------------------------------------------------------------- the run


@dataclass
class SharedInputs:
    """What every cell of one comparison shares (:func:`load_shared`): the dense model and its
    processor, the prepared test rows, the calibration samples and statistics (matched calibration),
    the policies by name (``"main"`` first), the registry, the shared row score and refit."""

    model: Any
    processor: Any
    prepared: Any
    samples: list
    stats: Any
    policies: dict[str, Any]
    registry: Any
    row_score: str = DEFAULT_ROW_SCORE
    reconstruct: Reconstruction = "none"


def _cells(config: CompareConfig) -> list[tuple[str, str, tuple[float, float, float] | None, int, str]]:
    """(table, method, preference, seed, policy name) of every cell, Table 1 first."""
    cells = []
    for seed in config.seeds:
        if config.dense_recovery:
            cells.append(("reference", "dense", None, seed, "main"))
        cells.append(("table1", "hipp", config.preference, seed, "main"))
        cells += [("table1", m, config.preference, seed, "main") for m in config.methods]
    for seed in config.seeds:
        cells += [("table3", "hipp", p, seed, "main") for p in config.table3]
    for seed in config.seeds:
        cells += [("table4", name, p, seed, name) for name, _ in config.samplers for p in config.table4]
    for seed in config.seeds:
        cells += [("table5", name, config.preference, seed, name) for name, _ in config.ablations]
    return cells


def _context(shared: SharedInputs, policy: Any, seed: int, preference: Sequence[float] | None = None) -> Any:
    """The matched :class:`~hipp_torchprune.methods.MethodContext` of a cell (HiPP: with its policy)."""
    from hipp_torchprune.methods import MethodContext

    options = {} if preference is None else {"policy": policy, "preference": tuple(preference)}
    return MethodContext(shared.processor, shared.samples, shared.stats, round_to=policy.round_to,
                         r_max=policy.policy.config.r_max, seed=seed, registry=shared.registry, options=options,
                         row_score=shared.row_score, reconstruct=shared.reconstruct)


def _run_cell(config: CompareConfig, shared: SharedInputs, table: str, method: str,
              preference: tuple[float, float, float] | None, seed: int, policy_name: str,
              work_dir: Path, dense: dict[str, float]) -> dict[str, Any]:
    """One cell; ``dense`` is the unpruned model's metrics, the reference cell's before recovery."""
    from hipp_torchprune.evaluation import evaluate
    from hipp_torchprune.recovery import recover

    model = copy.deepcopy(shared.model)
    if table == "reference":  # the unpruned model, recovered like every other cell
        target = realized = 0.0
        widths, details, pre = [], {"reference": "dense model, not pruned"}, dict(dense)
    else:
        target, realized, widths, details = prune_cell(config, shared, model, table, method, preference, seed,
                                                       policy_name)
        pre = _metrics(evaluate(model, shared.processor, shared.prepared))
    rcfg = RecoveryConfig(**{**config.recovery.to_dict(), "seed": seed})
    result = recover(model, shared.processor, config.data, rcfg, work_dir=work_dir, progress=False,
                     registry=shared.registry)
    scored = evaluate(result.model, shared.processor, shared.prepared, per_row=True)
    post = _metrics(scored)
    return {"table": table, "method": method, "preference": list(preference) if preference else None, "seed": seed,
            "target_sparsity": target, "realized_sparsity": realized,
            "matched": abs(realized - target) <= config.tolerance + 1e-12, "widths": widths, "details": details,
            "pre_recovery": pre, "post_recovery": post,
            "rows": {task: scored[task]["correct"] for task in BOOTSTRAP_TASKS},
            "final_loss": result.history[-1]["loss"] if result.history else None,
            "recovery_step_kept": result.best_step}


def prune_cell(config: CompareConfig, shared: SharedInputs, model: Any, table: str, method: str,
               preference: tuple[float, float, float] | None, seed: int,
               policy_name: str) -> tuple[float, float, list[int], dict[str, Any]]:
    """Prune ``model`` (a copy of ``shared.model``) in place as the cell ``(table, method, preference,
    seed)`` does: HiPP at ``preference`` with policy ``policy_name``, a baseline at the sparsity the main
    policy realizes at ``config.preference``. Returns ``(target, realized sparsity, widths, details)``."""
    from hipp_torchprune.hipp.method import HippMethod
    from hipp_torchprune.methods import prune_with_method

    policy, main = shared.policies[policy_name], shared.policies["main"]
    # every baseline prunes at HiPP's realized sparsity (the HiPP strategy ignores the sparsity it is given)
    target = HippMethod().plan(model, 0.0, _context(shared, main, seed, config.preference)).realized_sparsity
    is_hipp = method == "hipp" or table in ("table4", "table5")
    ctx = _context(shared, policy, seed, preference if is_hipp else None)
    report = prune_with_method(model, HippMethod.name if is_hipp else method, target, ctx)
    realized, widths, details = report.realized_sparsity, list(report.widths), dict(report.details)
    if is_hipp:
        target, details["policy"] = realized, policy_name
    return target, realized, widths, details


#: Config fields a baseline's Table-1 cell does not depend on: it sees the policy and the queries
#: only through its target sparsity, which :func:`reused_cell` checks cell by cell.
_REUSE_FREE = ("policy", "preference", "seeds", "methods", "table3", "samplers", "table4", "ablations", "device",
               "dense_recovery")


def donor_cells(config: CompareConfig, donor_dir: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The finished baseline Table-1 cells of the comparison in ``donor_dir``, by ``(method, seed)``,
    after checking it ran with ``config`` up to the policy and the queries (:class:`CompareError` if not)."""
    path = Path(donor_dir) / "results.json"
    if not path.is_file():
        raise CompareError(f"--baselines-from: {path} does not exist")
    try:
        donor = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompareError(f"--baselines-from: {path} is not a results file ({exc})") from exc
    mine = json.loads(json.dumps(asdict(config), default=str))
    differ = sorted(k for k in mine if k not in _REUSE_FREE and mine[k] != donor.get("config", {}).get(k))
    if differ:
        raise CompareError(f"--baselines-from: {path} ran with a different {', '.join(differ)}")
    _check_world(donor, config.data, f"--baselines-from: {path}")
    return {(c["method"], c["seed"]): c for c in donor.get("cells", {}).values()
            if c["table"] == "table1" and c["method"] != "hipp" and "rows" in c}


def reused_cell(donors: dict[tuple[str, int], dict[str, Any]], results: dict[str, Any], method: str,
                preference: Sequence[float], seed: int, source: str, code: str) -> dict[str, Any] | None:
    """The donor's cell of this baseline and seed, relabelled with ``preference`` and marked
    ``reused_from``, when it was pruned to the sparsity of this comparison's HiPP cell of the seed
    by the same code (its ``code`` stamp, :func:`~hipp_torchprune.provenance.code_fingerprint`),
    so it is the cell this run would compute; else None."""
    cell = donors.get((method, seed))
    hipp = results["cells"].get(cell_key("table1", "hipp", preference, seed))
    if cell is None or hipp is None or abs(cell["target_sparsity"] - hipp["realized_sparsity"]) > 1e-9:
        return None
    if cell.get("code") != code:
        return None
    return {**cell, "preference": list(preference), "reused_from": source}


def run_compare(config: CompareConfig, out_dir: str | Path, *, progress: bool = True, fresh: bool = False,
                registry: Any = None, baselines_from: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison; returns the results dict also written to ``out_dir/results.json``
    and renders ``tables.md`` and ``operating_points.png`` there. With ``baselines_from`` (another
    comparison's directory, same config but the policy and queries), each baseline Table-1 cell
    whose target sparsity matches is copied from it instead of run (:func:`reused_cell`)."""
    from hipp_torchprune.hipp.policy_io import load_policy
    from hipp_torchprune.registry import default_registry

    registry = registry or default_registry()
    _check_config(config, registry)
    donors = {} if baselines_from is None else donor_cells(config, baselines_from)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = _start_results(config, path, fresh)
    todo = [c for c in _cells(config) if cell_key(c[0], c[1], c[2], c[3]) not in results["cells"]]
    if todo or results.get("dense") is None:
        _run_cells(config, load_shared(config, registry), results, todo, out, progress,
                   (donors, str(baselines_from)))
    realized, r_comp = compression_control(load_policy(config.policy))  # queries only: no model
    control = {"w_comp": list(COMPRESSION_SWEEP), "realized_sparsity": realized, "r_comp_sparsity": r_comp}
    if results.get("compression_control") != control:
        results["compression_control"] = control
        _write_json_atomic(path, results)
    kinds = {m: registry.get("method", m).kind for m in config.methods}
    if results.get("kinds") != kinds:
        results["kinds"] = kinds
        _write_json_atomic(path, results)
    write_text_atomic(out / "tables.md", render_tables(results))
    plot_operating_points(results, out / "operating_points.png")
    return results


def _check_config(config: CompareConfig, registry: Any) -> None:
    """Refuse (:class:`CompareError`) a comparison that cannot run, before anything is loaded or written."""
    from hipp_torchprune.loading import parse_dtype

    known = registry.names("method")
    missing = [m for m in config.methods if m not in known]
    if missing:
        raise CompareError(f"unknown method(s) {', '.join(missing)}; registered: {', '.join(known) or 'none'} "
                           "(install plugins/hipp-baselines)")
    if "hipp" in config.methods:
        raise CompareError("--methods lists the baselines: HiPP is always compared (its cells come from --policy)")
    if len(set(config.methods)) != len(config.methods):
        raise CompareError(f"--methods names a method twice: {', '.join(config.methods)}")
    if not config.seeds:
        raise CompareError("give at least one seed")
    if config.row_score not in ROW_SCORES:
        raise CompareError(f"row score {config.row_score!r} is not one of {', '.join(ROW_SCORES)}")
    if config.reconstruct not in RECONSTRUCTIONS:
        raise CompareError(f"reconstruction {config.reconstruct!r} is not one of {', '.join(RECONSTRUCTIONS)}")
    parse_dtype(config.dtype)


def _start_results(config: CompareConfig, path: Path, fresh: bool) -> dict[str, Any]:
    """A new results dict, or the one at ``path`` when it was written by the same config (resume)."""
    results: dict[str, Any] = {"signature": config.signature(), "world": world_fingerprint(config.data),
                               "config": json.loads(json.dumps(asdict(config), default=str)), "cells": {}}
    if path.exists() and not fresh:
        old = json.loads(path.read_text())
        if old.get("signature") != results["signature"]:
            raise CompareError(f"{path} was written by a different comparison config; use --fresh or another --out")
        _check_world(old, config.data, f"{path} (use --fresh or another --out)")
        results |= {k: old.get(k) for k in ("dense", "compression_control", "strata", "kinds")}
        results["cells"] = old.get("cells", {})
        stamps = {c.get("code") for c in results["cells"].values()} - {code_fingerprint()}
        if stamps:
            warnings.warn(f"{path}: some cells were computed by other code ({', '.join(sorted(map(str, stamps)))}; "
                          "None: before cells were stamped); --fresh reruns them all with this code", stacklevel=3)
    return results


def _check_world(results: dict[str, Any], data: str, what: str) -> None:
    """Refuse ``results`` measured on another world than ``data`` is now (both recorded
    fingerprints known and different, :func:`~hipp_torchprune.provenance.world_fingerprint`): a world rebuilt
    at the same path must reproduce its content hash before old cells count as measured on it."""
    theirs, mine = results.get("world"), world_fingerprint(data)
    if theirs is not None and mine is not None and theirs != mine:
        raise CompareError(f"{what} was measured on another world: content hash {theirs[:12]}…, but {data} now "
                           f"has {mine[:12]}…")


def refit_mismatches(policies: dict[str, Any], reconstruct: str) -> list[str]:
    """One message per policy whose training rewards were scored with another refit than the
    ``reconstruct`` every method of this comparison is deployed with: its widths were chosen for
    another model (``docs/results.md``, session 30). Policies saved before the setting existed
    were trained without a refit."""
    from hipp_torchprune.hipp.policy_io import trained_refit

    trained = {name: trained_refit(p) for name, p in policies.items()}
    return [f"policy {name!r} was trained with reconstruct={t!r} in its reward, but this comparison deploys "
            f"every method with reconstruct={reconstruct!r}" for name, t in trained.items() if t != reconstruct]


def load_shared(config: CompareConfig, registry: Any) -> SharedInputs:
    """The model, policies, calibration and test rows every cell shares (matched calibration)."""
    import torch

    from hipp_torchprune import api
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.evaluation import prepare_eval
    from hipp_torchprune.hipp.policy_io import load_policy
    from hipp_torchprune.loading import load_model

    model, processor = load_model(config.model, dtype=config.dtype)
    model.to(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policies = {"main": load_policy(config.policy), **{n: load_policy(d) for n, d in config.samplers + config.ablations}}
    for message in refit_mismatches(policies, config.reconstruct):
        warnings.warn(message, stacklevel=2)
    samples = calibration_samples(config.data, config.calib_n)
    stats = api.calibrate(model, processor, samples, with_grads=True, registry=registry)
    prepared = prepare_eval(processor, config.data, TASKS, limit=config.limit)
    return SharedInputs(model, processor, prepared, samples, stats, policies, registry, config.row_score,
                        config.reconstruct)


def _run_cells(config: CompareConfig, shared: SharedInputs, results: dict[str, Any], todo: list[Any], out: Path,
               progress: bool, donated: tuple[dict[tuple[str, int], dict[str, Any]], str] = ({}, "")) -> None:
    """Evaluate dense (once) and every cell in ``todo`` (a baseline Table-1 cell is taken from
    ``donated``'s cells when :func:`reused_cell` allows), saving ``results.json`` after each."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from hipp_torchprune.evaluation import evaluate

    path, writer = out / "results.json", SummaryWriter(str(out / "tensorboard"))
    donors, source = donated
    code = code_fingerprint()
    if results.get("dense") is None:
        results["dense"] = _metrics(evaluate(shared.model, shared.processor, shared.prepared))
    results["strata"] = bootstrap_strata(shared.prepared)
    _write_json_atomic(path, results)
    bar = tqdm(todo, desc="compare", disable=not progress)
    for table, method, pref, seed, pol in bar:
        key = cell_key(table, method, pref, seed)
        bar.set_postfix_str(key)
        work = out / "work" / hashlib.sha1(key.encode()).hexdigest()[:12]
        cell = reused_cell(donors, results, method, pref, seed, source, code) \
            if table == "table1" and method != "hipp" else None
        cell = cell or {**_run_cell(config, shared, table, method, pref, seed, pol, work, results["dense"]),
                        "code": code}
        results["cells"][key] = cell
        _write_json_atomic(path, results)
        shutil.rmtree(work, ignore_errors=True)
        for k, v in cell["post_recovery"].items():
            writer.add_scalar(f"{table}/{method}/{k}", v, seed)
    bar.close()
    writer.close()


# ---------------------------------------------------------------- tables and figure


def _pref_label(preference: Sequence[float]) -> str:
    """``(0.30, 0.60, 0.10)``: a preference as the tables print it."""
    return "(" + ", ".join(f"{w:.2f}" for w in preference) + ")"


def _group(results: dict[str, Any], table: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in results["cells"].values():
        if cell["table"] == table:
            pref = "-" if cell["preference"] is None else _pref_label(cell["preference"])
            groups.setdefault((cell["method"], pref), []).append(cell)
    return groups


def _row(cells: list[dict[str, Any]], stage: str = "post_recovery") -> list[str]:
    return [fmt_pm([c["realized_sparsity"] for c in cells]),
            fmt_pm([c[stage]["pope_adv_bal_acc"] for c in cells]),
            fmt_pm([c[stage]["pope_rand_bal_acc"] for c in cells]),
            fmt_pm([c[stage]["sqa_acc"] for c in cells]),
            fmt_pm([c[stage]["pope_yes_ratio"] for c in cells]),
            fmt_pm([c["pre_recovery"]["pope_adv_bal_acc"] for c in cells]),
            fmt_pm([c["pre_recovery"]["sqa_acc"] for c in cells]),
            str(len(cells)) + ("" if all(c["matched"] for c in cells) else " (UNMATCHED)")]


HEADER = ("| {first} | sparsity % | POPE-adv BalAcc | POPE-rand BalAcc | SQA acc | POPE yes % "
          "| pre-rec. POPE-adv | pre-rec. SQA | seeds |\n|" + "---|" * 9)


def render_tables(results: dict[str, Any]) -> str:
    """Markdown for Tables 1, 3 and 4 (mean ± std over seeds, in percent; after recovery unless marked)."""
    order = ["hipp", *BASELINES]
    lines = ["### Table 1: methods at matched realized MLP sparsity (after matched recovery)", "",
             HEADER.format(first="method")]
    dense = results.get("dense")
    if dense:
        lines.append(f"| dense | 0.0 | {100 * dense['pope_adv_bal_acc']:.1f} | {100 * dense['pope_rand_bal_acc']:.1f} "
                     f"| {100 * dense['sqa_acc']:.1f} | {100 * dense['pope_yes_ratio']:.1f} | | | |")
    for cells in _group(results, "reference").values():
        lines.append("| dense + recovery | " + " | ".join(_row(cells)) + " |")
    t1 = _group(results, "table1")
    for (method, _), cells in sorted(t1.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order
                                                                 else 99, kv[0][0])):
        lines.append(f"| {'HiPP' if method == 'hipp' else method} | " + " | ".join(_row(cells)) + " |")
    reused = sorted({c["reused_from"] for c in results["cells"].values() if c.get("reused_from")})
    if reused:
        lines += ["", f"Baseline cells reused from {', '.join(reused)} (same config and target sparsity)."]
    lines += bootstrap_lines(results)
    lines += ["", "### Table 3: one HiPP policy queried at several preferences (w_rob, w_util, w_comp)", "",
              HEADER.format(first="preference")]
    for (_, pref), cells in sorted(_group(results, "table3").items(), key=lambda kv: kv[0][1]):
        lines.append(f"| {pref} | " + " | ".join(_row(cells)) + " |")
    lines += _controllability_lines(results)
    t4 = _group(results, "table4")
    lines += ["", "### Table 4: preference-sampler ablation (policy trained with each sampler)", ""]
    if not t4:
        lines.append("Not run: no sampler policies given (`--sampler-policy NAME=DIR`).")
    else:
        lines.append(HEADER.format(first="sampler @ preference"))
        for (name, pref), cells in sorted(t4.items()):
            lines.append(f"| {name} @ {pref} | " + " | ".join(_row(cells)) + " |")
        by_sampler: dict[str, list[dict[str, Any]]] = {}
        for (name, _), cells in t4.items():
            by_sampler.setdefault(name, []).extend(cells)
        for name, cells in sorted(by_sampler.items()):
            lines.append(f"| **{name}, all preferences** | " + " | ".join(_row(cells)) + " |")
    return "\n".join(lines + _table5_lines(results)) + "\n"


def bootstrap_strata(prepared: Any) -> dict[str, str]:
    """Each bootstrapped task's strata, one character per test row: POPE's gold answer ("1" yes,
    "0" no: balanced accuracy), one stratum for multiple choice (accuracy)."""
    return {t.name: "".join(("1" if g == 0 else "0") if t.family == "pope" else "0" for g in t.gold)
            for t in prepared.tasks if t.name in BOOTSTRAP_TASKS}


def _pooled_rows(cells: list[dict[str, Any]], task: str, seeds: Sequence[int]) -> np.ndarray:
    """One method's per-row correctness of ``task``, concatenated over ``seeds`` in that order."""
    by_seed = {c["seed"]: c["rows"][task] for c in cells}
    return np.array([int(ch) for seed in seeds for ch in by_seed[seed]], dtype=np.int8)


def _hipp_rows(results: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """``(label, cells)`` of every HiPP query at Table 1's sparsity: Table 1's preference, then each
    Table-3 preference whose cells all prune to within the tolerance of it (matched to the baselines)."""
    t1 = [c for (m, _), cells in _group(results, "table1").items() if m == "hipp" for c in cells if "rows" in c]
    if not t1:
        return []
    target, tol = t1[0]["realized_sparsity"], results["config"].get("tolerance", 0.0) + 1e-12
    out = [(f"HiPP {_pref_label(t1[0]['preference'])}", t1)]
    for (_, pref), cells in sorted(_group(results, "table3").items()):
        kept = [c for c in cells if "rows" in c]
        if kept and all(abs(c["realized_sparsity"] - target) <= tol for c in kept) \
                and tuple(kept[0]["preference"]) != tuple(t1[0]["preference"]):
            out.append((f"HiPP {_pref_label(kept[0]['preference'])}", kept))
    return out


def bootstrap_lines(results: dict[str, Any], resamples: int = 2000) -> list[str]:
    """Each HiPP query at Table 1's sparsity (:func:`_hipp_rows`) minus the best baseline on each
    bootstrapped metric (the baseline with the highest mean after recovery), with a paired bootstrap
    95 % interval over test rows pooled over the seeds both have
    (:func:`~hipp_torchprune.bootstrap.paired_bootstrap`). With the ``dense + recovery`` reference,
    its line comes last: the headroom, the most any pruned model could gain over the best baseline.
    When a baseline prunes another structure (``results["kinds"]``), the lines repeat against the
    best MLP-row baseline (:func:`_baseline_families`)."""
    from hipp_torchprune.bootstrap import paired_bootstrap

    t1 = {m: [c for c in cells if "rows" in c] for (m, _), cells in _group(results, "table1").items() if m != "hipp"}
    queries, strata = _hipp_rows(results), results.get("strata")
    reference = [c for cells in _group(results, "reference").values() for c in cells if "rows" in c]
    queries += [("dense + recovery", reference)] if queries and reference else []
    if not queries or not strata or not any(t1.values()):
        return ["", "No paired bootstrap: the cells keep no per-row answers (run again with --fresh)."]
    lines = [""]
    for family, pool in _baseline_families(t1, results.get("kinds") or {}):
        best_of = {metric: max(pool, key=lambda m: mean_std([c["post_recovery"][metric] for c in t1[m]])[0])
                   for metric in BOOTSTRAP_TASKS.values()}
        for label, hipp in queries:
            for task, metric in BOOTSTRAP_TASKS.items():
                best = best_of[metric]
                seeds = sorted({c["seed"] for c in hipp} & {c["seed"] for c in t1[best]})
                ci = paired_bootstrap(_pooled_rows(hipp, task, seeds), _pooled_rows(t1[best], task, seeds),
                                      np.array([int(ch) for ch in strata[task] * len(seeds)]), resamples=resamples)
                lines.append(f"{label} minus the best {family} on {metric} ({best}): {100 * ci.difference:+.1f} "
                             f"points, 95 % interval [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]"
                             f"{'' if ci.excludes_zero else ' (includes 0)'} (paired bootstrap over "
                             f"{len(strata[task])} test rows x {len(seeds)} seeds, {resamples} resamples).")
    return lines


def _baseline_families(t1: dict[str, list[dict[str, Any]]], kinds: dict[str, str]) -> list[tuple[str, list[str]]]:
    """``("baseline", every baseline with cells)``, then, when some baseline prunes another structure
    than MLP rows (``kinds``: method name -> ``Method.kind``; SliceGPT's is ``slicing``),
    ``("MLP-row baseline", the MLP-row ones)``: HiPP's own family, compared on its own."""
    pool = [m for m in t1 if t1[m]]
    rows = [m for m in pool if kinds.get(m, "mlp-rows") == "mlp-rows"]
    return [("baseline", pool)] + ([("MLP-row baseline", rows)] if rows and len(rows) < len(pool) else [])


def _controllability_lines(results: dict[str, Any]) -> list[str]:
    """Per-seed preference-metric correlations over Table 3, and the compression sweep."""
    t3 = [c for c in results["cells"].values() if c["table"] == "table3"]
    lines = [""]
    for seed, r in controllability(t3).items():
        lines.append(f"Seed {seed}: r(w_rob, POPE-adv) = {r['r_rob_pope_adv']:+.2f}, "
                     f"r(w_util, ScienceQA) = {r['r_util_sqa']:+.2f} (Table-3 preferences, after recovery).")
    comp = results.get("compression_control")
    if comp:
        pairs = ", ".join(f"{w:g}: {100 * x:.1f} %" for w, x in zip(comp["w_comp"], comp["realized_sparsity"]))
        lines.append(f"Compression sweep (w_comp: realized sparsity): {pairs}; "
                     f"r(w_comp, sparsity) = {comp['r_comp_sparsity']:+.2f}.")
    return lines


def _table5_lines(results: dict[str, Any]) -> list[str]:
    """Table 5: each ablation policy at the Table-1 preference, under the full policy's row."""
    t5 = _group(results, "table5")
    lines = ["", "### Table 5: ablations (policies trained with one part removed, at the Table-1 preference)", ""]
    if not t5:
        return lines + ["Not run: no ablation policies given (`--ablation-policy NAME=DIR`)."]
    full = [c for (method, _), cells in _group(results, "table1").items() if method == "hipp" for c in cells]
    lines.append(HEADER.format(first="policy"))
    if full:
        lines.append("| full HiPP | " + " | ".join(_row(full)) + " |")
    for (name, _), cells in sorted(t5.items()):
        lines.append(f"| {name} | " + " | ".join(_row(cells)) + " |")
    return lines


def operating_points(results: dict[str, Any]) -> list[tuple[str, float, float, float, float]]:
    """``(label, sqa mean, sqa std, pope-adv mean, pope-adv std)`` of Table-1 methods and Table-3 preferences."""
    points = []
    for table in ("table1", "table3"):
        for (method, pref), cells in _group(results, table).items():
            label = ("HiPP" if method == "hipp" else method) + (f" {pref}" if table == "table3" else "")
            sx, sxs = mean_std([100 * c["post_recovery"]["sqa_acc"] for c in cells])
            py, pys = mean_std([100 * c["post_recovery"]["pope_adv_bal_acc"] for c in cells])
            points.append((label, sx, sxs, py, pys))
    return points


def plot_operating_points(results: dict[str, Any], path: Path) -> None:
    """Robustness (POPE-adv balanced accuracy) against utility (ScienceQA accuracy); Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = operating_points(results)
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, x, xs, y, ys in pts:
        color = "tab:red" if label.startswith("HiPP") else "tab:blue"
        ax.errorbar(x, y, xerr=xs, yerr=ys, fmt="o", color=color, ms=5, capsize=2, alpha=0.85)
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if pts:
        front = pareto_front([(p[1], p[3]) for p in pts])
        ax.plot([pts[i][1] for i in front], [pts[i][3] for i in front], "k--", lw=1, label="Pareto front")
        ax.scatter([pts[i][1] for i in front], [pts[i][3] for i in front], s=140, facecolors="none",
                   edgecolors="k")
    dense = results.get("dense")
    if dense:
        ax.scatter([100 * dense["sqa_acc"]], [100 * dense["pope_adv_bal_acc"]], marker="*", s=120, color="k",
                   label="dense")
    for cells in _group(results, "reference").values():
        ax.scatter([mean_std([100 * c["post_recovery"]["sqa_acc"] for c in cells])[0]],
                   [mean_std([100 * c["post_recovery"]["pope_adv_bal_acc"] for c in cells])[0]],
                   marker="*", s=120, facecolors="none", edgecolors="k", label="dense + recovery")
    ax.set_xlabel("ScienceQA-style accuracy (%) [utility]")
    ax.set_ylabel("POPE-adversarial balanced accuracy (%) [robustness]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
