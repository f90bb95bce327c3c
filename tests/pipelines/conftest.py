"""A real two-node Ray cluster on 127.0.0.1, started with the ``ray`` CLI once per session."""

from __future__ import annotations

import pytest

from tests.pipelines.ray_cli_cluster import CliCluster


@pytest.fixture(scope="session")
def cli_cluster():
    """Head (1 CPU, dashboard and job server) + a node with 3 CPUs: the demo's pools need both nodes."""
    cluster = CliCluster()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=3)
        assert len(cluster.wait_for_nodes(2)) == 2
        yield cluster
    finally:
        cluster.stop()
