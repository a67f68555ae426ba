"""`transferline card` and `transferline ui`: read what the registry says about a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from transferline.cli.common import console, params_or_exit, print_json
from transferline.env import apply_env_defaults


def card(
    ref: str = typer.Argument(None, help="NAME@ALIAS or NAME/VERSION (default: register.model_name@champion)."),
    as_json: bool = typer.Option(False, "--json", help="Print {model, version, aliases, card} as JSON."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Print a registered version's model card (markdown).

    The card holds the task, the data and its DVC hash, the label budget, the
    starting point, the test metrics with the scratch baseline and the
    transfer gain, per-class scores, the confusion matrix, the gate's
    decision and known limits. It is also the version's description in the
    MLflow UI and the run's card/card.md artifact.
    """
    cfg = params_or_exit(params)
    apply_env_defaults()
    import mlflow

    from transferline import lineage, tracking
    from transferline.cli.registry import _registry_call

    tracking.configure(cfg.tracking)
    ref = ref or f"{cfg.model_name}@champion"
    mv = _registry_call(lineage.resolve, mlflow.MlflowClient(), ref)
    text = mv.description or f"{mv.name} version {mv.version} has no model card (registered before cards existed)\n"
    if as_json:
        print_json({"model": mv.name, "version": str(mv.version), "aliases": list(mv.aliases or []), "card": text})
    else:
        sys.stdout.write(text)


def ui(
    port: int = typer.Option(5000, help="Port of the MLflow UI (on 127.0.0.1)."),
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
) -> None:
    """Start the MLflow UI on 127.0.0.1 and print its address.

    The UI shows this project's tracking store (params.yaml tracking, or
    MLFLOW_TRACKING_URI); the Prefect UI's address is printed too when
    PREFECT_API_URL names a server. Ctrl-C stops it.
    """
    cfg = params_or_exit(params)
    apply_env_defaults()
    from transferline import tracking

    anchored = tracking.anchored(cfg.tracking)
    env_uri = os.environ.get(tracking.TRACKING_URI_ENV)
    if env_uri and not env_uri.startswith("sqlite:"):
        console.print(f"MLFLOW_TRACKING_URI is a server: open {env_uri} (nothing to start)")
        raise typer.Exit(0)
    uri = env_uri or anchored.uri
    tracking.configure(cfg.tracking)  # creates the store and the experiment, so the UI opens on it
    prefect = os.environ.get("PREFECT_API_URL")
    console.print(f"MLflow UI: http://127.0.0.1:{port}  (store {uri})")
    if prefect:
        console.print(f"Prefect UI: {prefect.removesuffix('/').removesuffix('/api')}")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--default-artifact-root", Path(anchored.artifact_root).resolve().as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    try:
        raise typer.Exit(subprocess.call(cmd))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
