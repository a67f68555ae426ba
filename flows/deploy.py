"""Register the pipeline and the check as deployments on a Prefect server.

Both run from this project folder (a local source: the worker changes into
it), on the process work pool and cron schedules of params.yaml
`orchestrate`. Needs PREFECT_API_URL pointing at a running `prefect server`.
"""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

from transferline.config import OrchestrateParams

# flow name -> entrypoint (relative to the project root)
ENTRYPOINTS = {"transferline": "flows/pipeline.py:pipeline", "transferline-check": "flows/check.py:check"}


class DeployError(RuntimeError):
    """The server or the work pool is not there; the message says how to fix it."""


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


def deploy(cfg: OrchestrateParams, root: Path, name: str) -> dict[str, UUID]:
    """Create or update `transferline/<name>` and `transferline-check/<name>`; return their ids.

    The flows take no params file: a deployed run reads the project's params.yaml, as DVC does.
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
        source = Flow.from_source(source=str(root.resolve()), entrypoint=entrypoint)
        ids[f"{flow_name}/{name}"] = source.deploy(
            name=name,
            work_pool_name=cfg.work_pool,
            schedules=[Cron(cron, timezone=cfg.timezone)] if cron else [],
            tags=["transferline"],
            print_next_steps=False,
            ignore_warnings=True,  # the process-pool hint to use .serve: a worker is the point here
        )
    return ids
