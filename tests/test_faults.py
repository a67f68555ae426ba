"""Faults inside the stages: 16-bit and mixed-mode images, a non-finite training
loss, a gate asked to compare what it cannot, a registry that lost DVC's version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferline.errors import StageError


def test_16bit_grey_is_scaled_and_mixed_modes_load(tmp_path):
    from transferline.image.files import load_folder

    ramp = (np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) * 83)  # 0 .. 65,000: a 16-bit gradient
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a/grey16.png")  # mode I;16
    Image.new("RGBA", (40, 30), (200, 100, 50, 128)).save(tmp_path / "a/rgba.png")
    Image.new("P", (28, 28), 3).save(tmp_path / "b/palette.png")
    Image.new("CMYK", (28, 28), (0, 0, 0, 0)).save(tmp_path / "b/cmyk.jpg")
    x, y, classes, bad, given = load_folder(tmp_path, size=28, channels=1)
    assert bad == [] and classes == ["a", "b"] and x.shape == (4, 1, 28, 28)
    grey = x[list(y).index(0)][0]
    assert grey.min() == 0 and grey.max() >= 250
    assert len(np.unique(grey)) > 200  # a gradient, not Pillow's clip to {0, 255}


def test_non_finite_loss_stops_training_naming_epoch_and_step(tmp_path):
    from transferline.config.image import FinetuneParams
    from transferline.image.models import build_model
    from transferline.image.train import fit

    x = torch.randn(64, 1, 28, 28)
    x[5] = float("nan")  # one poisoned image
    y = torch.arange(64) % 2
    cfg = FinetuneParams(epochs=3, batch_size=32, lr=0.01)
    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(StageError, match=r"train epoch 1: the training loss is nan by step 2"):
        fit(build_model("small_cnn", 2, 1), (x, y), (x[:8], y[:8]), cfg, torch.device("cpu"),
            torch.Generator().manual_seed(0), checkpoint=ckpt)
    assert not ckpt.exists()  # nothing saved from the poisoned epoch


@pytest.fixture
def client(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.MlflowClient()


def version(client, classes: list[str]) -> str:
    from transferline.champion import CLASSES_TAG

    if not client.search_registered_models("name='m'"):
        client.create_registered_model("m")
    mv = client.create_model_version("m", source=str(Path.cwd()), tags={CLASSES_TAG: json.dumps(classes)})
    return str(mv.version)


def test_gate_refuses_other_label_sets_and_small_test_splits(client):
    from transferline.promotion import TestSet, cannot_decide

    animals, three = version(client, ["cat", "cow", "dog"] * 1), version(client, ["cat", "dog"])
    test = TestSet(np.zeros((40, 1, 28, 28), np.uint8), ["cat", "dog"] * 20, "data/split/target.npz")
    why = cannot_decide(client, "m", three, animals, test, min_test_size=30)
    assert "classes ['cat', 'dog'] are not the champion's (version 1) ['cat', 'cow', 'dog']" in why
    assert "--force" in why
    small = TestSet(test.x[:9], test.y[:9], test.path)
    assert "has 9 examples, fewer than promote.min_test_size=30" in cannot_decide(client, "m", three, None, small, 30)
    same = version(client, ["dog", "cat"])
    assert cannot_decide(client, "m", same, three, test, 30) is None


def test_status_names_a_registry_that_lost_dvc_s_version(client, tiny_params, tmp_path):
    from transferline.status import registry_gap

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/register.json").write_text(json.dumps({"name": "m", "version": "1", "run_id": "abc"}))
    assert "m version 1, which the registry" in registry_gap(tiny_params, client)  # a fresh, empty database
    version(client, ["a", "b"])
    assert "comes from run None, not abc" in registry_gap(tiny_params, client)  # another run under that number


def test_a_failed_checkpoint_write_leaves_the_previous_one_usable(tmp_path):
    from transferline.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, None, {"epoch": 1})
    (tmp_path / "ckpt.tmp").mkdir()  # the next write fails like a full disk: at the temp file
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(StageError, match="cannot write the checkpoint.*the previous one is kept"):
        save_checkpoint(path, model, opt, None, {"epoch": 2})
    fresh = torch.nn.Linear(3, 2)
    assert load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters()), None) == {"epoch": 1}
    assert torch.allclose(fresh.weight, model.weight - 1.0)


def test_a_refused_tracking_server_is_named_once_without_its_password(monkeypatch):
    """The words the stage and the CLI print when the tracking server is gone (tests/test_faults_e2e.py
    stops a real one mid-run): the refused connection under MLflow's wrappers, the URI without its password."""
    import socket

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from transferline.errors import connection_failure, tracking_unreachable

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(MlflowException) as caught:
        MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name("x")
    why = connection_failure(caught.value)
    assert why is not None and "Connection refused" in why
    assert connection_failure(StageError("a refused input")) is None
    line = tracking_unreachable(f"http://ops:s3cret@127.0.0.1:{port}", why)
    assert line.startswith(f"the tracking server http://ops:***@127.0.0.1:{port} is unreachable ([Errno 111]")
    assert "s3cret" not in line and "fix tracking.uri" in line


