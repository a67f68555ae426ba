"""The CLI's options: `run`, `check` and `deploy` take no params file (every DVC
stage reads params.yaml, so another file would train on values dvc.lock never
records, or schedule runs by values no run reads)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_raw_params


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its sha256: what a command may not touch."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args", [
    ["run", "--params", "other.yaml"],
    ["run", "--modality", "text", "--params", "other.yaml"],  # refused before the modality is written
    ["check", "--params", "other.yaml"],
    ["deploy", "--params", "other.yaml"],
])
def test_run_check_deploy_refuse_a_params_file(tmp_path, args):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw_params(), sort_keys=False))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(tiny_raw_params(finetune={"lr": 0.5}), sort_keys=False))
    before = snapshot(tmp_path)
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-m", "transferline.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "No such option: --params" in done.stderr
    assert snapshot(tmp_path) == before  # nothing written: no .transferline/, no data/, params.yaml as it was
