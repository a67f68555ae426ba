"""A real S3-compatible server (moto's server mode) on loopback, for tests and benchmarks.

`python -m moto.server -H 127.0.0.1 -p PORT` in its own process group, one
bucket created through the S3 API like any client would. State lives in the
server's memory: it is gone when the server stops. The credentials are
throw-away values moto accepts; they reach DVC, MLflow and boto3 through the
environment only (`S3Server.env`), never through a tracked file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from kit.prefectserver import free_port

# Distinctive values, so a test can prove they never land in a tracked file.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tl-test-key-id", "AWS_SECRET_ACCESS_KEY": "tl-test-secret-key",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a DVC, MLflow or boto3 client needs to reach the server."""
        return {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under prefix (all pages)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@contextmanager
def s3_server(home: Path, bucket: str = "transferline", startup_timeout: float = 60) -> Iterator[S3Server]:
    """Yield a running server with `bucket` created; its log goes to home/s3.log."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(home / "s3.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **CREDENTIALS}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited {proc.returncode}: {(home / 's3.log').read_text()[-2000:]}")
            try:
                # moto's own health route: answers once the server serves requests
                if httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto server not answering on {endpoint} after {startup_timeout} s")
            time.sleep(0.2)
        server = S3Server(endpoint, bucket)
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
