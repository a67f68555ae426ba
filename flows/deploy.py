"""Register the pipeline and the check as deployments on a Prefect server.

By default both run from this project folder (a local source: the worker
changes into it). With a git source (`transferline deploy --from-git URL@REF`)
a worker with nothing on disk runs them: Prefect's pull steps clone the
repository at the commit, install the commit's locked requirements into the
worker's environment, and pull data and checkpoints from the DVC remote.
Either way: the process work pool and cron schedules of params.yaml
`orchestrate`, and one run at a time per deployment (Prefect's deployment
concurrency limit; further runs wait in the queue). Needs PREFECT_API_URL
pointing at a running `prefect server`.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from transferline.config import OrchestrateParams

# flow name -> entrypoint (relative to the project root)
ENTRYPOINTS = {"transferline": "flows/pipeline.py:pipeline", "transferline-check": "flows/check.py:check"}


class DeployError(RuntimeError):
    """The server or the work pool is not there; the message says how to fix it."""


# Where the pull steps leave the requirements: git-ignored, so the run's lineage sees a clean tree.
REQUIREMENTS = ".transferline/requirements.txt"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")


@dataclass(frozen=True)
class GitSource:
    """A repository URL and the commit (pinned) or branch (followed) a deployed run clones."""

    url: str
    commit: str | None = None
    branch: str | None = None


def parse_git_source(value: str, root: Path) -> GitSource:
    """`URL@REF` (a commit sha pins, a branch is followed) or `URL` (this checkout's HEAD commit)."""
    url, _, ref = value.rpartition("@")
    # the last @ splits off a ref only if what stands before it is a URL with a path
    # (not the user of git@host:org/repo.git or ssh://git@host/repo.git)
    if not url or not ref or ":" in ref or "/" not in url.split("://")[-1]:
        url, ref = value, ""
    if not ref:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
        if head.returncode != 0:
            raise DeployError(f"--from-git {value}: no @REF given and {root} has no git commit to pin; "
                              "commit first or name one: --from-git URL@COMMIT")
        return GitSource(url, commit=head.stdout.strip())
    if _SHORT_SHA.match(ref):  # git fetches a commit by its full sha only
        raise DeployError(f"--from-git {value}: {ref!r} looks like a short commit sha; give all 40 hex digits "
                          f"(git rev-parse {ref})")
    return GitSource(url, commit=ref) if _SHA.match(ref) else GitSource(url, branch=ref)


def pull_steps(src: GitSource) -> list[dict]:
    """Prefect pull steps: clone, install the locked requirements, pull the DVC outputs.

    The worker's own Python runs the flow, so the commit's lock is installed into it
    (uv exports the lock; pip installs what is missing or different). `dvc pull
    --allow-missing`: a first run has nothing to pull yet."""
    clone = {"id": "clone", "repository": src.url}
    clone.update({"commit_sha": src.commit} if src.commit else {"branch": src.branch})
    here = "{{ clone.directory }}"
    return [
        {"prefect.deployments.steps.git_clone": clone},
        {"prefect.deployments.steps.run_shell_script": {
            "directory": here, "script": f"uv export --frozen --no-dev --no-emit-project --no-hashes --quiet "
                                        f"--output-file {REQUIREMENTS}"}},
        {"prefect.deployments.steps.pip_install_requirements": {"directory": here,
                                                                 "requirements_file": REQUIREMENTS}},
        {"prefect.deployments.steps.run_shell_script": {"directory": here, "script": "dvc pull --allow-missing"}},
    ]


def git_storage(src: GitSource):
    """Prefect's GitRepository whose pull steps are ours (clone, install, `dvc pull`).

    `Flow.from_source` clones it once here to read the entrypoint; `deploy` stores
    `to_pull_step()` (which may be a list) as the deployment's pull steps."""
    from prefect.runner.storage import GitRepository

    class WithSteps(GitRepository):
        def to_pull_step(self) -> list[dict]:
            return pull_steps(src)

    return WithSteps(url=src.url, commit_sha=src.commit, branch=src.branch, pull_interval=None)


def work_pool_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    import httpx

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            return False
        except httpx.HTTPError as err:
            raise DeployError(f"cannot reach the Prefect server at {client.api_url} ({err}); is "
                              "`prefect server start` running and PREFECT_API_URL right?") from None
    return True


def deploy(cfg: OrchestrateParams, root: Path, name: str, git: GitSource | None = None) -> dict[str, UUID]:
    """Create or update `transferline/<name>` and `transferline-check/<name>`; return their ids.

    The flows take no params file: a deployed run reads the project's params.yaml (of
    the folder, or of the commit it cloned), as DVC does.
    """
    from prefect import Flow
    from prefect.schedules import Cron

    if not work_pool_exists(cfg.work_pool):
        raise DeployError(f"work pool {cfg.work_pool!r} (orchestrate.work_pool) does not exist on the server; "
                          f"create it: prefect work-pool create {cfg.work_pool} --type process")
    crons = {"transferline": cfg.pipeline_cron, "transferline-check": cfg.check_cron}
    ids = {}
    for flow_name, entrypoint in ENTRYPOINTS.items():
        cron = crons[flow_name]
        storage = str(root.resolve()) if git is None else git_storage(git)
        source = Flow.from_source(source=storage, entrypoint=entrypoint)
        ids[f"{flow_name}/{name}"] = source.deploy(
            name=name,
            work_pool_name=cfg.work_pool,
            schedules=[Cron(cron, timezone=cfg.timezone)] if cron else [],
            concurrency_limit=1,  # a second run of the same deployment waits for the first
            tags=["transferline"],
            print_next_steps=False,
            ignore_warnings=True,  # the process-pool hint to use .serve: a worker is the point here
        )
    return ids
