"""Pre-flight: what can be checked before any stage runs, in seconds, all at once.

`transferline run` and `check` call this after params.yaml validated and
before Prefect starts, so a missing server or remote is one message at
second 2, not a traceback at minute 3. The data source and weight files are
checked by the active modality (`transferline/<modality>/preflight.py`,
picked by name by the CLI); these are the checks every modality shares.
Each problem is one line naming the key or file and the fix.
"""

from __future__ import annotations

import configparser
import socket
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from transferline.config import TrackingParams

CONNECT_TIMEOUT_S = 3.0
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "postgres": 5432, "mysql": 3306}


class PreflightFailed(RuntimeError):
    """One or more pre-flight problems; the message lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("pre-flight found {} problem(s); nothing ran:\n".format(len(problems))
                         + "\n".join(f"  {p}" for p in problems))


def _reachable(host: str, port: int) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as err:
        return f"{host}:{port} does not answer ({err.strerror or err})"


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def tracking_problems(cfg: TrackingParams) -> list[str]:
    """The tracking store can be opened: an SQLite file that is a database, or a server that answers."""
    url = urlparse(cfg.uri)
    scheme = url.scheme.split("+")[0]
    if scheme == "sqlite":
        db = sqlite_file(cfg.uri)
        if db is None or not db.exists():
            return []  # created on first use
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
                conn.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as err:
            return [f"tracking.uri: {db} is not a readable SQLite database ({err}); move it aside "
                    f"(mv {db} {db}.bad) and run again: the run re-registers the current model from DVC"]
        return []
    if scheme in DEFAULT_PORTS:
        problem = _reachable(url.hostname or "localhost", url.port or DEFAULT_PORTS[scheme])
        return [f"tracking.uri: the tracking server {redacted(cfg.uri)} is unreachable: {problem}; start it "
                "or fix tracking.uri"] if problem else []
    if scheme in ("", "file"):
        return [f"tracking.uri: {cfg.uri!r} is a plain folder, which MLflow 3 refuses; use "
                "sqlite:///.transferline/mlflow.db or a server URL"]
    return []


def redacted(uri: str) -> str:
    url = urlparse(uri)
    return uri.replace(f"{url.password}@", "***@") if url.password else uri


def _dvc_config(root: Path) -> configparser.ConfigParser:
    """The project's DVC config, its local overrides read over it."""
    config = configparser.ConfigParser()
    config.read([root / ".dvc" / "config", root / ".dvc" / "config.local"])
    return config


def remote_problems(root: Path, config: configparser.ConfigParser) -> list[str]:
    """A default DVC remote is configured (the run pushes to it) and a local one can be written."""
    name = config.get("core", "remote", fallback=None)
    fix = "add one (dvc remote add -d storage /path/or/s3://bucket) or run with --no-push"
    if name is None:
        return [f".dvc/config: no default DVC remote to push data and checkpoints to; {fix}"]
    section = f"'remote \"{name}\"'"
    url = config.get(section, "url", fallback=None)
    if url is None:
        return [f".dvc/config: the default remote {name!r} has no url; {fix}"]
    if "://" not in url:  # a local folder: relative to .dvc/
        folder = (root / ".dvc" / url) if not Path(url).is_absolute() else Path(url)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir():
            return [f".dvc/config: remote {name!r} folder {url} cannot be created; fix it (dvc remote modify "
                    f"{name} url ...) or run with --no-push"]
    return []


def scm_problems(root: Path, config: configparser.ConfigParser) -> list[str]:
    """DVC keeps its pipeline in a git work tree (unless core.no_scm): elsewhere every `dvc
    status` fails, and the run did so inside Prefect with a task traceback. A `.git` here or
    above is enough to know (no git process on every run's start)."""
    if config.getboolean("core", "no_scm", fallback=False):
        return []
    here = root.resolve()
    if any((folder / ".git").exists() for folder in (here, *here.parents)):
        return []
    return [f"{here} is not in a git repository, which DVC needs; make it one "
            "(git init && git add -A && git commit -m start) or run dvc config core.no_scm true"]


def shared_problems(tracking: TrackingParams, push: bool, root: Path = Path(".")) -> list[str]:
    """Every problem with the repository, servers and stores a run needs."""
    config = _dvc_config(root)
    return scm_problems(root, config) + tracking_problems(tracking) + (remote_problems(root, config) if push else [])
