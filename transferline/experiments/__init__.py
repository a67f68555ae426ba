"""Experiments beside the pipeline, run on its data with the same stage
functions: images (transferline/experiments/image.py: label efficiency,
fine-tuning strategies, pretraining objectives) and text
(transferline/experiments/text.py: the text-models table).

Each trial calls the modality's stage functions on its own folders
(`Paths` under .transferline/experiments/<trial>/, reading the pipeline's
raw data and pretrained weights where the trial uses them); the pipeline's
outputs and DVC state are never touched. Trials are Prefect mapped tasks of
one flow run per experiment (transferline/experiments/trials.py), each a
nested MLflow run under the experiment's parent run. Tables and plots land
in `${paths.reports}/experiments/`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from transferline.io import write_json
from transferline.paths import Paths

WORK = Path(".transferline/experiments")  # scratch space of the trials (not tracked by DVC)
OUT = Paths().experiments  # tables and plots; a Paths under another root moves it


class ExperimentError(RuntimeError):
    """The experiment cannot start or a trial failed; the message says what to do."""


def trial_paths(pipeline: Paths, name: str) -> Paths:
    """A trial's own split, processed, models and reports folders; the pipeline's raw data."""
    own = pipeline.under(WORK / name)
    return own.model_copy(update={"raw": pipeline.raw})


def write_outputs(name: str, rows: list[dict], table: list[dict], out: Path = OUT) -> None:
    """rows as CSV, the table as Markdown and JSON."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    head = list(table[0])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in table]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    write_json(out / f"{name}.json", table)

