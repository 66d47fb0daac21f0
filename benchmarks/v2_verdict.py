"""Read issue 13's targets 2-5 off one ``benchmarks/v2_targets.sh`` output folder, by a fixed rule.

The rule (declared in ``docs/demo-model.md``, session 25, before the worlds it decides had numbers):

- **Target 2**: dense POPE-random >= 95, POPE-adversarial >= 92, ScienceQA >= 85 (``degradation.json``).
- **Target 5** holds at a sparsity S <= 50 % when uniform Wanda loses >= 8 POPE-adversarial points,
  the single-layer-sensitivity allocation loses <= 3, and the random allocations' POPE-adversarial
  sample std is >= 5 points (``degradation.json``; all three at S).
- **Target 3**: the dense gap (POPE-random - POPE-adversarial, ``errors.md``'s dense row) is >= 2, and
  at **some** sparsity where target 5 holds, the gap under uniform Wanda widens by >= 2 while false
  "yes" on the adversarial split grows more than its misses (``errors-0.3.md`` / ``errors-0.4.md`` /
  ``errors.md`` for 30 / 40 / 50 %, from ``pope_errors.py``).
- **Target 4**: single layer at 75 % on the whole test split: Spearman of the POPE-adversarial and
  ScienceQA drop profiles <= 0.5 and different most-critical layers (``ls-test.log``).

    python benchmarks/v2_verdict.py EVAL_DIR [EVAL_DIR ...]

Prints one line per folder and exits 1 unless every folder meets every target, 2 (with a
:class:`~hipp_torchprune.errors.DataError` message) when a folder lacks a file or a file is not
what the scripts write.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from hipp_torchprune.errors import DataError

ERROR_FILES = {0.3: "errors-0.3.md", 0.4: "errors-0.4.md", 0.5: "errors.md"}


class ErrorSummary(NamedTuple):
    """One ``pope_errors.py`` summary: the dense gap, its widening and the adversarial error shares."""

    dense_gap: float
    widening: float
    false_yes_adv: tuple[float, float]
    """Adversarial false "yes" (% of rows), dense then uniform Wanda."""
    misses_adv: tuple[float, float]
    """Adversarial misses (% of rows), dense then uniform Wanda."""

    @property
    def false_yes_leads(self) -> bool:
        """False "yes" grows more than misses under pruning (the error target 3 asks for)."""
        return self.false_yes_adv[1] - self.false_yes_adv[0] > self.misses_adv[1] - self.misses_adv[0]


def read_error_summary(text: str) -> ErrorSummary:
    """Parse the summary table and the "widens by" line that ``pope_errors.py`` prints."""
    rows = [line.split("|") for line in text.splitlines()
            if line.startswith(("| dense |", "| uniform Wanda"))]
    if len(rows) != 2:
        raise DataError("no dense and uniform-Wanda summary rows (not pope_errors.py output)")
    widening = re.search(r"widens by ([-0-9.]+)", text)
    if widening is None:
        raise DataError("no 'widens by' line (not pope_errors.py output)")
    def adv(cell: str) -> float:  # "rand / adv" cells
        return float(cell.split("/")[1])

    return ErrorSummary(float(rows[0][4]), float(widening.group(1)),
                        (adv(rows[0][5]), adv(rows[1][5])), (adv(rows[0][7]), adv(rows[1][7])))


def _dense(rows: list[dict]) -> dict:
    """The dense row of ``degradation.json``."""
    return next(r for r in rows if r["method"] == "dense")


def target5_sparsities(rows: list[dict]) -> list[float]:
    """The sparsities <= 50 % of ``degradation.json`` rows where target 5 holds, ascending."""
    dense = 100 * _dense(rows)["pope_adversarial"][0]
    by = {(r["sparsity"], r["method"]): [100 * v for v in r["pope_adversarial"]] for r in rows}
    held = []
    for s in sorted({r["sparsity"] for r in rows if 0 < r["sparsity"] <= 0.5}):
        uniform, sens, rand = by.get((s, "uniform")), by.get((s, "sensitivity")), by.get((s, "random"))
        if uniform is None or sens is None or rand is None or len(rand) < 2:
            continue
        if uniform[0] - dense <= -8 and sens[0] - dense >= -3 and statistics.stdev(rand) >= 5:
            held.append(s)
    return held


def dense_met(rows: list[dict]) -> tuple[bool, tuple[float, float, float]]:
    """Target 2 on the dense row, with its three figures in points."""
    d = _dense(rows)
    figs = (100 * d["pope_random"][0], 100 * d["pope_adversarial"][0], 100 * d["scienceqa"][0])
    return figs[0] >= 95 and figs[1] >= 92 and figs[2] >= 85, figs


def layer_split(log_text: str) -> tuple[float, int, int]:
    """Target 4's Spearman and the two most-critical layers from ``layer_sensitivity.py``'s log."""
    for line in log_text.splitlines():
        if line.startswith('{"ratio": 0.75, "spearman'):
            rec = json.loads(line)
            return rec["spearman_pope_adv_vs_sqa"], rec["most_critical_pope_adv"], rec["most_critical_sqa"]
    raise DataError("no 75 % Spearman record (not layer_sensitivity.py --ratios 0.75 output)")


def _read(folder: Path, name: str) -> str:
    """``folder/name``'s text, or :class:`DataError` naming what is missing."""
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: missing; run benchmarks/v2_targets.sh (and pope_errors.py at 30 / 40 %) first")
    return path.read_text()


def verdict(folder: Path) -> tuple[bool, str]:
    """Every target 2-5 for one evaluation folder, and a one-line account of each."""
    rows = json.loads(_read(folder, "degradation.json"))
    t2, (rand, adv, sqa) = dense_met(rows)
    t5 = target5_sparsities(rows)
    gap = read_error_summary(_read(folder, "errors.md")).dense_gap
    widen = {s: read_error_summary(_read(folder, ERROR_FILES[s])) for s in t5 if s in ERROR_FILES}
    t3_at = [s for s, e in widen.items() if e.widening >= 2 and e.false_yes_leads]
    t3 = gap >= 2 and bool(t3_at)
    spearman, crit_adv, crit_sqa = layer_split(_read(folder, "ls-test.log"))
    t4 = spearman <= 0.5 and crit_adv != crit_sqa
    line = (f"{folder.name}: T2 {'met' if t2 else 'NO'} ({rand:.1f}/{adv:.1f}/{sqa:.1f}); "
            f"T5 {'met at ' + ','.join(f'{s:.0%}' for s in t5) if t5 else 'NO'}; "
            f"T3 {'met' if t3 else 'NO'} (gap {gap:.2f}; widening "
            + ", ".join(f"{e.widening:+.2f} at {s:.0%}" for s, e in widen.items())
            + f"); T4 {'met' if t4 else 'NO'} (Spearman {spearman:.2f}, most critical {crit_adv}/{crit_sqa})")
    return t2 and t3 and t4 and bool(t5), line


def main(argv: list[str] | None = None) -> int:
    """Print each folder's verdict; 0 only if every folder meets every target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    try:
        results = [verdict(f) for f in parser.parse_args(argv).folders]
    except DataError as err:
        print(f"v2_verdict: {err}", file=sys.stderr)
        return 2
    for _, line in results:
        print(line)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
