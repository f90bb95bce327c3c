"""A real Ray cluster on 127.0.0.1 started with the ``ray`` CLI, as a user starts one (not a test utility).

Every node is ``ray start --block`` in its own session, with its own ``--temp-dir`` and free ports, so
stopping kills exactly the process groups started here: never ``ray stop``, which ends every Ray on the
machine (other test sessions' embedded Rays included). Token authentication is on, with a token of
this cluster's own passed as ``RAY_AUTH_TOKEN`` to every node, driver and ``ray job`` call, so no
``~/.ray/auth_token`` is read or written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


class CliCluster:
    """Head with the dashboard (job server) plus worker nodes, all on 127.0.0.1."""

    def __init__(self) -> None:
        # Short root: Ray's unix socket paths under the temp dir must stay below 108 characters.
        self.root = Path(tempfile.mkdtemp(prefix="raycli-", dir="/tmp"))
        self.token = uuid.uuid4().hex + uuid.uuid4().hex
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for anything that talks to this cluster (nodes, drivers, ``ray job``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        )
        env.update(extra)
        return env

    def start_head(self, num_cpus: int) -> None:
        self._start_node(
            "head",
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            num_cpus=num_cpus,
        )

    def add_node(self, num_cpus: int) -> None:
        self._start_node(f"node{len(self.nodes)}", f"--address={self.address}", num_cpus=num_cpus)

    def _start_node(self, name: str, *args: str, num_cpus: int, attempts: int = 2) -> None:
        """``ray start --block``; a second try when the first fails (a raylet has 30 s to register, which a
        loaded machine can miss)."""
        for attempt in range(attempts):
            log = self.root / f"{name}-{attempt}.log"
            command = [
                RAY,
                "start",
                "--block",
                *args,
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                f"--temp-dir={self.root / f'{name}-{attempt}'}",
                "--disable-usage-stats",
                *_node_ports(),
            ]
            with log.open("wb") as out:  # cwd: the workers' own directory, not the repository
                process = subprocess.Popen(
                    command,
                    env=self.env(),
                    cwd=self.root,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if _wait_for_line(process, log, STARTED):
                self.nodes.append(process)
                return
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")

    def api(self, path: str) -> dict:
        """GET a dashboard REST endpoint with this cluster's token."""
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def alive_nodes(self) -> list[dict]:
        nodes = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return [node for node in nodes if node["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.alive_nodes()
            if len(nodes) >= count or time.monotonic() > deadline:
                return nodes
            time.sleep(0.5)

    def worker_node_id(self) -> str:
        return next(node["node_id"] for node in self.alive_nodes() if not node["is_head_node"])

    def finished_tasks(self, job_id: str, node_id: str, prefix: str = "", timeout: float = 30) -> list[str]:
        """Names of the tasks and actor calls of a job that finished on a node (Ray's state API).

        Nodes report task events every second or so: wait until one named ``prefix…`` is there.
        """
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.api("/api/v0/tasks?limit=10000&detail=1")["data"]["result"]["result"]
            names = sorted(
                task["name"]
                for task in tasks
                if task.get("job_id") == job_id and task.get("node_id") == node_id and task.get("state") == "FINISHED"
            )
            if any(name.startswith(prefix) for name in names) or time.monotonic() > deadline:
                return names
            time.sleep(1)

    def stop(self) -> None:
        """SIGTERM each node's process group, then SIGKILL what is left of it after a grace period."""
        for process in reversed(self.nodes):
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5  # a node's graceful shutdown takes ~20 s; nothing here needs it
        while any(_group_alive(p.pid) for p in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.2)
        for process in self.nodes:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_for_line(process: subprocess.Popen, log: Path, line: str, timeout: float = 90) -> bool:
    deadline = time.monotonic() + timeout
    while line not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
