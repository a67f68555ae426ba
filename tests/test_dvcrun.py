"""The stale plan the flow asks DVC for once per run (which stages must be looked
at again) and the DVC process that then reproduces them, on a real three-stage
DVC project (shell commands, no torch)."""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dvc.exceptions import NotDvcRepoError

from transferline import dvcrun
from transferline.dvcrun import DvcProcess, StageFailed, prestart, repro_stage, stale_plan, take_prestarted

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


def set_cmd(root: Path, stage: str, cmd: str) -> None:
    """Give `stage` another command in dvc.yaml (after the project's first repro)."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"][stage]["cmd"] = cmd
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec))


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
    with DvcProcess(root, plan=True) as dvc:
        started = dvc.plan()
    assert started == stale_plan(root)
    assert list(started.stale) == ["a"] and started.upstream["b"] == {"a"}
    # where that process fails, the answer is asked again here and DVC's own error is raised
    with DvcProcess(tmp_path, plan=True) as dvc, pytest.raises(NotDvcRepoError):
        dvc.plan()
    # never asked: the process is ended and reaped, not left behind (a child an earlier test in the
    # same pytest process left running is not ours: the full suite has one)
    before = {p.pid for p in psutil.Process().children()}
    with DvcProcess(root, plan=True):
        started_here = {p.pid for p in psutil.Process().children()} - before
        assert started_here
    assert not {p.pid for p in psutil.Process().children()} & started_here


def test_a_process_prestarted_by_the_cli_is_taken_once_and_ended_with_the_run(tmp_path, monkeypatch):
    """`transferline run` starts the DVC process before Prefect loads; the flow takes it, or starts
    its own where nothing was prestarted (a worker's run)."""
    root = dvc_project(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    (root / "in.txt").write_text("abcxyz\n")
    assert take_prestarted() is None
    with prestart(None):
        process, changed = take_prestarted()
        assert take_prestarted() is None  # once
        assert changed == []  # not a project made by `transferline init`: nothing to refresh
        assert list(process.plan().stale) == ["a"]
        assert process.repro("a").ran
        proc = process.proc
    assert process.proc is None and proc.poll() is not None  # ended with the run
    with prestart(None):  # never taken (the flow failed to start): ended all the same
        [(process, _)] = dvcrun._prestarted
        proc = process.proc
    assert proc.poll() is not None and take_prestarted() is None


def test_one_dvc_process_reproduces_stage_after_stage(tmp_path, monkeypatch):
    root = dvc_project(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    set_cmd(root, "c", "echo ${c.value} $STAGE_RUN > c.txt")  # the stage sees its own environment
    (root / "in.txt").write_text("xyzdef\n")
    lines: list[str] = []
    with DvcProcess(plan=True) as dvc:
        assert list(dvc.plan().stale) == ["a", "c"]
        pid = dvc.proc.pid
        assert dvc.repro("a", on_line=lines.append).ran
        assert dvc.repro("b").ran  # a's out changed: DVC reruns b
        assert not dvc.repro("a").ran  # DVC itself skips it now
        assert dvc.repro("c", env={"STAGE_RUN": "run-1"}).ran
        assert dvc.repro("c", env={"STAGE_RUN": "run-2"}, force=True).ran
        assert dvc.proc.pid == pid  # one process for all of it
        (root / "in.txt").unlink()
        with pytest.raises(StageFailed, match="stage 'a' failed") as failed:
            dvc.repro("a")
        assert "in.txt" in str(failed.value)  # DVC's own reason
        assert dvc.proc.pid == pid  # a failed stage leaves the process serving
    assert "Running stage 'a':" in lines and "> cut -c1-3 in.txt > a.txt" in lines
    assert (root / "b.txt").read_text() == "xyz\n" and (root / "c.txt").read_text() == "1 run-2\n"
    # what DVC recorded for c is the forced run's (a's failed run took a.txt away: b is stale now)
    assert subprocess.run([sys.executable, "-m", "dvc", "status", "c"], capture_output=True, text=True,
                          check=True).stdout.strip() == "Data and pipelines are up to date."


def test_the_dvc_process_parses_a_text_once_and_sees_every_edit(tmp_path, monkeypatch):
    """transferline.dvcyaml: DVC's parser answers a text it parsed before from a copy; an edit is a
    new text, so DVC reruns the stage whose value changed, in the same process."""
    import importlib

    from dvc.utils.serialize import _yaml, load_yaml

    from transferline.dvcyaml import HOLDERS, parse_once

    for name in HOLDERS:  # restored after the test: the patch is for the DVC process alone
        monkeypatch.setattr(importlib.import_module(name), "parse_yaml", _yaml.parse_yaml)
    parse_once()
    parse_once()  # once is enough; a second call changes nothing
    kept = _yaml.parse_yaml.kept
    params = tmp_path / "params.yaml"
    params.write_text("c:\n  value: 1\n")
    first = load_yaml(params)
    first["c"]["value"] = 99  # DVC may change what it gets: the kept parse stays as read
    assert load_yaml(params) == {"c": {"value": 1}}
    assert kept.cache_info().misses == 1 and kept.cache_info().hits == 1
    params.write_text("c:\n  value: 2\n")
    assert load_yaml(params) == {"c": {"value": 2}} and kept.cache_info().misses == 2

    (tmp_path / "project").mkdir()
    root = dvc_project(tmp_path / "project")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    with DvcProcess() as dvc:
        assert not dvc.repro("c").ran
        (root / "params.yaml").write_text("c:\n  value: 2\n")
        assert dvc.repro("c").ran and (root / "c.txt").read_text() == "2\n"
        assert not dvc.repro("c").ran
        (root / "params.yaml").write_text("c:\n  value: 3\n")
        assert dvc.repro("c").ran and (root / "c.txt").read_text() == "3\n"


def test_the_dvc_process_rewrites_dvc_lock_byte_for_byte_as_dvc_does(tmp_path, monkeypatch):
    """transferline.dvcyaml: the DVC process reads dvc.lock with DVC's safe parser when it rewrites
    it; the file it writes is the one DVC's round trip writes (values that YAML could read
    otherwise included), and dvc.yaml keeps the round trip (its comments survive)."""
    import shutil

    from dvc import dvcfile
    from dvc.utils.serialize import _yaml

    from transferline.dvcyaml import emitted_alike, locks_rewritten_from_safe_parse

    (tmp_path / "project").mkdir()
    root = dvc_project(tmp_path / "project")
    odd = {"lr": 3e-4, "tiny": 1.0e-12, "big": 10**20, "flag": "yes", "date": "2026-12-03", "null": "null",
           "octal": "0123", "empty": {}, "items": [], "text": "a: b # not a comment"}
    (root / "params.yaml").write_text(yaml.safe_dump({"c": {"value": 1, **odd}}))
    set_cmd(root, "c", "echo ${c.value} ${c.lr} > c.txt")
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    spec["stages"]["c"]["params"] = [{"params.yaml": ["c"]}]  # the whole section, every odd value
    (root / "dvc.yaml").write_text("# people comment dvc.yaml\n" + yaml.safe_dump(spec))
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    for stage in ("c", "a"):  # c's entry, odd values and all, is read back and written again after a
        subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "-f", stage], cwd=copy, check=True,
                       capture_output=True)
    expected = (copy / "dvc.lock").read_text()  # DVC alone, from a shell

    monkeypatch.setattr(_yaml, "parse_yaml_for_update", _yaml.parse_yaml_for_update)  # restored after the test
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    with DvcProcess() as dvc:
        assert dvc.repro("c", force=True).ran and dvc.repro("a", force=True).ran
    assert (root / "dvc.lock").read_text() == expected and "flag: yes" in expected and "tiny: 1e-12" in expected
    assert emitted_alike(_yaml.parse_yaml(expected, "dvc.lock"))  # the DVC process wrote it with libyaml's emitter
    locks_rewritten_from_safe_parse()
    locks_rewritten_from_safe_parse()  # once is enough
    with dvcfile.modify_yaml(root / "dvc.lock") as data:
        assert type(data["stages"]) is dict  # the safe parse (the round trip's is a CommentedMap)
    assert (root / "dvc.lock").read_text() == expected
    with dvcfile.modify_yaml(root / "dvc.yaml") as data:  # the round trip, for dvc.yaml
        assert type(data["stages"]) is not dict
        data["stages"]["b"]["cmd"] = "cp a.txt  b.txt"
    assert (root / "dvc.yaml").read_text().startswith("# people comment dvc.yaml\n")


def test_plain_data_is_dumped_in_c_as_the_round_trip_dumps_it(monkeypatch):
    """transferline.dvcyaml.plain_dumps_in_c: DVC's YAML dump, in the DVC process, goes through
    libyaml's emitter only for data both emitters write byte for byte the same; thousands of
    generated values (YAML's look-alikes of numbers, booleans and nulls, quotes, long and
    non-ASCII strings, nesting) are dumped both ways, and the rest keeps the round trip. What the
    C dump wrote is kept for the DVC process's next read of that text: DVC's parser reads the same."""
    import io
    import random
    import string

    from dvc.utils.serialize import _yaml

    from ruamel.yaml import YAML

    from transferline.dvcyaml import WRITTEN, emitted_alike, plain_dumps_in_c

    monkeypatch.setattr(_yaml, "_dump", _yaml._dump)  # restored after the test
    round_trip = _yaml._dump
    plain_dumps_in_c()
    plain_dumps_in_c()  # once is enough
    assert _yaml._dump is not round_trip and _yaml._dump.in_c

    def dumped(dump, data) -> str:
        stream = io.StringIO()
        dump(data, stream)
        return stream.getvalue()

    rnd = random.Random(15)
    letters = string.printable.translate({ord(c): None for c in "\n\r\x0b\x0c'"})  # those: in `looks`
    looks = ["yes", "no", "on", "off", "null", "~", "true", "1e3", "0o17", "0x1F", "1_000", "1:20", ".5", "-", "?",
             "- a", "a:", "#", "'", '"', "&a", "*a", "!t", "%", "@", "`", "|", ">", "=", "<<", "0123", "nan", ".inf",
             "2026-12-03", " ", "é", "中", "\U0001F600", "a\nb", "x " * 50]

    def text() -> str:
        if rnd.random() < 0.3:
            return rnd.choice(looks)
        size = rnd.choice([1, 2, 5, 10, 30, 60])
        return "".join(rnd.choice(letters) if rnd.random() < 0.95 else rnd.choice(looks) for _ in range(size))

    def value(depth: int = 0):
        pick = rnd.random()
        if depth < 3 and pick < 0.2:  # DVC builds a stage's lock entry as an OrderedDict
            mapping = {text(): value(depth + 1) for _ in range(rnd.randint(0, 4))}
            return collections.OrderedDict(mapping) if rnd.random() < 0.5 else mapping
        if depth < 3 and pick < 0.3:
            return [value(depth + 1) for _ in range(rnd.randint(0, 4))]
        if pick < 0.45:
            return rnd.choice([0, 1, -5, 10**20, True, False, None, 0.1, 3e-4, 1e-12, -0.0, 1e20, float("inf")])
        return text()

    alike = 0
    for _ in range(3000):
        data = {"stages": {text(): value() for _ in range(3)}}
        written = dumped(_yaml._dump, data)
        assert written == dumped(round_trip, data), data
        if emitted_alike(data):  # kept for the next read: exactly what DVC's parser reads in the text
            alike += 1
            assert WRITTEN[written] == YAML(typ="safe").load(written)
    assert 300 < alike < 2700  # both kinds, many of each
    lock = Path(__file__).parents[1] / "dvc.lock"  # the project's own lock: libyaml's emitter, the same bytes
    assert emitted_alike(_yaml.parse_yaml(lock.read_text(), lock)) and dumped(_yaml._dump, _yaml.parse_yaml(
        lock.read_text(), lock)) == lock.read_text()
    assert not emitted_alike({"a": None}) and not emitted_alike({"a": "é"}) and not emitted_alike({"a": "x" * 80})


def test_a_lock_the_dvc_process_wrote_is_read_back_without_parsing(tmp_path, monkeypatch):
    """transferline.dvcyaml: what the C dump wrote is what DVC reads at the next stage, unparsed."""
    import importlib

    from dvc.utils.serialize import _yaml, dump_yaml, load_yaml
    from ruamel.yaml import YAML

    from transferline.dvcyaml import HOLDERS, parse_once, plain_dumps_in_c

    for name in HOLDERS:  # restored after the test: the patches are for the DVC process alone
        monkeypatch.setattr(importlib.import_module(name), "parse_yaml", _yaml.parse_yaml)
    monkeypatch.setattr(_yaml, "_dump", _yaml._dump)
    parse_once()
    plain_dumps_in_c()
    lock = tmp_path / "dvc.lock"
    data = {"schema": "2.0", "stages": {"a": collections.OrderedDict(cmd="echo 1", deps=[{"path": "in.txt", "size": 7}])}}
    dump_yaml(lock, data)
    monkeypatch.setattr(YAML, "load", lambda *_: pytest.fail("parsed again"))
    assert load_yaml(lock) == data
    lock.write_text(lock.read_text() + "# an edit\n")  # any other text is parsed, as always
    with pytest.raises(pytest.fail.Exception, match="parsed again"):
        load_yaml(lock)


def test_a_stage_dvc_restores_from_its_run_cache_is_told_apart(tmp_path, monkeypatch):
    """Inputs that ran before: DVC checks the stage's outputs out of its run cache instead of running
    it. It counts as run (DVC reproduced it), and the result says it was restored, not run."""
    from transferline.dvcrun import RESTORED, outcome

    root = dvc_project(tmp_path)  # ran a on "abcdef"
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    with DvcProcess() as dvc:
        (root / "in.txt").write_text("xyzdef\n")
        changed = dvc.repro("a")
        (root / "in.txt").write_text("abcdef\n")  # back to the first run's input
        back = dvc.repro("a")
    assert (changed.ran, changed.restored) == (True, False)
    assert (back.ran, back.restored) == (True, True)
    assert (root / "a.txt").read_text() == "abc\n"
    assert [outcome(r.ran, r.restored) for r in (changed, back)] == ["ran", RESTORED]
    assert outcome(False) == "skipped (up to date)"


def test_an_interrupted_stage_is_stopped_with_its_dvc_process_and_the_next_starts_another(tmp_path, monkeypatch):
    root = dvc_project(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    set_cmd(root, "c", "echo started; sleep 60; echo ${c.value} > c.txt")

    dvc = DvcProcess()
    first = dvc.proc
    stage: list[psutil.Process] = []

    def in_session() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name"]):
            with contextlib.suppress(OSError):  # gone meanwhile
                if os.getsid(proc.pid) == first.pid and proc.pid != first.pid:
                    found.append(proc)
        return found

    def interrupt(line: str) -> None:
        if line == "started":  # the stage runs: its shell, and soon its sleep, in the DVC process's session
            deadline = time.monotonic() + 10
            while not any(p.info["name"] == "sleep" for p in stage) and time.monotonic() < deadline:
                stage[:] = in_session()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dvc.repro("c", on_line=interrupt, force=True)
    assert first.poll() is not None and dvc.proc is None
    assert any(p.info["name"] == "sleep" for p in stage), stage
    _, alive = psutil.wait_procs(stage, timeout=5)
    assert not alive, f"the stage outlived its DVC process: {alive}"
    assert dvc.repro("a", force=True).ran  # a new process for the next stage
    assert dvc.proc is not None and dvc.proc.pid != first.pid
    dvc.close()
