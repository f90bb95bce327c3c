"""The same ``curate build`` against a real two-node Ray cluster on 127.0.0.1 (RAY_ADDRESS set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[2]


# Ray replaces a loopback address by the host's network IP; this keeps every node and client on 127.0.0.1.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def two_node_cluster():
    previous = {name: os.environ.get(name) for name in LOOPBACK_ONLY}
    os.environ.update(LOOPBACK_ONLY)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
    for name, value in previous.items():
        os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


@pytest.mark.cluster
def test_build_runs_unchanged_on_a_cluster(two_node_cluster, demo_build_args, tiny_models, tmp_path):
    args = list(demo_build_args)
    out = tmp_path / "cluster-out"
    args[args.index("--output") + 1] = str(out)
    env = {**os.environ, **LOOPBACK_ONLY, "RAY_ADDRESS": two_node_cluster.address}
    code = (
        "import sys; from curation.cli import main; import ray; rc = main(sys.argv[1:]); "
        "print('NODES', len([n for n in ray.nodes() if n['Alive']])); sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NODES 2" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ray"]["address"] == two_node_cluster.address
    counts = manifest["counts"]
    assert counts["written"] >= 15 and counts["input"] == counts["written"] + counts["rejected"] + counts["failed"]
