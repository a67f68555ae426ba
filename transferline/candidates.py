"""Choosing the starting point, for either modality: the finetune stage
trains one model per candidate (scratch, this project's pretraining, an
adapted or external start), scores each on the validation split, and keeps
the best. The test split is never used to choose (evaluate reports it
afterwards). Scratch is both a candidate and the baseline: a transferred
start must beat it on validation or scratch is what gets registered, so a
source that does not help this target can never make the model worse.

Written to `reports/candidates.json`: one row per candidate (its LogME
estimate, validation accuracy and loss, seconds, or why it was skipped) and
the decision.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from transferline.io import read_json, write_json
from transferline.paths import Paths

log = logging.getLogger(__name__)

SCRATCH = "scratch"
NO_GAIN = "no transfer gain: the source does not help this target"
NO_GAIN_AT_CEILING = "no transfer gain possible: scratch already scores"
# where a user goes next when the source does not help (README: Which starting point)
OTHER_STARTS = "; other starting points can be listed in finetune.candidates (a weights file or model folder closer to this data)"


def folder_name(candidate: str) -> str:
    """Where a candidate's model and history go (models/<this>, reports/<this>_history.json):
    scratch keeps the baseline's own folder, every other start gets one under candidates/."""
    return SCRATCH if candidate == SCRATCH else "candidates/" + re.sub(r"[^\w.-]+", "_", candidate)


def metric_key(candidate: str) -> str:
    """A candidate's name as an MLflow metric key allows it (a weights file's path may hold more)."""
    return re.sub(r"[^\w./: -]+", "_", candidate)


def shortlist(estimates: Mapping[str, float | None], keep: int) -> list[str]:
    """The candidates worth fine-tuning: all when `keep` is 0, else scratch (the baseline is
    always trained) and the `keep` best transferred starts by their estimate (none: last)."""
    def rank(n: str) -> float:
        return -math.inf if estimates[n] is None else estimates[n]

    transferred = sorted((n for n in estimates if n != SCRATCH), key=rank, reverse=True)
    chosen = transferred if keep == 0 else transferred[:keep]
    return [n for n in estimates if n == SCRATCH or n in chosen]  # in the params' order


def choose(rows: Sequence[Mapping], min_gain: float = 0.0) -> dict:
    """The decision over trained rows ({candidate, val_acc, val_loss}): the transferred start
    with the best validation accuracy (lower validation loss breaks a tie) if it beats scratch
    by at least `min_gain` (and at all), else scratch. A margin keeps a one-image lead on a
    small validation split, i.e. noise, from deciding (finetune.*.min_val_gain)."""
    trained = [r for r in rows if not r.get("skipped")]
    by_name = {r["candidate"]: r for r in trained}
    if SCRATCH not in by_name:
        raise ValueError("the scratch baseline must be among the trained candidates")
    base = by_name[SCRATCH]
    best = max(trained, key=lambda r: (r["val_acc"], -r["val_loss"], r["candidate"] == SCRATCH))
    lead = best["val_acc"] - base["val_acc"]
    if best["candidate"] != SCRATCH and (lead < min_gain - 1e-9 or lead <= 0 and best["val_loss"] >= base["val_loss"]):
        best = base
    gain = round(best["val_acc"] - base["val_acc"], 5)
    decision = {"winner": best["candidate"], "val_gain_over_scratch": gain}
    if best["candidate"] == SCRATCH and base["val_acc"] >= 1.0:  # "does not help" would be untested
        decision["verdict"] = (f"{NO_GAIN_AT_CEILING} {base['val_acc']:.4f} on validation (a smaller label "
                               "budget, split.labels_per_class, would tell whether the source helps)")
    elif best["candidate"] == SCRATCH:
        decision["verdict"] = NO_GAIN
        if lead > 0:
            decision["verdict"] += f" (the best start led by {lead:+.4f} on validation, under min_val_gain {min_gain})"
        decision["verdict"] += OTHER_STARTS
    else:
        decision["verdict"] = (f"{best['candidate']} won on validation: {best['val_acc']:.4f} vs scratch "
                               f"{base['val_acc']:.4f} ({gain:+.4f})")
    return decision


def compare(paths: Paths, estimates: Mapping[str, float | None], keep: int, min_gain: float,
            fine_tune: Callable[[str], Mapping], write: bool = True) -> dict:
    """The finetune stage's choice, for either modality: fine-tune the shortlist (`estimates` in
    the params' order), score each on validation, keep the winner. `fine_tune(candidate)` trains
    one and returns its {val_acc, val_loss, epochs}; `write`: this process writes the winner's
    copies and reports/candidates.json (under torchrun, rank 0 alone)."""
    chosen = shortlist(estimates, keep)
    rows = []
    for candidate, estimate in estimates.items():
        row = {"candidate": candidate, "estimate": estimate}
        if candidate not in chosen:
            rows.append({**row, "skipped": f"LogME below the best {keep}"})
            continue
        t0 = time.perf_counter()
        rows.append({**row, **fine_tune(candidate), "seconds": round(time.perf_counter() - t0, 1)})
    decision = choose(rows, min_gain)
    if write:
        keep_winner(paths, rows, decision)
    log.info("%s", decision["verdict"])
    return {"candidates": rows, **decision}


def write_candidates(path: str | Path, rows: Sequence[Mapping], decision: Mapping, estimator: str) -> Path:
    return write_json(path, {"estimator": estimator, "candidates": list(rows), **decision})


def keep_winner(paths: Paths, rows: Sequence[Mapping], decision: Mapping) -> None:
    """models/finetune and its history become the winner's copies; reports/candidates.json the table."""
    winner = folder_name(decision["winner"])
    paths.model_dir("finetune").mkdir(parents=True, exist_ok=True)
    paths.model_dir("candidates").mkdir(parents=True, exist_ok=True)  # a DVC output, even if only scratch ran
    shutil.copyfile(paths.weights(winner), paths.weights("finetune"))
    shutil.copyfile(paths.history(winner), paths.history("finetune"))
    write_candidates(paths.report("candidates"), rows, decision, "LogME")


def read_candidates(path: str | Path) -> dict:
    return read_json(path)


def candidates_table(report: Mapping, test: Mapping[str, float] | None = None) -> list[str]:
    """Markdown rows of the candidates (test accuracy where evaluate has measured it, by metric_key)."""
    test = test or {}
    lines = [f"| candidate | {report.get('estimator', 'estimate')} | val accuracy | test accuracy | seconds |",
             "|---|---|---|---|---|"]
    for r in report["candidates"]:
        mark = "**" if r["candidate"] == report["winner"] else ""
        est = f"{r['estimate']:.3f}" if isinstance(r.get("estimate"), float) else "-"
        if r.get("skipped"):
            lines.append(f"| {r['candidate']} | {est} | skipped: {r['skipped']} | - | - |")
            continue
        acc = test.get(metric_key(r["candidate"]))
        test_acc = f"{acc:.4f}" if isinstance(acc, float) else "-"
        lines.append(f"| {mark}{r['candidate']}{mark} | {est} | {r['val_acc']:.4f} | {test_acc} | "
                     f"{r.get('seconds', 0):.0f} |")
    return lines
