"""The flow, dvc.yaml, params.yaml and tasks/ name the same stages, in the same order."""

from __future__ import annotations

import subprocess
import sys

import yaml

from conftest import ROOT
from flows.pipeline import STAGES, check_stage_order
from transferline.dvcrun import dag_stages


def test_flow_order_matches_dvc_yaml():
    assert tuple(dag_stages(ROOT / "dvc.yaml")) == STAGES
    check_stage_order()


def test_flow_order_is_a_topological_order_of_dvcs_graph():
    """Every stage's upstream stages (DVC's own graph) come earlier in the flow."""
    out = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=ROOT, capture_output=True, text=True, check=True)
    edges = [line.strip().rstrip(";").replace('"', "").split(" -> ") for line in out.stdout.splitlines() if "->" in line]
    assert len(edges) >= len(STAGES) - 1
    for upstream, downstream in edges:
        assert STAGES.index(upstream) < STAGES.index(downstream), (upstream, downstream)


def test_every_stage_has_a_module_and_every_params_section_is_used():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    used = set()
    for name, stage in spec.items():
        assert stage["cmd"] == f"python -m tasks.{name}"
        assert (ROOT / "tasks" / f"{name}.py").is_file()
        assert f"tasks/{name}.py" in stage["deps"]
        used |= {p.split(".")[0] for p in stage.get("params", [])}
    sections = {k for k, v in yaml.safe_load((ROOT / "params.yaml").read_text()).items() if isinstance(v, dict)}
    # `experiments` is read by the `transferline experiment` commands, not by a stage
    # `orchestrate` is read by the flows and `transferline deploy | check`
    assert sections - {"experiments", "orchestrate"} <= used, f"params sections no stage reads: {sections - used}"
