"""The model card of a registered version: what it is, what it learnt from, how good it is.

Written by the register stage for either modality, as the MLflow
model-version description (the registry's UI shows it as markdown) and as a
`card/card.md` artifact of the run beside the confusion matrix it links to.
The promote stage fills in the gate's decision once it is known. Everything
comes from files the pipeline already wrote (metrics.json, per_class.json,
the confusion matrix plot) and from params and dvc.lock; no figure is
recomputed here. `transferline card NAME@ALIAS` prints it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transferline.candidates import candidates_table, read_candidates
from transferline.config import Params
from transferline.io import read_json
from transferline.metrics import gain_statement
from transferline.paths import Paths

ARTIFACT_DIR = "card"
DECISION_HEADING = "## Gate decision"
LIMITS_HEADING = "## Known limits"
WEAK_F1 = 0.5  # a class below this F1 is named under known limits
TASKS = {"image": "image classification", "text": "text classification"}


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def _data_origin(params: Params) -> str:
    values = params.values.ingest.model_dump(mode="json", by_alias=True)
    return ", ".join(f"{k}: {v}" for k, v in values.items() if v not in ("", None))


def _hash(hashes: dict[str, str], path: Path) -> str:
    return hashes.get(f"dvc.{path.as_posix()}", "not recorded (run through dvc repro)")


def _metrics_table(metrics: dict) -> list[str]:
    lines = ["| metric | fine-tuned | scratch baseline | transfer gain |", "|---|---|---|---|"]
    for key in sorted(metrics.get("finetune", {})):
        lines.append(_row([key, metrics["finetune"][key], metrics.get("scratch", {}).get(key, "-"),
                           metrics.get("transfer_gain", {}).get(key, "-")]))
    return lines


def _per_class(per_class: dict) -> tuple[list[str], list[str]]:
    """(the fine-tuned model's table, the classes it scores poorly)."""
    scores = per_class.get("finetune", {})
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    weak = []
    for cls, s in scores.items():
        if not isinstance(s, dict) or cls in ("macro avg", "weighted avg"):
            continue
        lines.append(_row([cls, s["precision"], s["recall"], s["f1-score"], int(s["support"])]))
        if s["f1-score"] < WEAK_F1:
            weak.append(f"{cls} (F1 {s['f1-score']:.2f})")
    return lines, weak


def _label_budget(paths: Paths, split) -> str:
    """The training labels per class: the budget, or what was used where a class held fewer (a
    text split takes what there is; reports/split.json counts them)."""
    report = paths.report("split")
    used = sorted(read_json(report).get("target_train_per_class", {}).values()) if report.is_file() else []
    if not used or used[0] >= split.labels_per_class:
        return f"{split.labels_per_class} labelled examples per class for training"
    span = str(used[0]) if used[0] == used[-1] else f"{used[0]} to {used[-1]}"
    return (f"{span} labelled examples per class for training (all there were outside validation and test; "
            f"split.labels_per_class asks for {split.labels_per_class})")


def _starting_point(paths: Paths, finetune) -> str:
    report = paths.report("candidates")
    if not report.is_file():  # written by every finetune run; missing only if the stage never ran
        return "unknown (no reports/candidates.json)"
    decision = read_candidates(report)
    return f"`{decision['winner']}`, chosen on validation ({decision['verdict']})"


def _candidates_section(paths: Paths, metrics: dict) -> list[str]:
    """Every starting point the finetune stage compared: estimate, validation, test, seconds."""
    if not paths.report("candidates").is_file():
        return []
    test = {c: s.get("accuracy") for c, s in metrics.get("candidates", {}).items()}
    return ["## Starting points compared", "", *candidates_table(read_candidates(paths.report("candidates")), test),
            ""]


def build(params: Params, paths: Paths, name: str, version: str, run_id: str, hashes: dict[str, str],
          image_link: str | None) -> str:
    """The card's markdown, with the gate decision still pending."""
    metrics = read_json(paths.report("metrics"))
    per_class = read_json(paths.report("per_class")) if paths.report("per_class").is_file() else {}
    v = params.values
    split, finetune = v.split, v.finetune
    # text keeps training values per start (finetune.text.starts); images one set
    winner = read_candidates(paths.report("candidates"))["winner"] if paths.report("candidates").is_file() else "scratch"
    # text: each start trains with its own values; images share finetune.image's
    train = v.training_for(winner) if hasattr(v, "training_for") else finetune
    n_classes = len([c for c, s in per_class.get("finetune", {}).items()
                     if isinstance(s, dict) and c not in ("macro avg", "weighted avg")])
    gain = metrics.get("transfer_gain", {}).get("accuracy")
    table, weak = _per_class(per_class)
    lines = [
        f"# {name} version {version}",
        "",
        f"**Task**: {TASKS.get(params.modality, params.modality)} (modality `{params.modality}`), "
        f"{n_classes or '?'} classes.",
        f"**Data**: {_data_origin(params)}. DVC hash of `{paths.raw}`: `{_hash(hashes, paths.raw)}`; "
        f"of `{paths.split}`: `{_hash(hashes, paths.split)}`.",
        f"**Label budget**: {_label_budget(paths, split)}, "
        f"{split.val_per_class} per class for validation; tested on {metrics.get('n_test', '?')} held-out examples.",
        f"**Starting point**: {_starting_point(paths, finetune)}, strategy `{finetune.strategy}`, "
        f"{train.epochs} epochs at lr {train.lr}.",
        f"**Run**: MLflow run `{run_id}`; lineage: `transferline lineage {name}/{version}`.",
        "",
        "## Test metrics",
        "",
        f"Fine-tuned vs the same model trained from scratch on the same labels (the scratch baseline): "
        f"**{gain_statement(metrics)}**." if isinstance(gain, float) else "",
        "",
        *_metrics_table(metrics),
        "",
        *_candidates_section(paths, metrics),
        "## Per-class scores (fine-tuned)",
        "",
        *table,
        "",
        "## Confusion matrix",
        "",
        f"![confusion matrix]({image_link})" if image_link else "(no plot recorded)",
        f"Artifact: `runs:/{run_id}/{ARTIFACT_DIR}/confusion_matrix.png`." if image_link else "",
        "",
        DECISION_HEADING,
        "",
        "Pending: the promote stage scores this version against the champion.",
        "",
        LIMITS_HEADING,
        "",
        f"- Scored on one test split of {metrics.get('n_test', '?')} examples from the data above; "
        "inputs unlike it are untested.",
        f"- One training seed ({params.seed}); the spread across seeds is not in these figures "
        "(`transferline experiment label-efficiency` measures it).",
    ]
    if weak:
        lines.append(f"- Weak classes (F1 < {WEAK_F1}): {', '.join(weak)}.")
    if isinstance(gain, float) and gain <= 0:
        lines.append("- Transfer did not help here: the scratch baseline is as good or better.")
    return "\n".join(lines) + "\n"


def with_decision(card: str, report: dict) -> str:
    """The card with its gate section replaced by the gate's report."""
    champ = report.get("champion") or {}
    section = [DECISION_HEADING, "", f"**{report['decision']}** at {report.get('at', '?')}: {report['reason']}.", ""]
    if report.get("checks"):
        section += ["| metric | this version | champion then | delta | required |", "|---|---|---|---|---|"]
        section += [_row([c["metric"], c["challenger"], c.get("champion", "-"), c.get("delta", "-"),
                          c.get("required_delta", "-")]) for c in report["checks"]]
        section.append("")
    section.append(f"Champion before: {champ.get('version', 'none')}; after: {report.get('champion_after') or 'none'}.")
    if DECISION_HEADING not in card:
        return card.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    head, rest = card.split(DECISION_HEADING, 1)
    tail = rest[rest.index("\n## "):] if "\n## " in rest else "\n"
    return head + "\n".join(section) + "\n" + tail


def publish(client: Any, name: str, version: str, run_id: str, text: str) -> None:
    """The card as the version's description and as the run's card/card.md."""
    client.update_model_version(name, version, description=text)
    client.log_text(run_id, text, f"{ARTIFACT_DIR}/card.md")


def write(client: Any, params: Params, paths: Paths, name: str, version: str, run_id: str,
          hashes: dict[str, str]) -> str:
    """Log the confusion matrix, build the card, publish it; return its text."""
    image = paths.plots / "confusion_matrix.png"
    link = None
    if image.is_file():
        client.log_artifact(run_id, str(image), ARTIFACT_DIR)
        # The MLflow UI serves run artifacts at this path; the registry page renders the description.
        link = f"/get-artifact?path={ARTIFACT_DIR}%2Fconfusion_matrix.png&run_uuid={run_id}"
    text = build(params, paths, name, version, run_id, hashes, link)
    publish(client, name, version, run_id, text)
    return text
