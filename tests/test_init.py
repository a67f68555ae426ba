"""`transferline init`: a newcomer's project on their own data, as a person builds and runs it.

Real git, DVC, MLflow and Prefect in tmp_path; the pipeline is the installed
package (no copy of the code in the project)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from conftest import MLFLOW_ENV
from transferline.dvcrun import STAGES

CLASSES = {0: "bear", 2: "cat", 9: "zebra"}  # Animal-MNIST labels -> folder names
# A tiny run through --set, as a person would type it (the project's params.yaml is the package's defaults).
TINY_SETS = ("split.labels_per_class=6", "split.val_per_class=3", "split.test_fraction=0.25",
             "split.source_max_samples=300", "pretrain.epochs=1", "finetune.epochs=2", "validate.min_per_class=5",
             "promote.min_test_size=5", "promote.metrics.accuracy.min=0.2", "promote.metrics.macro_f1.min=0.1")


def transferline(cwd: Path, *args: str, timeout: float = 600, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and not k.startswith("PREFECT_")}
    return subprocess.run([sys.executable, *flags, "-m", "transferline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_images(folder: Path, builtin_sets, per_class: int = 14) -> Path:
    """Real Animal-MNIST silhouettes as PNGs, folder/<class>/<n>.png."""
    from PIL import Image

    x, y = builtin_sets["target"]
    rng = np.random.default_rng(0)
    for label, name in CLASSES.items():
        for i, k in enumerate(rng.choice(np.flatnonzero(y == label), per_class, replace=False)):
            path = folder / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[k][0]).save(path)
    return folder


def test_init_refuses_bad_input_with_one_line_naming_the_path(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full/notes.txt").write_text("mine")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat/a.png").write_bytes(b"")
    cases = {
        ("full", "--image-folder", "flat"): "full exists and is not an empty folder",
        ("new", "--image-folder", "missing"): "--image-folder missing: no such folder",
        ("new", "--image-folder", "flat"): "--image-folder flat: 0 class sub-folder(s)",
        ("new", "--text-file", "missing.csv"): "--text-file missing.csv: no such file",
        ("new", "--text-file", "flat/a.png"): "not a .csv, .tsv, .jsonl or .parquet file",
        ("new", "--image-folder", "flat", "--text-file", "x.csv"): "choose one data source",
    }
    for args, expected in cases.items():
        done = transferline(tmp_path, "init", *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, done.stderr)
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path / "full") == ["notes.txt"]


def test_init_fits_the_label_budget_to_small_data_so_the_first_run_starts(tmp_path):
    """The package's defaults ask 50 + 20 images (150 validation texts) per class: init lowers
    what the smallest class cannot hold, says so, and the run's pre-flight passes; what fits stays."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in (("few", 40), ("many", 70)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "photos" / name / f"{i}.png")
    rows = "".join(f"a {'good' if i % 3 else 'bad'} film, number {i};{'pos' if i % 3 else 'neg'}\n" for i in range(300))
    (tmp_path / "reviews.csv").write_text("text;label\n" + rows)  # a spreadsheet's export: 100 'neg'
    expected = {("img", "--image-folder", "photos"): {"split.image.labels_per_class": "22", "split.image.val_per_class": "10"},
                ("txt", "--text-file", "reviews.csv"): {"split.text.val_per_class": "16"}}
    for (name, *args), fitted in expected.items():
        made = transferline(tmp_path, "init", name, *args)
        assert made.returncode == 0, made.stderr
        for key, value in fitted.items():
            assert f"set {key}: {value} in params.yaml" in " ".join(made.stderr.split()), made.stderr
        raw = yaml.safe_load((tmp_path / name / "params.yaml").read_text())
        modality = raw["modality"]
        assert {k: str(raw["split"][modality][k.rsplit(".", 1)[1]]) for k in fitted} == fitted
        assert raw["split"][modality]["test_fraction"] == 0.2  # what fit is left as it was
        dry = transferline(tmp_path / name, "run", "--dry-run")
        assert dry.returncode == 0 and "would run ingest" in dry.stdout + dry.stderr, dry.stderr[-2000:]


