"""Data-triggered runs: re-read the sources, let DVC say whether anything
changed, and run the pipeline only then.

The built-in sources are pinned artifacts: the check re-fetches each one
(from the download cache, else the index) and verifies its sha256. A folder
target is a dependency of the ingest stage, so DVC hashes it. `dvc status`
(DVC's Python API, in this process) then compares every stage's deps and
params with dvc.lock: DVC alone decides staleness. Nothing changed -> "nothing to do" in seconds; anything changed ->
the full pipeline as a subflow (a new registered version: a challenger).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import pipeline
from flows.policy import FETCH_STAGES, stage_options
from transferline import runguard
from transferline.artifacts import Artifact, fetch_member
from transferline.config import Params, load_params
from transferline.dvcrun import stale_plan
from transferline.plan import describe
from transferline.project import prepare
from transferline.runlock import run_lock

NOTHING_TO_DO = "nothing to do"


def pinned_artifacts(params: Params) -> list[Artifact]:
    """The built-in artifacts the active modality's params read."""
    if params.modality == "text":
        from transferline.config.text import ROTTEN_TOMATOES

        return [ROTTEN_TOMATOES] if params.text.ingest.source == "rotten-tomatoes" else []
    from transferline.config.image import BUILTIN_IMAGE_SETS

    cfg = params.image.ingest
    return [BUILTIN_IMAGE_SETS[n].artifact for n in (cfg.source, cfg.target) if n in BUILTIN_IMAGE_SETS]


@task(name="fetch-sources")
def reread_sources(artifacts: list[Artifact]) -> list[str]:
    """Re-fetch every pinned built-in artifact the params use and verify its sha256."""
    for artifact in artifacts:
        for member in artifact.members:
            fetch_member(artifact, member)  # raises on a sha256 mismatch
    return [a.requirement for a in artifacts]


@task(name="dvc-status")
def dvc_changes() -> dict:
    """`dvc status` (DVC's Python API, no subprocess): stages whose deps, params or outs differ
    from dvc.lock ({} = none). Here, unlike the run (transferline.dvcrun.DvcProcess),
    nothing runs beside it: asked in a process of its own it made the check slower (4.9-7.0 s
    vs 4.5-5.2 s, four interleaved pairs on 2 cores)."""
    return stale_plan().stale


@flow(name="transferline-check", log_prints=True)
def check(push_remote: bool = True) -> dict:
    """Run the pipeline only if the sources or params changed since the last run."""
    from transferline.env import apply_env_defaults

    apply_env_defaults()
    runguard.note_flow_run()
    logger = get_run_logger()
    t0 = time.perf_counter()
    params = load_params()
    with run_lock(params.orchestrate.lock_wait_seconds):
        sources = reread_sources.with_options(**stage_options(FETCH_STAGES[0], params.orchestrate))(pinned_artifacts(params))
        prepare(update_imports=True)  # a project made by `transferline init`: new code, new or re-imported data
        changes = dvc_changes()
        if not changes:
            seconds = round(time.perf_counter() - t0, 2)
            logger.info("%s: sources %s unchanged and every stage up to date (checked in %.2f s)",
                        NOTHING_TO_DO, ", ".join(sources), seconds)
            create_markdown_artifact(
                f"# transferline check: {NOTHING_TO_DO}\n\nSources re-read ({', '.join(sources) or 'none built in'}); "
                f"`dvc status` reports every stage up to date. Checked in {seconds} s.\n",
                key="transferline-check", description="Data-triggered check")
            return {"action": NOTHING_TO_DO, "changes": [], "seconds": seconds}
        why = describe(changes)
        logger.info("changed since the last run: %s; running the pipeline", "; ".join(why))
        create_markdown_artifact("# transferline check: running the pipeline\n\nChanged since the last run:\n\n"
                                 + "\n".join(f"- {line}" for line in why) + "\n",
                                 key="transferline-check", description="Data-triggered check")
        summary = pipeline(push_remote=push_remote)
    return {"action": "ran", "changes": why, "pipeline": summary, "seconds": round(time.perf_counter() - t0, 2)}
