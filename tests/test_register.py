"""register end to end on a tiny real setup: MLflow SQLite store in tmp_path,
a random SmallCNN, two registrations, the champion alias, and serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from transferline.checkpoint import save_weights
from transferline.config import Params, ParamsError, parse_params
from transferline.image.models import SmallCNN

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fish"]
MODEL_NAME = "test-image"
# Used only if the repo's params.yaml is mid-edit and does not validate.
FALLBACK = {
    "pretrain": {"image": {"epochs": 1, "batch_size": 8, "lr": 0.001}},
    "finetune": {"image": {"epochs": 1, "batch_size": 8, "lr": 0.001}},
}


def make_params(tmp_path: Path) -> Params:
    try:
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
    except (OSError, yaml.YAMLError):
        raw = None
    overrides = {
        "tracking": {
            "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_root": str(tmp_path / "mlartifacts"),
            "experiment": "test",
        },
        "register": {"image": {"model_name": MODEL_NAME}},
    }
    try:
        return parse_params({**(raw if isinstance(raw, dict) else FALLBACK), **overrides})
    except ParamsError:
        return parse_params({**FALLBACK, **overrides})


def write_inputs(channels: int = 1) -> None:
    save_weights(
        SmallCNN(num_classes=len(CLASSES), in_channels=channels),
        "models/finetune/model.safetensors",
        meta={"arch": "small_cnn", "num_classes": len(CLASSES), "in_channels": channels},
    )
    target = {"mean": [0.3] * channels, "std": [0.25] * channels, "classes": CLASSES, "image_size": 28,
              "channels": channels, "n": 99}
    Path("data/processed").mkdir(parents=True, exist_ok=True)
    Path("data/processed/meta.json").write_text(json.dumps({"target": target}))
    metrics = {
        "finetune": {"accuracy": 0.8, "macro_f1": 0.78},
        "scratch": {"accuracy": 0.6, "macro_f1": 0.55},
        "transfer_gain": {"accuracy": 0.2, "macro_f1": 0.23},
    }
    Path("reports").mkdir(exist_ok=True)
    Path("reports/metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("TRANSFERLINE_MLFLOW_RUN_ID", raising=False)
    # MLflow writes these two into os.environ itself; set-then-delete makes
    # monkeypatch restore the caller's values afterwards.
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    yield tmp_path
    import mlflow

    while mlflow.active_run():  # a failed assertion mid-run must not leak into other tests
        mlflow.end_run("FAILED")


def test_register_twice_keeps_first_champion_and_serves(env: Path) -> None:
    import mlflow

    from transferline.image import register as register_stage

    def register(params):
        return register_stage.run(params, params.paths)
    from transferline.status import status

    params = make_params(env)
    write_inputs()
    assert status(params)["champion"] is None  # a new, empty store

    first = register(params)
    # register never sets the alias: the promote stage decides (tests/test_promote.py)
    assert first["version"] == "1" and first["became_champion"] is False and first["champion_version"] is None
    assert json.loads(Path("reports/register.json").read_text()) == first

    client = mlflow.MlflowClient()
    assert client.get_registered_model(MODEL_NAME).aliases == {}
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    tags = client.get_model_version(MODEL_NAME, "1").tags
    assert float(tags["test_accuracy"]) == pytest.approx(0.8)
    assert {"git.commit", "git.dirty", "lineage.prefect_flow_run_id", "lineage.params_sha256"} <= tags.keys()
    assert tags["lineage.mlflow_run_id"] == first["run_id"]
    run = client.get_run(first["run_id"])
    assert run.info.run_name == "register"
    assert run.data.metrics["transfer_gain_accuracy"] == pytest.approx(0.2)

    second = register(params)
    assert second["version"] == "2" and second["became_champion"] is False
    assert second["champion_version"] == "1"
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = list(model.predict(images))
    assert len(labels) == 5 and set(labels) <= set(CLASSES)
    with pytest.raises(Exception, match="shape"):
        model.predict(images[:, :20, :20])

    now = status(params)
    assert now["champion"]["version"] == "1"
    assert now["champion"]["metrics"]["test_accuracy"] == pytest.approx(0.8)
    assert now["last_run"]["run_id"] == second["run_id"]


def test_card_says_how_many_labels_trained_where_the_data_held_fewer(tmp_path: Path) -> None:
    """A text split takes what there is: a budget of 1500 over a 400-row file trained on 106 and
    129; the card must not claim 1500."""
    from transferline.card import _label_budget
    from transferline.config.text import TextSplitParams
    from transferline.io import write_json
    from transferline.paths import Paths

    paths = Paths().under(tmp_path)
    split = TextSplitParams(labels_per_class=1500, val_per_class=29)
    assert _label_budget(paths, split) == "1500 labelled examples per class for training"  # no report yet
    write_json(paths.report("split"), {"target_train_per_class": {"negative": 106, "positive": 129}})
    assert _label_budget(paths, split).startswith("106 to 129 labelled examples per class for training (all there")
    assert "split.labels_per_class asks for 1500" in _label_budget(paths, split)
    write_json(paths.report("split"), {"target_train_per_class": {"negative": 1500, "positive": 1500}})
    assert _label_budget(paths, split) == "1500 labelled examples per class for training"


def test_predict_labels_files_as_ingest_reads_them(env: Path) -> None:
    """`transferline predict` labels photos of any size with the champion exactly as the served
    model labels ingest's own arrays of them; an unreadable file is named and the exit code is 1."""
    import mlflow
    from PIL import Image
    from typer.testing import CliRunner

    from transferline.cli.main import app
    from transferline.image import register as register_stage
    from transferline.image.files import load_folder
    from transferline.image.predict import model_inputs

    params = make_params(env)
    write_inputs()
    Path("params.yaml").write_text(yaml.safe_dump(params.to_raw()))
    Path("dvc.yaml").write_text("stages: {}\n")
    missing = CliRunner().invoke(app, ["predict", "nowhere.png"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert missing.exit_code == 2 and "no such file or folder: nowhere.png" in missing.stderr
    before = CliRunner().invoke(app, ["predict", "."], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert before.exit_code == 1 and "no model 'test-image' is registered yet; `transferline run`" in before.stderr
    register_stage.run(params, params.paths)
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "1")
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        Path("new", cls).mkdir(parents=True)
        for i, (w, h) in enumerate(((300, 200), (28, 28), (64, 90))):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(f"new/{cls}/{i}.jpg")
    Path("new/a/notes.txt").write_text("not an image")
    Path("new/b/Thumbs.db").write_bytes(b"a thumbnail cache")  # skipped, as ingest skips it

    done = CliRunner().invoke(app, ["predict", "new", "--json"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert done.exit_code == 1, done.output
    assert "new/a/notes.txt: not an image Pillow can read" in done.stderr
    assert "6 input(s) labelled by test-image version 1 (champion)" in done.stderr
    got = json.loads(done.stdout)
    x, _, _, unreadable, _ = load_folder(Path("new"), 28, 1)
    assert len(x) == 6 and len(unreadable) == 1
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    names, pixels, _ = model_inputs([Path("new")], params, served.unwrap_python_model())
    assert np.array_equal(pixels, x[:, 0])  # ingest's pixels, in the layout the signature promises
    assert got == [{"input": f"new/{c}/{i}.jpg", "label": label}
                   for (c, i), label in zip([(c, i) for c in "ab" for i in range(3)], served.predict(x[:, 0]))]


def test_a_champion_that_cannot_take_the_current_data_is_kept_with_the_reason(env: Path) -> None:
    """Greyscale before, colour now: the champion cannot score the current test split. The gate
    cannot compare, so the alias stays (its clients send greyscale) and the report says why in a
    line, with the command that moves it anyway; the stage does not fail."""
    import mlflow

    from transferline import promotion
    from transferline.image import register as register_stage

    params = make_params(env)
    write_inputs(channels=1)
    register_stage.run(params, params.paths)
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "champion", "1")
    write_inputs(channels=3)
    assert register_stage.run(params, params.paths)["version"] == "2"
    x = np.random.default_rng(0).integers(0, 256, size=(30, 3, 28, 28), dtype=np.uint8)
    test = promotion.TestSet(x, [CLASSES[i % 3] for i in range(30)], "data/split/target.npz")
    report = promotion.run_gate(params, test, "2")
    assert report["decision"] == "kept" and report["champion_after"] == "1"
    assert report["reason"].startswith("the champion (version 1) cannot take the current test split")
    assert "does not match expected shape" in report["reason"] and "--force --version 2" in report["reason"]
    assert len(report["reason"]) < 600  # not the whole input array, as MLflow prints it
    assert report["champion"] == {"version": "1"} and set(report["challenger"]) == {"version", "accuracy", "macro_f1"}
    assert mlflow.MlflowClient().get_model_version(MODEL_NAME, "2").tags["promote.decision"] == "kept"
