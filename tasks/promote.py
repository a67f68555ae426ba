"""promote: the champion/challenger gate for the version register just made.

The challenger (reports/register.json) and the current champion are both
loaded from the registry and scored on the current test split; `champion`
moves only if the challenger passes every threshold and margin in params.yaml
`promote` (transferline/promotion.py). A kept champion is a normal outcome,
not a failure. Outputs: reports/promote.json (decision, reason, both sets of
figures) and reports/promote.md (the same, readable).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks._stage import StageError, run_main
from transferline.config import Params
from transferline.io import read_json

log = logging.getLogger(__name__)

REGISTERED = Path("reports/register.json")
OUT = Path("reports/promote.json")
REPORT = Path("reports/promote.md")


def promote(params: Params, registered: Path = REGISTERED, out: Path = OUT, report_md: Path = REPORT) -> dict:
    """Gate the registered version; write and return the report."""
    from transferline.locks import LockTimeout
    from transferline.promotion import PromotionError, run_gate, write_report

    if not registered.is_file():
        raise StageError(f"{registered} not found; run the register stage first (dvc repro register)")
    info = read_json(registered)
    if info.get("name") != params.model_name:
        raise StageError(f"{registered} is for model {info.get('name')!r}, params.yaml register.model_name is "
                         f"{params.model_name!r}; re-run the register stage")
    try:
        report = run_gate(params, str(info["version"]))
    except (PromotionError, LockTimeout) as err:
        raise StageError(str(err)) from None
    write_report(report, out, report_md)
    return report


def main(params: Params) -> None:
    promote(params)


if __name__ == "__main__":
    run_main("promote", main)
