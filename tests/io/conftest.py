"""An S3 server for the tests: moto's server mode, in a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self) -> dict[str, str]:
        """Environment of a process that reaches this server through plain ``s3://`` URLs (fsspec's config)."""
        return {**os.environ, **CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": self.endpoint}

    def filesystem(self, **kwargs):
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            skip_instance_cache=True,
            **kwargs,
        )

    def new_bucket(self, name: str):
        fs = self.filesystem()
        fs.mkdir(name)
        return fs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.2)
    yield S3Server(f"http://127.0.0.1:{port}")
    server.terminate()
    server.wait(timeout=30)
