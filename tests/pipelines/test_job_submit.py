"""``ray job submit --working-dir . -- curate build configs/demo.yaml`` against a real two-node cluster.

The README's cluster command, as a user runs it: the job's driver runs in the head node's copy of the
working dir, creates the demo's tiny models there (``tiny_models_dir: .cache/tiny-models``, relative),
and the stage workers, on both nodes, must find them. The dataset must equal the embedded build's.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.dataset_compare import dataset_contents
from tests.pipelines.ray_cli_cluster import RAY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
def test_ray_job_submit_builds_the_embedded_dataset(cli_cluster, demo_dataset, tmp_path):
    out = tmp_path / "job-out"
    submission = f"curate-{uuid.uuid4().hex[:8]}"
    command = [RAY, "job", "submit", "--address", cli_cluster.dashboard, "--submission-id", submission]
    command += ["--working-dir", ".", "--", "curate", "build", "configs/demo.yaml", "--output", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=cli_cluster.env(), capture_output=True, text=True, timeout=400)
    job = cli_cluster.api(f"/api/jobs/{submission}")
    assert result.returncode == 0 and job["status"] == "SUCCEEDED", (job.get("message") or result.stdout)[-4000:]

    worker_tasks = cli_cluster.finished_tasks(job["job_id"], cli_cluster.worker_node_id(), "MapWorker(")
    assert any(name.startswith("MapWorker(") for name in worker_tasks), worker_tasks  # a stage actor ran there

    manifest = json.loads((out / "manifest.json").read_text())
    embedded = json.loads((demo_dataset / "manifest.json").read_text())
    assert manifest["counts"] == embedded["counts"]
    assert manifest["ray"]["address"] != "embedded"
    assert dataset_contents(out) == dataset_contents(demo_dataset)
