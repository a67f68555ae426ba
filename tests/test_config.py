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
    assert params.image.split.labels_per_class > 0
    assert params.model_name == params.image.register_.model_name
    assert params.text is None  # the other modality's values are neither read nor validated


@pytest.mark.parametrize(
    ("section", "values", "needle"),
    [
        ("pretrain", {"lr": -0.1}, "pretrain.image.lr"),
        ("pretrain", {"model": "resnet9000"}, "pretrain.image.model"),
        ("finetune", {"epochz": 3}, "finetune.image.epochz: unknown key"),
        ("split", {"labels_per_class": 5000}, "split.image.labels_per_class"),
        ("ingest", {"target": "imagenet"}, "ingest.image.target"),
        # the global batch is split evenly over the ranks: TINY's pretrain batch 64 over 3 processes is refused
        ("distributed", {"nproc_per_node": 3}, "pretrain.image.batch_size: 64 does not divide over 3 processes"),
        ("distributed", {"nnodes": 2}, "distributed.rdzv_endpoint"),
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
    from transferline.cli.main import app

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw_params(finetune={"lr": -1})))
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    assert "finetune.image.lr" in result.output
    assert not (tmp_path / "data" / "raw").exists()
    assert not (tmp_path / ".transferline").exists()


def test_a_value_outside_a_modality_sub_section_is_named():
    raw = tiny_raw_params()
    raw["finetune"]["lr"] = 0.1
    with pytest.raises(ParamsError, match=r"finetune.lr: unknown key \(values live under finetune.image or finetune.text\)"):
        parse_params(raw)


def test_only_the_active_modality_is_validated():
    raw = tiny_raw_params()
    raw["finetune"]["text"]["lr"] = -1  # a text value; the image run never reads it
    assert parse_params(raw).image.finetune.lr > 0
    raw["modality"] = "text"
    with pytest.raises(ParamsError, match="finetune.text.lr"):
        parse_params(raw)


def test_duplicate_keys_are_refused_with_their_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nmodality: image\nseed: 2\n")
    with pytest.raises(ParamsError, match=r"duplicate key 'seed' on lines 1 and 3"):
        load_params(path)


def test_to_raw_round_trips():
    params = parse_params(tiny_raw_params())
    assert parse_params(params.to_raw()) == params
