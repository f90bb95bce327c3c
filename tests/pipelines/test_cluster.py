"""The same ``curate build`` from a driver given ``RAY_ADDRESS`` of a real two-node cluster on 127.0.0.1.

The nodes run in a directory of their own, and the model paths are given relative to the driver's
directory: the driver must make them absolute for the workers. The second node must have done work,
and the dataset must equal the embedded build's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dataset_compare import dataset_contents

ROOT = Path(__file__).resolve().parents[2]
DRIVER = (
    "import sys, ray; from curation.cli import main; rc = main(sys.argv[1:]); "
    "print('JOB', ray.get_runtime_context().get_job_id()); sys.exit(rc)"
)


def relative_model_paths(args: list[str], tiny_models: Path) -> list[str]:
    """``demo_build_args`` with the tiny model paths written relative to the repository (the driver's cwd)."""
    relative = os.path.relpath(tiny_models, ROOT)
    return [arg.replace(str(tiny_models), relative) for arg in args]


@pytest.mark.cluster
def test_build_with_ray_address_on_a_two_node_cluster(
    cli_cluster, demo_build_args, demo_dataset, tiny_models, tmp_path
):
    args = relative_model_paths(demo_build_args, tiny_models)
    out = tmp_path / "cluster-out"
    args[args.index("--output") + 1] = str(out)
    env = cli_cluster.env(RAY_ADDRESS=cli_cluster.address)
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    job_id = result.stdout.split("JOB ")[-1].strip()

    worker_tasks = cli_cluster.finished_tasks(job_id, cli_cluster.worker_node_id(), "MapWorker(")
    assert any(name.startswith("MapWorker(") for name in worker_tasks), worker_tasks  # a stage actor ran there

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["ray"]["address"] == cli_cluster.address
    assert manifest["counts"] == json.loads((demo_dataset / "manifest.json").read_text())["counts"]
    assert dataset_contents(out) == dataset_contents(demo_dataset)
