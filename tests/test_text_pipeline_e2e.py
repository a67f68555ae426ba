"""The text pipeline through the real flow in a fresh git + DVC project, switched
on with `transferline run --modality text`; the registered model classifies raw strings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import make_project
from test_pipeline_e2e import transferline
from text_helpers import small_starts, tiny_text_raw

pytestmark = pytest.mark.slow


def test_text_pipeline_end_to_end(tmp_path, shared_prefect):
    raw = tiny_text_raw(finetune={"starts": small_starts(epochs=3)})
    raw["modality"] = "image"  # the switch below turns it to text
    project = make_project(tmp_path / "proj", raw)

    result = transferline(project, "run", "--modality", "text")
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load((project / "params.yaml").read_text())["modality"] == "text"
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["n_test"] == 255 and 0.3 < metrics["finetune"]["accuracy"] <= 1.0
    assert "test accuracy: fine-tuned" in result.stderr
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    validate = json.loads((project / "reports/validate.json").read_text())
    assert validate["class_counts"]["fresh"] == 7368 and validate["length"]["words"]["median"] > 5

    info = json.loads(transferline(project, "status", "--json").stdout)
    assert info["champion"]["name"] == "transferline-text" and info["champion"]["version"] == "1"
    assert info["champion"]["metrics"]["test_accuracy"] == pytest.approx(metrics["finetune"]["accuracy"])

    # the registered model takes raw strings and returns labels
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{project}/.transferline/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/transferline-text@champion")
    texts = ["A triumph: moving, funny and beautifully made.", "A tedious, lifeless mess.", "ok"]
    labels = list(model.predict(texts))
    assert len(labels) == 3 and set(labels) <= {"fresh", "rotten"}
    assert list(model.predict(pd.DataFrame({"text": texts}))) == labels
    version = mlflow.MlflowClient().get_model_version("transferline-text", "1")
    assert version.tags["modality"] == "text" and "git.commit" in version.tags

    # `transferline predict` labels a .txt (a text a line) and a spreadsheet's ';' CSV with the champion
    (tmp_path / "new.txt").write_text("\n".join(texts[:2]) + "\n\n")
    (tmp_path / "new.csv").write_text("id;text\n1;" + texts[2] + "\n2;\n")
    done = transferline(project, "predict", str(tmp_path / "new.txt"), str(tmp_path / "new.csv"), "--json")
    assert done.returncode == 1 and f"{tmp_path / 'new.csv'} row 2: the text is missing" in done.stderr, done.stderr
    assert json.loads(done.stdout) == [{"input": f"{tmp_path / 'new.txt'} line {n}", "label": label}
                                       for n, label in zip((1, 2), labels)] + [
        {"input": f"{tmp_path / 'new.csv'} row 1", "label": labels[2]}]
