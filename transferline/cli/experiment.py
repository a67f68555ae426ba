"""`transferline experiment ...`: experiments beside the pipeline (transferline/experiments/)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from transferline.cli.common import console, params_or_exit, print_json
from transferline.env import apply_env_defaults

app = typer.Typer(help="Experiments beside the pipeline (need `transferline run --until pretrain`).",
                  no_args_is_help=True)


JSON_HELP = "Print the result table as JSON (keys: experiment, table, written_to), not Markdown."


def _show(name: str, out: Path, as_json: bool) -> None:
    """The table the experiment wrote: Markdown for people, or its JSON (the same rows) for scripts."""
    if as_json:
        print_json({"experiment": name, "table": json.loads((out / f"{name}.json").read_text()),
                    "written_to": str(out)})
        return
    Console().print((out / f"{name}.md").read_text())
    console.print(f"written to {out}/")


def _experiment(name: str, params: Path, as_json: bool = False) -> None:
    cfg = params_or_exit(params)
    apply_env_defaults()
    import logging

    from transferline.experiments import ExperimentError, image, starts

    if cfg.modality != "image":
        console.print(f"[red]error:[/] `experiment {name}` is an image experiment; params.yaml has "
                      f"modality: {cfg.modality} (switch with `transferline run --modality image --until pretrain`)")
        raise typer.Exit(2)
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    try:
        module = starts if name in ("label-efficiency", "transferability") else image
        getattr(module, name.replace("-", "_"))(cfg)
    except ExperimentError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    _show(name.replace("-", "_"), cfg.paths.experiments, as_json)


@app.command("transferability")
def transferability(params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
                    as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Does the LogME estimate rank the starting points as fine-tuning does? Every candidate in
    finetune.image.candidates (at least 3) fine-tuned at every budget x seed in experiments.image;
    Spearman and Kendall rank correlations of estimate vs test accuracy, a table and a plot."""
    _experiment("transferability", params, as_json)


@app.command("label-efficiency")
def label_efficiency(params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
                     as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The registered model (the starting point chosen on validation) vs scratch, test accuracy
    at every label budget and seed in params.yaml `experiments.image`: a table and a plot with spread."""
    _experiment("label-efficiency", params, as_json)


@app.command("strategies")
def strategies(params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
               as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Test accuracy and train time of each fine-tuning strategy in params.yaml
    `experiments.image.strategies`, next to the scratch baseline."""
    _experiment("compare-strategies", params, as_json)


@app.command("objectives")
def objectives(params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
               as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Pretrain with each objective in params.yaml `experiments.image.objectives`
    (supervised, denoising, contrastive; optionally with their own pool and
    epochs), fine-tune each on the label budget, and compare the test accuracy
    and the gain over the scratch baseline. Needs only `transferline run --until ingest`."""
    _experiment("objectives", params, as_json)


@app.command("text-models")
def text_models(
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    trial: list[str] = typer.Option(None, help="Run only this trial (by name; repeatable); the other "
                                    "trials keep their row from the last run."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Test accuracy and train time per epoch of each text model in params.yaml
    `experiments.text.text_models` (MiniLM full / LoRA, our MLM encoder, scratch, BiLSTM).
    Needs `transferline run --modality text --until pretrain`."""
    cfg = params_or_exit(params)
    apply_env_defaults()
    import logging

    from transferline.experiments import ExperimentError
    from transferline.experiments.text import text_models as run_text_models

    logging.basicConfig(level=logging.INFO, format="[text-models] %(message)s")
    try:
        run_text_models(cfg, trial or None)
    except ExperimentError as err:
        console.print(f"[red]error:[/] {err}")
        raise typer.Exit(1) from None
    _show("text_models", cfg.paths.experiments, as_json)
