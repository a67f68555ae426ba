"""params.yaml loads into the typed schema; bad values fail naming the key."""

from __future__ import annotations

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from conftest import ROOT, tiny_raw_params
from transferline.config import ParamsError, load_params, parse_params


def test_repo_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.split.labels_per_class > 0
    assert params.register_.model_name


@pytest.mark.parametrize(
    ("section", "values", "needle"),
    [
        ("pretrain", {"lr": -0.1}, "pretrain.lr"),
        ("pretrain", {"model": "resnet9000"}, "pretrain.model"),
        ("finetune", {"epochz": 3}, "finetune.epochz: unknown key"),
        ("split", {"labels_per_class": 5000}, "split.labels_per_class"),
        ("ingest", {"target": "imagenet"}, "ingest.target"),
    ],
)
def test_bad_values_name_the_key(section, values, needle):
    with pytest.raises(ParamsError) as err:
        parse_params(tiny_raw_params(**{section: values}))
    assert needle in str(err.value)


def test_unknown_top_level_section():
    raw = tiny_raw_params()
    raw["finetuning"] = {"lr": 1}
    with pytest.raises(ParamsError, match="finetuning: unknown key"):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_cli_run_refuses_bad_params_before_any_work(tmp_path, monkeypatch):
    from transferline.cli import app

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw_params(finetune={"lr": -1})))
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    assert "finetune.lr" in result.output
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / ".transferline").exists()
