"""One run at a time per repository: the lock between two real processes,
and the retry/report policies the flows apply."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest



HOLD = """
import sys, time
from transferline.runlock import run_lock
with run_lock(0):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""

TAKE = """
import sys, time
from transferline.runlock import RunLockBusy, run_lock
t0 = time.monotonic()
try:
    with run_lock(float(sys.argv[1]), poll=0.1):
        print(f"got it after {time.monotonic() - t0:.1f} s")
except RunLockBusy as err:
    print(err)
    sys.exit(1)
"""


def _python(code: str, *args: str, cwd: Path, wait: bool = True):
    cmd = [sys.executable, "-c", code, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_second_process_exits_or_waits_for_the_lock(tmp_path):
    holder = _python(HOLD, "3", cwd=tmp_path, wait=False)
    assert holder.stdout.readline().strip() == "held"
    refused = _python(TAKE, "0", cwd=tmp_path)
    assert refused.returncode == 1
    assert f"another transferline run holds the lock (pid {holder.pid})" in refused.stdout
    waited = _python(TAKE, "30", cwd=tmp_path)  # waits until the holder lets go
    assert waited.returncode == 0 and waited.stdout.startswith("got it after"), waited.stdout + waited.stderr
    assert holder.wait(timeout=30) == 0
    assert _python(TAKE, "0", cwd=tmp_path).returncode == 0  # free again


def test_lock_is_reentrant_within_a_process(tmp_path, monkeypatch):
    from transferline.runlock import run_lock

    monkeypatch.chdir(tmp_path)
    with run_lock(0), run_lock(0):  # the CLI takes it, then the flow it starts
        assert (tmp_path / ".transferline/run.lock").read_text().startswith("pid ")
    assert _python(TAKE, "0", cwd=tmp_path).returncode == 0


def test_retries_with_backoff_only_where_io_can_fail(tiny_params):
    from flows.policy import push_options, stage_options

    cfg = tiny_params.orchestrate
    fetch = stage_options("ingest", cfg)
    assert fetch["retries"] == cfg.retries == 2
    assert fetch["retry_delay_seconds"] == [cfg.retry_delay_seconds, 2 * cfg.retry_delay_seconds]
    assert fetch["timeout_seconds"] == cfg.fetch_timeout_seconds
    assert stage_options("register", cfg)["timeout_seconds"] == cfg.registry_timeout_seconds
    assert push_options(cfg)["timeout_seconds"] == cfg.push_timeout_seconds
    assert stage_options("validate", cfg) == {} and stage_options("finetune", cfg) == {}
    # what the flow builds for ingest: a Prefect task carrying those options
    from flows.pipeline import run_stage

    task = run_stage.with_options(name="ingest", **fetch)
    assert (task.retries, task.retry_delay_seconds, task.timeout_seconds) == (2, [10.0, 20.0], 1800.0)


@pytest.mark.parametrize("values,needle", [
    ({"pipeline_cron": "every night"}, "orchestrate.pipeline_cron"),
    ({"timezone": "Mars/Olympus"}, "orchestrate.timezone"),
    ({"retries": -1}, "orchestrate.retries"),
])
def test_bad_orchestrate_values_name_the_key(values, needle):
    from conftest import tiny_raw_params
    from transferline.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match=needle.replace(".", r"\.")):
        parse_params(tiny_raw_params(orchestrate=values))


def test_report_shows_the_gate_decision_when_there_is_one(tmp_path, monkeypatch):
    from flows import report

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/metrics.json").write_text(json.dumps({
        "finetune": {"accuracy": 0.9, "macro_f1": 0.89}, "scratch": {"accuracy": 0.8, "macro_f1": 0.79},
        "transfer_gain": {"accuracy": 0.1, "macro_f1": 0.1}}))
    stages = ["ingest", "validate", "register"]
    results = [{"stage": "ingest", "ran": False, "seconds": 1.0}, {"stage": "validate", "ran": True, "seconds": 2.0},
               {"stage": "register", "ran": True, "seconds": 3.0, "restored": True}]
    link = report.mlflow_link("http://127.0.0.1:5000", "1", "abc")
    text = report.markdown(stages, results, link, 6.0)
    assert "ran: validate, register" in text and "skipped: ingest" in text
    assert [r["status"] for r in report.stage_rows(stages, results, None)] == [
        "skipped (up to date)", "ran", "restored (DVC run cache)"]
    assert "**+0.1000**" in text and "Gate decision: no gate" in text
    assert "(http://127.0.0.1:5000/#/experiments/1/runs/abc)" in text
    (tmp_path / "reports/promote.json").write_text(json.dumps(
        {"decision": "promoted", "reason": "beats champion by 0.02",
         "challenger": {"version": "3", "accuracy": 0.93}, "champion": {"version": "2", "accuracy": 0.91}}))
    assert ("Gate decision: **promoted**: beats champion by 0.02 (challenger version 3 (accuracy 0.93); "
            "champion version 2 (accuracy 0.91))") in report.markdown(stages, results, link, 6.0)
    failed = report.markdown(stages, results[:1], link, 2.0, "stage 'validate' failed: bad.png", "validate")
    assert "FAILED" in failed and "bad.png" in failed and "failed / not reached: validate, register" in failed
    rows = report.stage_rows(stages, results[:1], "validate")
    assert [r["status"] for r in rows] == ["skipped (up to date)", "failed", "not reached"]
