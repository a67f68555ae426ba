"""One lock around the promotion gate, whatever the tracking store.

MLflow aliases have no compare-and-set: two gates that both read champion
v1, both win against it and both move the alias leave it on whichever wrote
last. The gate therefore decides and moves under this lock and re-reads the
champion inside it.

Where the lock lives (params.yaml `promote.lock`; env TRANSFERLINE_PROMOTE_LOCK wins):
  auto               the tracking DB's own advisory lock when MLFLOW_TRACKING_URI is
                     postgresql://..., else a file lock next to the SQLite DB (or in
                     .transferline/ for an HTTP server: then set the variable to the
                     server's database so gates on other machines serialise too)
  postgresql://...   pg_advisory_lock on that database (scripts/mlflow-postgres.sh
                     prints it for its server)
  anything else      a lock file at that path (fcntl; one machine)
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from transferline.config import PromoteParams

log = logging.getLogger(__name__)

LOCK_ENV = "TRANSFERLINE_PROMOTE_LOCK"
POLL_S = 0.1


class LockTimeout(RuntimeError):
    """Another gate held the lock for longer than promote.lock_timeout_s."""


@dataclass
class Held:
    kind: str
    where: str
    waited_s: float = 0.0
    acquired_at: float = 0.0  # time.time(), to show in reports that gates did not overlap
    released_at: float | None = None
    extra: dict = field(default_factory=dict)

    def info(self) -> dict:
        return {"kind": self.kind, "where": self.where, "waited_s": round(self.waited_s, 3),
                "acquired_at": self.acquired_at, "released_at": self.released_at or time.time()}


def _is_postgres(uri: str) -> bool:
    return uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def resolve(cfg: PromoteParams) -> str:
    """The lock spec in force: env, params, or what `auto` means for the tracking URI."""
    import mlflow

    spec = os.environ.get(LOCK_ENV) or cfg.lock
    if spec != "auto":
        return spec
    uri = mlflow.get_tracking_uri()
    if _is_postgres(uri):
        return uri
    if uri.startswith("sqlite:///"):
        db = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return f"{db}.promote.lock"
    if uri.startswith(("http://", "https://")):
        log.warning("tracking server %s: the gate lock is a local file; set %s=postgresql://... (the server's "
                    "database) so gates on other machines serialise too", uri, LOCK_ENV)
    return ".transferline/promote.lock"


def _key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for one registered model."""
    digest = hashlib.sha256(f"transferline.promote:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _postgres_lock(dsn: str, name: str, timeout: float) -> Iterator[Held]:
    import psycopg2

    dsn = "postgresql:" + dsn.split(":", 1)[1]  # postgresql+psycopg2://... -> libpq's form
    where = dsn.rsplit("@", 1)[-1]
    t0 = time.perf_counter()
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error as err:
        raise RuntimeError(f"promotion lock: cannot connect to PostgreSQL at {where}: {err}".strip()) from None
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # A session-level advisory lock: held until unlocked or the connection drops
            # (a killed gate never leaves it behind).
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (_key(name),))
                if cur.fetchone()[0]:
                    break
                if time.perf_counter() - t0 > timeout:
                    raise LockTimeout(f"another promotion of {name} held the PostgreSQL advisory lock "
                                      f"on {where} for over {timeout:.0f} s")
                time.sleep(POLL_S)
            held = Held("postgres-advisory", where, time.perf_counter() - t0, time.time())
            try:
                yield held
            finally:
                held.released_at = time.time()
                cur.execute("SELECT pg_advisory_unlock(%s)", (_key(name),))
    finally:
        conn.close()


@contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[Held]:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.perf_counter() - t0 > timeout:
                    raise LockTimeout(f"another promotion held {path} for over {timeout:.0f} s") from None
                time.sleep(POLL_S)
        held = Held("file", str(path), time.perf_counter() - t0, time.time())
        try:
            yield held
        finally:
            held.released_at = time.time()
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def gate_lock(cfg: PromoteParams, name: str) -> Iterator[Held]:
    """Hold the promotion lock for model `name` (see the module docstring)."""
    spec = resolve(cfg)
    lock = _postgres_lock(spec, name, cfg.lock_timeout_s) if _is_postgres(spec) else _file_lock(
        Path(spec), cfg.lock_timeout_s)
    with lock as held:
        yield held
