"""`transferline predict`: label your own files with the champion (or any registered version).

The model comes from the registry as the MLflow pyfunc a server would load; the files are read
by the modality's predict module (transferline/<modality>/predict.py) the way ingest reads
data, so a photo or a CSV row is labelled as it would have trained: no resizing or column
handling left to the user. One `input<TAB>label` line per input on stdout (or --json), the
count per label and every unreadable input on stderr; exit 1 when some input was unreadable.
"""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from pathlib import Path

import typer

from transferline.cli.common import console, params_or_exit, print_json, tracking_or_exit
from transferline.env import apply_env_defaults


def predict(
    paths: list[Path] = typer.Argument(..., help="Images: files or folders (every file under them). Text: .txt "
                                       "files (one text a line) or .csv/.tsv/.jsonl/.parquet files (the "
                                       "ingest.text.text_column column)."),
    model: str = typer.Option(None, help="NAME@ALIAS or NAME/VERSION (default: register.model_name@champion)."),
    as_json: bool = typer.Option(False, "--json", help="Print [{input, label}, ...] as JSON."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Label files with the champion: images decoded, resized and converted as ingest does it.

    Prints `input<TAB>label` per input; the labels come from the registered
    pyfunc model, exactly what `mlflow models serve` would answer.
    """
    cfg = params_or_exit(params)
    if missing := [str(path) for path in paths if not path.exists()]:  # before seconds of loading the model
        console.print(f"[red]error:[/] no such file or folder: {', '.join(missing)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    tracking_or_exit(cfg)
    apply_env_defaults()
    import mlflow

    from transferline import lineage, tracking
    from transferline.cli.registry import _registry_call

    tracking.configure(cfg.tracking)
    version = _registry_call(lineage.resolve, mlflow.MlflowClient(), model or f"{cfg.model_name}@champion")
    served = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    modality = (version.tags or {}).get("modality", cfg.modality)  # the model's own, whatever params.yaml says now
    reader = importlib.import_module(f"transferline.{modality}.predict")
    names, inputs, problems = reader.model_inputs(paths, cfg, served.unwrap_python_model())
    labels = [str(label) for label in served.predict(inputs)] if names else []
    if as_json:
        print_json([{"input": n, "label": label} for n, label in zip(names, labels)])
    else:
        sys.stdout.writelines(f"{n}\t{label}\n" for n, label in zip(names, labels))
    counts = ", ".join(f"{label} {n}" for label, n in sorted(Counter(labels).items()))
    console.print(f"{len(names)} input(s) labelled by {version.name} version {version.version}"
                  f"{' (' + ', '.join(version.aliases) + ')' if version.aliases else ''}: {counts or '-'}",
                  highlight=False, soft_wrap=True)
    for problem in problems:
        console.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