def test_init_keeps_the_split_a_folder_or_a_file_ships_with(tmp_path):
    """A folder laid out train/<class>, test/<class> and a table with a `split` column: init says
    their split is kept (the file's through ingest.text.split_column), fits no budget to it, and
    the run's pre-flight passes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for side, n in (("train", 30), ("test", 8)):
        for name in ("ant", "bee"):
            (tmp_path / "photos" / side / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(
                    tmp_path / "photos" / side / name / f"{i}.png")
    rows = "".join(f"film {i} was {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'},"
                   f"{'test' if i % 5 == 0 else 'train'}\n" for i in range(1200))
    (tmp_path / "reviews.csv").write_text("text,label,split\n" + rows)
    for name, args, said, key in (("img", ("--image-folder", "photos"), "photos is laid out by split (test, train)", None),
                                  ("txt", ("--text-file", "reviews.csv"), "reviews.csv has a 'split' column", "split_column")):
        made = transferline(tmp_path, "init", name, *args)
        assert made.returncode == 0 and said in " ".join(made.stderr.split()), made.stderr
        assert "set split." not in made.stderr  # the data's own split: no budget fitted to it
        raw = yaml.safe_load((tmp_path / name / "params.yaml").read_text())
        assert key is None or raw["ingest"]["text"][key] == "split"
        dry = transferline(tmp_path / name, "run", "--dry-run")
        assert dry.returncode == 0 and "would run ingest" in dry.stdout + dry.stderr, dry.stderr[-2000:]


def _champion(project: Path) -> str | None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project}/.transferline/mlflow.db")
    champion = client.get_registered_model("transferline-image").aliases.get("champion")
    return None if champion is None else str(champion)


@pytest.mark.slow  # two real pipeline runs and a check: ~100 s on 2 cores
def test_a_newcomer_inits_a_project_on_their_folder_runs_it_and_steers_it(tmp_path, builtin_sets):
    write_images(tmp_path / "animals", builtin_sets)
    t0 = time.perf_counter()
    made = transferline(tmp_path, "init", "myproj", "--image-folder", "animals")
    assert made.returncode == 0, made.stderr
    project = tmp_path / "myproj"
    # the project holds the team's values and data, none of the code
    assert not any((project / d).exists() for d in ("tasks", "transferline", "flows"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["modality"] == "image" and params["ingest"]["image"]["target"] == "folder"
    assert sorted(p.name for p in (project / "data/external/image").iterdir()) == sorted(CLASSES.values())
    assert (project / "data/external/image.dvc").is_file()  # `dvc add`: cached, pushed with the rest
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert list(stages) == list(STAGES)
    assert all(spec["deps"][0] == f"code/${{modality}}/{name}.txt" for name, spec in stages.items())
    assert "transferline/image/finetune.py" in (project / "code/image/finetune.txt").read_text()

    try:
        _runs_steers_and_checks(project, tmp_path)
    finally:
        transferline(project, "server", "stop")
    print(f"init + two runs: {time.perf_counter() - t0:.1f} s")


def _runs_steers_and_checks(project: Path, tmp_path: Path) -> None:
    from transferline import localserver

    home = project / ".transferline/prefect"
    first = transferline(project, "run", "--json", *[a for s in TINY_SETS for a in ("--set", s)])
    assert first.returncode == 0, first.stderr[-3000:]
    # the default: the first run started the project's Prefect server, and later commands reuse it
    server = localserver.running(home)
    assert server is not None and "started this project's Prefect server" in first.stderr
    summary = json.loads(first.stdout)
    assert summary["ran"] == list(STAGES)
    # each stage timed its own work, inside its process: a part of the stage's wall time
    assert all(0 < row["work_seconds"] < row["seconds"] for row in summary["stages"]), summary["stages"]
    assert json.loads((project / "data/raw/meta.json").read_text())["target"]["classes"] == sorted(CLASSES.values())
    assert _champion(project) == "1"
    assert list((tmp_path / "myproj-dvc-remote").rglob("*"))  # pushed to the sibling remote

    # one value from the command line: only the stage that reads it reruns
    second = transferline(project, "run", "--json", "--set", "promote.metrics.accuracy.margin_abs=0.01")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["ran"] == ["promote"]
    assert "margin_abs: 0.01" in (project / "params.yaml").read_text()
    # the run kept status's answer (.transferline/readcache): the status after it imports no MLflow
    shown = transferline(project, "status", "--json", flags=("-X", "importtime"))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert json.loads(shown.stdout)["last_run"]["run_id"] == json.loads(second.stdout)["mlflow_run_id"]
    assert not re.search(r"\|\s+mlflow$", shown.stderr, re.M), "status imported mlflow after a run"

    # the data-triggered check, for a script: nothing new since the run
    check = transferline(project, "check", "--json", "--no-push")
    assert check.returncode == 0, check.stderr[-3000:]
    assert json.loads(check.stdout)["action"] == "nothing to do"
    assert localserver.running(home) == server and "started this project's" not in second.stderr + check.stderr
    runs = httpx.post(f"{server.api_url}/flow_runs/filter", json={}, timeout=10).json()
    assert len(runs) >= 3 and {r["state"]["type"] for r in runs} == {"COMPLETED"}  # each command's flow run


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_folder(folder: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_init_imports_from_another_dvc_repo_and_a_url_and_the_check_sees_a_new_version(tmp_path, builtin_sets):
    # a team's existing DVC repository holding the images
    source = tmp_path / "team-data"
    write_images(source / "animals", builtin_sets, per_class=3)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "add", "-q", "animals"], ["git", "add", "-A"],
                [*git, "commit", "-qm", "data"]):
        subprocess.run(cmd, cwd=source, check=True, capture_output=True)
    made = transferline(tmp_path, "init", "fromdvc", "--from-dvc", str(source), "--path", "animals")
    assert made.returncode == 0, made.stderr
    spec = yaml.safe_load((tmp_path / "fromdvc/data/external/image.dvc").read_text())
    assert spec["deps"][0]["path"] == "animals" and spec["deps"][0]["repo"]["url"] == str(source)
    assert sorted(p.name for p in (tmp_path / "fromdvc/data/external/image").iterdir()) == sorted(CLASSES.values())

    # a text file at a URL (http on loopback: no network); `dvc update` in the check fetches a new version
    (tmp_path / "web").mkdir()
    (tmp_path / "web/reviews.csv").write_text("text,label\na fine film,fresh\na dull film,rotten\n")
    with http_folder(tmp_path / "web") as url:
        made = transferline(tmp_path, "init", "fromurl", "--text-file", f"{url}/reviews.csv")
        assert made.returncode == 0, made.stderr
        project = tmp_path / "fromurl"
        params = yaml.safe_load((project / "params.yaml").read_text())
        assert params["modality"] == "text" and params["ingest"]["text"] == {
            **params["ingest"]["text"], "source": "file", "file": "data/external/text/reviews.csv"}
        from transferline.project import sync_data

        assert sync_data(project, update_imports=True) == []  # unchanged at the source
        (tmp_path / "web/reviews.csv").write_text("text,label\na fine film,fresh\na dull film,rotten\nmeh,rotten\n")
        assert sync_data(project, update_imports=True) == ["data/external/text/reviews.csv.dvc"]
    assert (project / "data/external/text/reviews.csv").read_text().endswith("meh,rotten\n")
