"""`transferline run --set KEY=VALUE ... [--dry-run]`: steer a run from the command line.

A value set here is validated by the same schema as params.yaml (an error
names the key, exit 2, nothing written), then written into params.yaml: the
file DVC reads, so the stages that use the key rerun and dvc.lock records the
value, and the flow logs it to MLflow with each stage's params. `--dry-run`
says which stages would run and why (`dvc status` in words) and writes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from transferline.cli.common import NOT_A_PROJECT, console

if TYPE_CHECKING:
    from transferline.config import Params


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(2)


def validate_sets(items: list[str], path: Any = None) -> tuple[Params, dict, dict[str, tuple[Any, Any]]]:
    """(params after the sets, typed and raw; {key: (old, new)}); exit 2 naming the key when a value
    is refused (or params.yaml itself is invalid)."""
    from pathlib import Path

    from transferline.config import MODALITIES, PARAMS_FILE, ParamsError, parse_params, read_raw
    from transferline.config.edit import EditError, get_key, parse_sets, with_values

    if not Path("dvc.yaml").is_file():
        _fail(NOT_A_PROJECT)
    path = path or PARAMS_FILE
    try:
        raw = read_raw(path)
        values = parse_sets(items, raw)
    except (ParamsError, EditError) as err:
        _fail(str(err))
    new_raw = with_values(raw, values)
    # A key of the other modality (finetune.text.lr while image is active) is checked by that modality's schema.
    modalities = {new_raw.get("modality")} | {k.split(".")[1] for k in values
                                              if len(k.split(".")) > 2 and k.split(".")[1] in MODALITIES}
    checked = {}
    for modality in sorted(m for m in modalities if m):
        try:
            checked[modality] = parse_params({**new_raw, "modality": modality}, path)
        except ParamsError as err:
            note = f"\n  (with --set {', '.join(values)}; params.yaml is unchanged)" if values else ""
            _fail(f"{err}{note}")
    changes = {k: (get_key(raw, k), v) for k, v in values.items() if get_key(raw, k) != v}
    return checked[new_raw.get("modality", "image")], new_raw, changes


def write_sets(changes: dict[str, tuple[Any, Any]], path: Any = None) -> None:
    """Write the changed keys into params.yaml, each on its own line, comments kept."""
    from transferline.config import PARAMS_FILE
    from transferline.config.edit import EditError, set_values

    try:
        set_values(path or PARAMS_FILE, {k: new for k, (_, new) in changes.items()})
    except EditError as err:
        _fail(str(err))


def plan(changes: dict[str, tuple[Any, Any]], new_raw: dict, until: str | None) -> dict:
    """What a run would do: {"set": {...}, "stale": [why...], "would_run": {stage: why}}."""
    from transferline.dvcrun import STAGES
    from transferline.plan import affected, describe, dvc_status

    status = dvc_status()
    why = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in describe(status)}
    from transferline.project import stale_code

    for path in stale_code():  # a project made by init: the installed package's code changed (not written here)
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == new_raw.get("modality", "image"):
            stage = parts[2].removesuffix(".txt")
            why[stage] = f"its code in the installed package changed ({path}); {why[stage]}" if stage in why \
                else f"its code in the installed package changed ({path})"
    for stage, reason in affected(list(changes), new_raw).items():
        why[stage] = f"{reason}; {why[stage]}" if stage in why else reason
    stages = STAGES if until is None else STAGES[: STAGES.index(until) + 1]
    return {
        "set": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
        "would_run": {s: why[s] for s in stages if s in why},
        "up_to_date": [s for s in stages if s not in why],
    }


def print_plan(info: dict) -> None:
    from rich.console import Console

    out = Console()
    for key, change in info["set"].items():
        out.print(f"set {key}: {change['from']!r} -> {change['to']!r} (not written: --dry-run)")
    if not info["would_run"]:
        out.print("nothing would run: every stage is up to date")
    for stage, why in info["would_run"].items():
        out.print(f"would run {stage}: {why}")
    if info["up_to_date"]:
        out.print(f"up to date (skipped): {', '.join(info['up_to_date'])}")
