"""The read-only commands' answers, kept until the tracking store changes.

`status`, `history` and `lineage` read a local SQLite store without MLflow
where transferline.storeview can (milliseconds), and ask MLflow otherwise:
another schema revision, a question the view leaves to MLflow. Importing
MLflow and opening its SQLAlchemy store costs 2-5 s on two cores, for answers
that change only when something writes to the store. So with a local SQLite
store the answer is kept in .transferline/readcache/ under a key made of the
size and modification time of the database (and its journal) and of any
other file the answer reads: any write, ours or another client's, changes the
key, and the next read asks again. A server store (http, postgresql) is
always asked: its writes cannot be seen from here."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from transferline.config import TrackingParams
from transferline.dvcexp import project_root
from transferline.storeview import store_file

FOLDER = Path(".transferline/readcache")
# Bumped when an answer's shape changes, so an older entry is never served.
FORMAT = 1


def _key(db: Path, name: str, files: Iterable[Path]) -> str:
    stats = []
    for path in (db, Path(f"{db}-journal"), Path(f"{db}-wal"), *files):
        try:
            st = path.stat()
            stats.append([str(path), st.st_mtime_ns, st.st_size, st.st_ino])
        except FileNotFoundError:
            stats.append([str(path), None])
    return hashlib.sha256(json.dumps([FORMAT, name, stats]).encode()).hexdigest()


def cached(cfg: TrackingParams, name: str, read: Callable[[], Any], files: Iterable[Path] = ()) -> Any:
    """`read()`'s answer, from the cache when neither the store nor `files` changed since it was kept.

    `name` tells the answers apart (the command and its arguments). An answer is kept only when
    the store is the same before and after `read()`: a write that lands meanwhile (a run ending)
    could otherwise be keyed with an answer that predates it."""
    db = store_file(cfg)
    if db is None:
        return read()
    files = list(files)
    entry = project_root() / FOLDER / (hashlib.sha256(name.encode()).hexdigest()[:16] + ".json")
    before = _key(db, name, files)
    try:
        kept = json.loads(entry.read_text())
        if kept["key"] == before:
            return kept["answer"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or unreadable: ask MLflow
    # default=str: the same text `--json` prints, and the same value a kept answer returns.
    answer = json.loads(json.dumps(read(), default=str))
    if _key(db, name, files) == before:
        entry.parent.mkdir(parents=True, exist_ok=True)
        partial = entry.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"key": before, "name": name, "answer": answer}))
        os.replace(partial, entry)  # a reader sees the whole entry or the old one
    return answer
