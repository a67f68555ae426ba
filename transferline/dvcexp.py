"""DVC experiments (`dvc exp run`, `--temp`, `--queue`) never touch the registry.

An experiment is for trying values: it runs the stages up to evaluate, and
`dvc exp show` compares the metrics. Registering and promoting would let an
experimental model become the champion, so register and promote notice an
experiment at their entry and write a report that says "skipped: DVC
experiment" instead. DVC sets DVC_EXP_NAME (and DVC_EXP_BASELINE_REV) for
every experiment run, in the workspace, a temp folder or a queue worker
(dvc/repo/experiments/queue/base.py), and DVC_ROOT to the original
repository's root even when the stage runs in a throw-away copy under
.dvc/tmp/exps/: relative store paths resolve against that root
(`project_root`), so nothing lands in a registry that is deleted afterwards.

A normal run after `dvc exp apply` finds the skipped report with an
up-to-date dvc.lock; `skipped_in_experiment` lets the flow force those two
stages then. `transferline promote --from-experiment NAME` does the same.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

EXP_NAME_ENV = "DVC_EXP_NAME"
BASELINE_ENV = "DVC_EXP_BASELINE_REV"
ROOT_ENV = "DVC_ROOT"
TEMP_PART = "/.dvc/tmp/exps/"  # where `--temp` and queued experiments run
SKIPPED = "skipped: DVC experiment"
GUARDED = ("register", "promote")  # stage -> its report: reports/register.json, reports/promote.json


def experiment_name() -> str | None:
    """The running DVC experiment's name, "(temp)" in an experiment folder without one, else None."""
    name = os.environ.get(EXP_NAME_ENV) or os.environ.get(BASELINE_ENV)
    if name:
        return name
    return "(temp)" if TEMP_PART in f"{Path.cwd().resolve().as_posix()}/" else None


def project_root() -> Path:
    """The repository's root: DVC_ROOT inside a stage (the original one in a temp experiment), else the cwd."""
    return Path(os.environ.get(ROOT_ENV) or Path.cwd()).resolve()


def skip_in_experiment(stage: str, reports: Path) -> dict | None:
    """In a DVC experiment: write `stage`'s report as skipped (promote also its .md) and return it; else None."""
    name = experiment_name()
    if name is None:
        return None
    report = {"skipped": SKIPPED, "decision": SKIPPED, "experiment": name,
              "baseline_rev": os.environ.get(BASELINE_ENV),
              "how_to_register": f"transferline promote --from-experiment {name}"}
    from transferline.io import write_json  # here: io loads numpy, and the read-only CLI commands import this module

    write_json(reports / f"{stage}.json", report)
    if stage == "promote":
        (reports / "promote.md").write_text(
            f"# Promotion gate\n\n**{SKIPPED}** `{name}`: an experiment never registers or moves the champion. "
            f"To gate its model: `transferline promote --from-experiment {name}`.\n")
    log.info("%s: %s %s: nothing registered, the champion is untouched "
             "(to gate this model: transferline promote --from-experiment %s)", stage, SKIPPED, name, name)
    return report


def skipped_in_experiment(stage: str, params_file: str | Path = "params.yaml") -> bool:
    """True if `stage`'s report says a DVC experiment skipped it (dvc.lock may still call it up to date)."""
    if stage not in GUARDED:
        return False
    from transferline.io import read_json

    try:
        raw = yaml.load(Path(params_file).read_text(), Loader=yaml.CSafeLoader) or {}  # noqa: S506 (safe)
        reports = Path((raw.get("paths") or {}).get("reports", "reports"))
        report = reports / f"{stage}.json"
        return report.is_file() and read_json(report).get("skipped") == SKIPPED
    except (OSError, ValueError, yaml.YAMLError, AttributeError):
        return False
