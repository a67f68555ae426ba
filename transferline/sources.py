"""The user's data source (an image folder, a text file) must not change while ingest reads it.

A copy still being written, a sync tool replacing files, an editor saving the
CSV: ingest would record a mix of two versions under one DVC hash. The
source's sizes and modification times are taken before and after the read;
any difference fails the stage with the path and what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from transferline.errors import StageError


def fingerprint(path: Path) -> tuple:
    """(name, size, mtime) of the file, or of every file under the folder: what a change alters
    (nothing for a missing path: the reader names that itself)."""
    path = Path(path)
    if not path.exists():
        return ()
    if path.is_dir():
        stats = sorted((str(p.relative_to(path)), p.stat()) for p in path.rglob("*") if p.is_file())
        return tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)
    stat = path.stat()
    return ((path.name, stat.st_size, stat.st_mtime_ns),)


@contextlib.contextmanager
def unchanged_while_read(path: Path) -> Iterator[None]:
    """Read `path` inside this block; raise StageError if it changed meanwhile."""
    before = fingerprint(path)
    yield
    if fingerprint(path) != before:
        raise StageError(f"{path} changed while ingest was reading it (a copy or an edit still in progress?); "
                         "let it finish, then run again")
