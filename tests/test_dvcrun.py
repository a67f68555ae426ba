"""The stale plan the flow asks DVC for once per run: which stages must be
looked at again, on a real three-stage DVC project (shell commands, no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml
from dvc.exceptions import NotDvcRepoError

from transferline.dvcrun import repro_stage, stale_plan, stale_plan_started

# a -> b (b reads a's out); c stands alone and reads a params value
DVC_YAML = {"stages": {
    "a": {"cmd": "cut -c1-3 in.txt > a.txt", "deps": ["in.txt"], "outs": ["a.txt"]},
    "b": {"cmd": "cp a.txt b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    "c": {"cmd": "echo ${c.value} > c.txt", "params": ["c.value"], "outs": ["c.txt"]},
}}


def dvc_project(root: Path) -> Path:
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (root / "params.yaml").write_text("c:\n  value: 1\n")
    (root / "in.txt").write_text("abcdef\n")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "repro", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def test_plan_names_stale_stages_and_what_lies_upstream(tmp_path, monkeypatch):
    root = dvc_project(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    plan = stale_plan(root)
    assert plan.stale == {}
    assert plan.upstream == {"a": set(), "b": {"a"}, "c": set()}
    assert not any(plan.must_check(s, ran=set()) for s in "abc")  # a no-op run starts no process

    # a's input changes, but not the part a keeps: a is stale; b must be looked at once a has run
    (root / "in.txt").write_text("abcxyz\n")
    plan = stale_plan(root)
    assert list(plan.stale) == ["a"]
    assert plan.must_check("a", ran=set()) and not plan.must_check("c", ran=set())
    assert not plan.must_check("b", ran=set()) and plan.must_check("b", ran={"a"})
    monkeypatch.chdir(root)
    assert repro_stage("a").ran
    assert not repro_stage("b").ran  # b's input is the same: DVC itself skips it (correct, not just cheap)

    # a value change: only the stage that reads it
    (root / "params.yaml").write_text("c:\n  value: 2\n")
    assert list(stale_plan(root).stale) == ["c"]
    # a stage unknown to the plan (added after it was made) is always checked
    assert plan.must_check("d", ran=set())


def test_a_plan_started_in_its_own_process_is_the_same_plan(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    root = dvc_project(tmp_path / "project")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    (root / "in.txt").write_text("abcxyz\n")
    with stale_plan_started(root) as answer:
        started = answer()
    assert started == stale_plan(root)
    assert list(started.stale) == ["a"] and started.upstream["b"] == {"a"}
    # where that process fails, the answer is asked again here and DVC's own error is raised
    with stale_plan_started(tmp_path) as answer, pytest.raises(NotDvcRepoError):
        answer()
    # never asked: the process is ended and reaped, not left behind (a child an earlier test in the
    # same pytest process left running is not ours: the full suite has one)
    before = {p.pid for p in psutil.Process().children()}
    with stale_plan_started(root):
        started_here = {p.pid for p in psutil.Process().children()} - before
        assert started_here
    assert not {p.pid for p in psutil.Process().children()} & started_here