@pytest.mark.slow
def test_a_refused_input_is_not_retried(tmp_path, prefect_api):
    """The flow itself (no CLI, so no pre-flight) on a folder that is not there: ingest, a stage
    that retries network faults, refuses the input and is not tried again (flows/policy.py).
    (Prefect's own log repeats the error here; the CLI keeps those copies off the console.)"""
    from conftest import MLFLOW_ENV, make_project, tiny_raw_params

    raw = tiny_raw_params(ingest={"target": "folder", "folder": "data/nowhere"},
                          orchestrate={"retries": 2, "retry_delay_seconds": 5})
    project = make_project(tmp_path / "refused", raw)
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and not k.startswith("PREFECT_")}
    # the session's Prefect server: an ephemeral API would add its start-up (13-20 s) and test nothing here
    env.update(PREFECT_HOME=str(project / ".transferline/prefect"), PREFECT_LOGGING_LEVEL="WARNING",
               PREFECT_API_URL=prefect_api)
    t0 = time.perf_counter()
    flow = ("from transferline.env import apply_env_defaults; apply_env_defaults(); "
            "from flows.pipeline import pipeline; pipeline(until='ingest')")
    done = subprocess.run([sys.executable, "-c", flow],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-3000:]
    assert out.count("Running stage 'ingest'") == 1, out[-3000:]  # one try: no retry after 5 s, 10 s
    assert "StageRefused" in out and "[ingest] error: ingest.image.folder: data/nowhere is not a folder" in out
    assert time.perf_counter() - t0 < 120


@pytest.mark.parametrize("modality", ["image", "text"])
def test_a_source_that_changes_while_ingest_reads_it_is_refused(tmp_path, monkeypatch, modality):
    """Another program writes into the image folder / the text file while ingest reads it: the
    stage fails naming the path and writes nothing (transferline/sources.py)."""
    import importlib

    from conftest import tiny_raw_params
    from transferline.config import parse_params

    raw = tiny_raw_params(paths={"raw": str(tmp_path / "raw")})
    folder = tmp_path / "external"
    if modality == "image":
        for name in ("cat", "dog"):
            (folder / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / name / f"{i}.png")
        raw["ingest"]["image"].update(target="folder", folder=str(folder))
        source, reader = folder, "load_folder"
    else:
        folder.mkdir()
        source, reader = folder / "r.csv", "read_user_file"
        source.write_text("text,label\n" + "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)))
        raw["modality"] = "text"
        raw["ingest"]["text"].update(source="file", file=str(source))
    files = importlib.import_module(f"transferline.{modality}.files")
    read = getattr(files, reader)

    def read_while_another_program_writes(*args, **kwargs):
        out = read(*args, **kwargs)
        if modality == "image":
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "cat" / "late.png")
        else:
            with open(source, "a") as f:
                f.write("a late row,pos\n")
        return out

    monkeypatch.setattr(files, reader, read_while_another_program_writes)
    params = parse_params(raw)
    with pytest.raises(StageError, match=f"{source} changed while ingest was reading it"):
        importlib.import_module(f"transferline.{modality}.ingest").run(params, params.paths)
    assert not (tmp_path / "raw").exists()
