"""The bad-input corpus: every case is generated here (no binaries in git), run
through the real CLI in-process (`transferline run`, or a registry command),
and must fail with exit code 2 (or 1 for a registry refusal), the file, key
or line named in the message, within seconds, before Prefect or any stage
starts, and with every file of the project left as it was (data, checkpoints,
the registry database).

Set TRANSFERLINE_BAD_INPUTS_TABLE=path to write the table of cases
(case, exit code, message, seconds, untouched) as markdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import ROOT, tiny_raw_params

RESULTS: list[tuple[str, int, str, float, bool]] = []
MAX_SECONDS = 10.0  # to fail; a stage run would take minutes (Prefect alone starts in ~10 s)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def project(tmp: Path, raw: dict) -> Path:
    """A project folder: dvc.yaml, params.yaml, a DVC remote in .dvc/config, a checkpoint and a
    registry database that must survive every case."""
    subprocess.run(["git", "init", "-q", str(tmp)], check=True)
    shutil.copy(ROOT / "dvc.yaml", tmp / "dvc.yaml")
    (tmp / ".dvc").mkdir()
    (tmp / ".dvc/config").write_text("[core]\n    remote = local\n['remote \"local\"']\n    url = ../.remote\n")
    (tmp / "models/finetune").mkdir(parents=True)
    (tmp / "models/finetune/model.safetensors").write_bytes(b"stands for a checkpoint")
    (tmp / ".transferline").mkdir()
    with sqlite3.connect(tmp / ".transferline/mlflow.db") as db:  # stands for the registry and its champion
        db.execute("create table champion (version text)")
        db.execute("insert into champion values ('3')")
    write_params(tmp, raw)
    return tmp


def write_params(tmp: Path, raw: dict) -> None:
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def image_folder(tmp: Path, classes: dict[str, int], size: int = 28) -> Path:
    folder = tmp / "data/external/image"
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(folder / name / f"{i}.png")
    return folder


def folder_params(**ingest) -> dict:
    return tiny_raw_params(ingest={"target": "folder", **ingest})


def text_params(file: str, **ingest) -> dict:
    raw = tiny_raw_params()
    raw["modality"] = "text"
    raw["ingest"]["text"] = {**raw["ingest"]["text"], "source": "file", "file": file, **ingest}
    return raw


def csv_rows(n_per_class: int = 12, classes: tuple[str, ...] = ("pos", "neg")) -> str:
    rows = [f"review number {i} about {c},{c}" for c in classes for i in range(n_per_class)]
    return "text,label\n" + "\n".join(rows) + "\n"


# --- the cases: (id, set-up, command, exit code, words the message must hold) ---

def _no_git(t):
    shutil.rmtree(t / ".git")  # a project copied without its .git: every dvc status would fail


def _not_a_project(t):
    (t / "dvc.yaml").unlink()  # a folder that is no project (the user's data folder, say)


def _lr_inf(t):
    write_params(t, tiny_raw_params(finetune={"lr": float("inf")}))


def _gate_nan(t):
    write_params(t, tiny_raw_params(promote={"metrics": {"accuracy": {"min": float("nan")}}}))


def _duplicate_key(t):
    (t / "params.yaml").write_text((t / "params.yaml").read_text() + "seed: 7\n")


def _typo(t):
    write_params(t, tiny_raw_params(finetune={"lrr": 0.1}))


def _string_number(t):
    write_params(t, tiny_raw_params(finetune={"epochs": "many"}))


def _bad_yaml(t):
    (t / "params.yaml").write_text("seed: [1, 2\n")


def _missing_weights(t):
    write_params(t, tiny_raw_params(finetune={"candidates": ["scratch", "data/external/weights/none.pt"]}))


def _no_folder(t):
    write_params(t, folder_params(folder="data/external/nowhere"))


def _no_classes(t):
    (t / "data/external/image").mkdir(parents=True)
    write_params(t, folder_params())


def _one_class(t):
    image_folder(t, {"cat": 12})
    write_params(t, folder_params())


def _few_images(t):
    image_folder(t, {"cat": 12, "dog": 3})
    write_params(t, folder_params())


def _budget_too_large(t):
    image_folder(t, {"cat": 40, "dog": 30})  # 27 dog images outside a 10 % test set
    write_params(t, folder_params())
    raw = yaml.safe_load((t / "params.yaml").read_text())
    raw["split"]["image"]["labels_per_class"] = 25  # + 5 validation images = 30
    write_params(t, raw)


def _not_an_image(t):
    folder = image_folder(t, {"cat": 12, "dog": 12})
    (folder / "dog/notes.png").write_text("not a picture")


def _cut_short(t):
    """A JPEG and a PNG whose copy stopped half-way: their headers read, the pixels do not; and a
    JPEG with a video after its end (a phone's motion photo), which reads and must pass."""
    folder = image_folder(t, {"cat": 20, "dog": 20})  # enough for the label budget: the 2 files are all
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for name, fmt in (("half.jpg", "JPEG"), ("half.png", "PNG"), ("motion.jpg", "JPEG")):
        picture.save(folder / "dog" / name, fmt)
    for name in ("half.jpg", "half.png"):
        whole = (folder / "dog" / name).read_bytes()
        (folder / "dog" / name).write_bytes(whole[: len(whole) // 2])
    with open(folder / "dog/motion.jpg", "ab") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(100))


def _split_without_a_class(t):
    """A folder laid out by split whose test folder lacks a class: nothing could measure it."""
    folder = t / "data/external/image"
    for side, classes in (("train", ("cat", "dog")), ("test", ("cat",))):
        image_folder(t, {c: 12 for c in classes})
        (folder / side).mkdir()
        for c in classes:
            (folder / c).rename(folder / side / c)


def _bomb(t):
    folder = image_folder(t, {"cat": 12, "dog": 12})
    Image.new("L", (400, 400)).save(folder / "dog/huge.png")
    write_params(t, folder_params(max_pixels=10_000))


def _bad_name(t):
    folder = image_folder(t, {"cat": 12, "dog": 12})
    os.rename(folder / "dog/0.png", os.fsencode(folder / "dog") + b"/caf\xe9.png")


def _file_link_loop(t):
    folder = image_folder(t, {"cat": 12, "dog": 12})
    os.symlink("b.png", folder / "dog/a.png")
    os.symlink("a.png", folder / "dog/b.png")


def _dir_link_loop(t):
    folder = image_folder(t, {"cat": 12, "dog": 12})
    os.symlink("..", folder / "dog/again")


def _broken_link(t):
    folder = image_folder(t, {"cat": 12, "dog": 12})
    os.symlink("/nonexistent/x.png", folder / "dog/gone.png")


def _many_at_once(t):
    _few_images(t)
    raw = folder_params()
    raw["tracking"] = {**raw["tracking"], "uri": "http://127.0.0.1:9"}  # discard port: nothing listens
    write_params(t, raw)
    (t / ".dvc/config").write_text("[core]\n")


def _weights(content: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        (t / "data/external/weights").mkdir(parents=True)
        content(t / "data/external/weights/w.pt")
        write_params(t, tiny_raw_params(finetune={"candidates": ["scratch", "data/external/weights/w.pt"]}))
    return setup


class Exploit:  # what a malicious weights file holds: a pickle that runs a command when loaded
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _pickle_exploit(path):
    import torch

    torch.save({"conv.weight": Exploit()}, path)


def _garbage(path):
    path.write_bytes(b"\x00garbage" * 100)


def _bad_safetensors(path):
    path.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}")


def _tensor_list(path):
    import torch

    torch.save([torch.zeros(3)], path)


def _text(name: str, content: bytes | str | None, **ingest) -> Callable[[Path], None]:
    def setup(t: Path) -> None:
        folder = t / "data/external/text"
        folder.mkdir(parents=True)
        if content is not None:
            (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
        write_params(t, text_params(f"data/external/text/{name}", **ingest))
    return setup


def _latin1_line_3() -> bytes:
    lines = csv_rows().encode().splitlines(keepends=True)
    lines[2] = "café au lait,pos\n".encode("latin1")
    return b"".join(lines)


def _jsonl(lines: list[str]) -> str:
    good = [json.dumps({"text": f"text {i} {c}", "label": c}) for c in ("a", "b") for i in range(12)]
    return "\n".join(good[:3] + lines + good[3:]) + "\n"


def _text_model_folder(t):
    folder = t / "data/external/weights/bert"
    folder.mkdir(parents=True)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    _text("r.csv", csv_rows())(t)
    raw = yaml.safe_load((t / "params.yaml").read_text())
    raw["finetune"]["text"] = {"candidates": ["scratch", "data/external/weights/bert"]}
    raw["preprocess"]["text"] = {"tokenizer": "data/external/weights/bert"}
    write_params(t, raw)


def _text_rows_and_budget(t):
    """What validate finds, found before anything runs: a row without a label and a validation
    set larger than the smallest class."""
    _text("r.csv", csv_rows() + "a review nobody labelled,\n")(t)
    raw = yaml.safe_load((t / "params.yaml").read_text())
    raw["split"]["text"] = {**raw["split"].get("text", {}), "val_per_class": 40}
    write_params(t, raw)


def _bad_db(t):
    (t / ".transferline/mlflow.db").write_bytes(b"this is not a database" * 100)


def _server_gone(t):
    raw = tiny_raw_params()
    raw["tracking"] = {**raw["tracking"], "uri": "http://127.0.0.1:9"}
    write_params(t, raw)


def _no_remote(t):
    (t / ".dvc/config").write_text("[core]\n    analytics = false\n")


RUN = ["run"]
CASES = [
    # params
    ("not a project", _not_a_project, RUN, 2, ["no dvc.yaml here", "transferline init DIR --image-folder"]),
    ("not a project, --set", _not_a_project, [*RUN, "--set", "finetune.lr=0.1"], 2, ["no dvc.yaml here", "init"]),
    ("params: finetune.lr .inf", _lr_inf, RUN, 2, ["finetune.image.lr", "finite"]),
    ("params: gate min NaN", _gate_nan, RUN, 2, ["promote.metrics.accuracy.min", "finite"]),
    ("params: duplicate key", _duplicate_key, RUN, 2, ["duplicate key 'seed'", "lines"]),
    ("params: unknown key", _typo, RUN, 2, ["finetune.image.lrr", "unknown key"]),
    ("params: text for a number", _string_number, RUN, 2, ["finetune.image.epochs"]),
    ("params: not YAML", _bad_yaml, RUN, 2, ["params.yaml", "not valid YAML"]),
    ("params: missing weights file", _missing_weights, RUN, 2, ["finetune.image.candidates", "none.pt"]),
    # image folders
    ("folder: missing", _no_folder, RUN, 2, ["ingest.image.folder", "nowhere", "is not a folder"]),
    ("folder: no class sub-folders", _no_classes, RUN, 2, ["no class sub-folders"]),
    ("folder: one class", _one_class, RUN, 2, ["1 class sub-folder", "at least 2"]),
    ("folder: too few images", _few_images, RUN, 2, ["dog (3)", "validate.image.min_per_class"]),
    ("folder: label budget over the smallest class", _budget_too_large, RUN, 2,
     ["= 30, but the smallest class has only 27 images", "lower split.image.labels_per_class to 22"]),
    ("--dry-run: what would stop the run", _budget_too_large, [*RUN, "--dry-run"], 2,
     ["pre-flight found 1 problem(s)", "lower split.image.labels_per_class to 22"]),
    ("not in a git repository", _no_git, RUN, 2, ["is not in a git repository, which DVC needs", "git init"]),
    ("folder: not an image", lambda t: (_not_an_image(t), write_params(t, folder_params())), RUN, 2,
     ["dog/notes.png", "not an image"]),
    ("folder: images cut short", lambda t: (_cut_short(t), write_params(t, folder_params())), RUN, 2,
     ["2 problem(s)", "dog/half.jpg stops before the image's end", "dog/half.png stops", "copy it again"]),
    ("folder: laid out by split, a class missing from test", lambda t: (_split_without_a_class(t),
     write_params(t, folder_params())), RUN, 2, ["1 problem(s)", "class 'dog' has no test images", "test folder"]),
    ("folder: decompression bomb", _bomb, RUN, 2, ["dog/huge.png", "too large", "ingest.image.max_pixels"]),
    ("folder: name not UTF-8", lambda t: (_bad_name(t), write_params(t, folder_params())), RUN, 2,
     ["caf\\xe9.png", "not valid UTF-8"]),
    ("folder: file link loop", lambda t: (_file_link_loop(t), write_params(t, folder_params())), RUN, 2,
     ["dog/a.png", "loops"]),
    ("folder: directory link loop", lambda t: (_dir_link_loop(t), write_params(t, folder_params())), RUN, 2,
     ["dog/again", "loop"]),
    ("folder: broken link", lambda t: (_broken_link(t), write_params(t, folder_params())), RUN, 2,
     ["dog/gone.png", "broken"]),
    ("all problems at once", _many_at_once, RUN, 2, ["3 problem(s)", "dog (3)", "127.0.0.1:9", "DVC remote"]),
    # weight files
    ("weights: malicious pickle", _weights(_pickle_exploit), RUN, 2,
     ["w.pt", "not safetensors or a plain state dict", "Python objects", "convert"]),
    ("weights: garbage", _weights(_garbage), RUN, 2, ["w.pt", "damaged or not a torch file"]),
    ("weights: damaged safetensors", _weights(_bad_safetensors), RUN, 2, ["w.pt", "damaged safetensors"]),
    ("weights: a list, not a dict", _weights(_tensor_list), RUN, 2, ["w.pt", "expected a state dict"]),
    # text files
    ("text: file missing", _text("r.csv", None), RUN, 2, ["ingest.text.file", "r.csv", "not found"]),
    ("text: empty file", _text("r.csv", b""), RUN, 2, ["r.csv", "is empty"]),
    ("text: header only", _text("r.csv", "text,label\n"), RUN, 2, ["r.csv", "no data rows"]),
    ("text: unknown extension", _text("r.txt", "x"), RUN, 2, ["r.txt", ".csv, .tsv, .jsonl or .parquet"]),
    ("text: no label column", _text("r.csv", csv_rows(), label_column="sentiment"), RUN, 2,
     ["no column 'sentiment'", "ingest.text.label_column", "--set ingest.text.label_column=COLUMN"]),
    ("text: neither column", _text("r.csv", csv_rows(), text_column="review", label_column="sentiment"), RUN, 2,
     ["no column 'review' (ingest.text.text_column), no column 'sentiment' (ingest.text.label_column)",
      "--set ingest.text.text_column=COLUMN --set ingest.text.label_column=COLUMN"]),
    ("text: not UTF-8", _text("r.csv", _latin1_line_3()), RUN, 2, ["r.csv: line 3 not UTF-8", "iconv"]),
    ("text: bad JSONL line", _text("r.jsonl", _jsonl(['{"text": "oops", "label": ']), label_column="label"), RUN, 2,
     ["r.jsonl", "line 4 is not valid JSON"]),
    ("text: JSONL array line", _text("r.jsonl", _jsonl(['["a", "b"]'])), RUN, 2, ["line 4", "not an object"]),
    ("text: labels all empty", _text("r.csv", "text,label\n" + "".join(f"t{i},\n" for i in range(20))), RUN, 2,
     ["label column 'label'", "empty in every row"]),
    ("text: one class", _text("r.csv", csv_rows(classes=("pos",))), RUN, 2, ["holds one class ('pos')"]),
    ("text: validate's problems, all before a stage", _text_rows_and_budget, RUN, 2,
     ["2 problem(s)", "r.csv: 1 row(s) without a label: row 25", "split.text.val_per_class (40)",
      "lower it: 1 (a fifth)"]),
    ("text: model folder with a pickle", _text_model_folder, RUN, 2,
     ["finetune.text.candidates", "model.safetensors", "pytorch_model.bin is a pickle", "tokenizer.json"]),
    # servers and registry commands
    ("tracking: damaged database", _bad_db, RUN, 2, ["tracking.uri", "not a readable SQLite database", "mv "]),
    ("tracking: server unreachable", _server_gone, RUN, 2, ["tracking.uri", "127.0.0.1:9", "unreachable"]),
    ("dvc: no remote", _no_remote, RUN, 2, ["no default DVC remote", "--no-push"]),
    ("registry: status on a damaged database", _bad_db, ["status"], 2, ["not a readable SQLite database"]),
    ("registry: promote on a damaged database", _bad_db, ["promote"], 2, ["not a readable SQLite database"]),
    ("registry: rollback, server unreachable", _server_gone, ["rollback", "--reason", "x"], 2, ["unreachable"]),
    ("registry: --force without a reason", lambda t: None, ["promote", "--force", "--version", "1"], 2,
     ["--force needs --version and --reason"]),
]


@pytest.fixture(scope="module")
def table():
    yield RESULTS
    out = os.environ.get("TRANSFERLINE_BAD_INPUTS_TABLE")
    if out:
        lines = ["| case | exit | message (first problem) | seconds | untouched |", "|---|---|---|---|---|"]
        for case, code, message, seconds, untouched in RESULTS:
            first = message.replace("|", "\\|").replace("\n", " ")[:160]
            lines.append(f"| {case} | {code} | {first} | {seconds:.2f} | {'yes' if untouched else 'NO'} |")
        Path(out).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case,setup,args,code,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_fast_with_a_message(tmp_path, monkeypatch, table, case, setup, args, code, words):
    from transferline.cli.main import app

    project(tmp_path, tiny_raw_params())
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250", "NO_COLOR": "1"})
    seconds = time.perf_counter() - t0
    message = " ".join(result.output.split())
    untouched = snapshot(tmp_path) == before and not (tmp_path / "pwned").exists()
    RESULTS.append((case, result.exit_code, message.removeprefix("error: "), seconds, untouched))
    assert result.exit_code == code, result.output + repr(result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for word in words:
        assert word in message, f"{word!r} not in: {result.output}"
    assert "Traceback" not in result.output
    assert seconds < MAX_SECONDS
    assert untouched  # data, checkpoint, registry database as they were; nothing executed from a pickle
    assert not (tmp_path / ".transferline/prefect").exists() and not (tmp_path / "data/raw").exists()
