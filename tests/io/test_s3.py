"""``--output s3://…`` end to end against moto's S3 server, and what a crash mid-upload leaves visible.

The build runs as a user runs it: ``curate build`` in its own process (its own embedded Ray), reaching the
server through ``FSSPEC_S3_ENDPOINT_URL``. Verify, report and export run in this process through the CLI,
with fsspec's S3 settings pointed at the same server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec.config
import pytest

from curation.cli import main
from curation.io.layout import atomic_write, list_names
from tests.dataset_compare import dataset_contents
from tests.io.conftest import CREDENTIALS

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "curated"
DATASET = f"s3://{BUCKET}/demo"
PART = 5 * 2**20  # S3's smallest multipart part


def curate_build(s3_server, demo_build_args: list[str]) -> subprocess.CompletedProcess:
    args = list(demo_build_args)
    args[args.index("--output") + 1] = DATASET
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *args, "--json"],
        cwd=ROOT,
        env=s3_server.env(),
        capture_output=True,
        text=True,
        timeout=400,
    )


def object_etags(fs, prefix: str) -> dict[str, str]:
    fs.invalidate_cache()
    return {path: info["ETag"] for path, info in fs.find(prefix, detail=True).items()}


def exported_files(dest: Path) -> dict[str, bytes]:
    """Every file of an export by relative path, with the export's own folder written as DEST."""
    return {
        str(path.relative_to(dest)): path.read_bytes().replace(str(dest).encode(), b"DEST")
        for path in dest.rglob("*")
        if path.is_file()
    }


@pytest.fixture(scope="module")
def s3_build(s3_server, demo_build_args):
    """The demo built into the bucket: (filesystem, first run's printed summary)."""
    fs = s3_server.new_bucket(BUCKET)
    result = curate_build(s3_server, demo_build_args)
    assert result.returncode == 0, result.stderr[-4000:]
    return fs, json.loads(result.stdout[result.stdout.index("{") :])


@pytest.fixture
def cli_on_s3(s3_server, monkeypatch):
    """This process's ``s3://`` URLs go to the test server (fsspec read its env settings at import)."""
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_server.endpoint})
    for name, value in {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": s3_server.endpoint}.items():
        monkeypatch.setenv(name, value)


def test_the_s3_dataset_equals_the_local_build(s3_build, demo_dataset, tmp_path):
    fs, summary = s3_build
    local = tmp_path / "copy"
    fs.get(f"{BUCKET}/demo/", str(local), recursive=True)
    embedded = json.loads((demo_dataset / "manifest.json").read_text())
    assert summary["counts"] == embedded["counts"]
    assert dataset_contents(local) == dataset_contents(demo_dataset)
    assert not [path for path in fs.find(BUCKET) if "/.tmp-" in path]  # no temporary object left


def test_resume_writes_nothing_new(s3_build, s3_server, demo_build_args):
    fs, first = s3_build
    data = [f"{BUCKET}/demo/{folder}" for folder in ("shards", "index", "rejects")]
    before = {prefix: object_etags(fs, prefix) for prefix in data}
    result = curate_build(s3_server, demo_build_args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout[result.stdout.index("{") :])["counts"] == first["counts"]
    assert {prefix: object_etags(fs, prefix) for prefix in data} == before


def test_verify_report_and_export_read_from_s3(s3_build, cli_on_s3, tmp_path, capsys):
    fs, _ = s3_build
    assert main(["verify", DATASET]) == 0
    assert capsys.readouterr().out.strip().endswith(f"0 problem(s) in {DATASET}")

    assert main(["report", DATASET]) == 0
    assert capsys.readouterr().out.strip() == f"{DATASET}/report/index.html"
    with fs.open(f"{BUCKET}/demo/report/index.html", "rb") as page:
        assert f"Dataset report: {BUCKET}/demo" in page.read().decode()

    local = tmp_path / "local-copy"
    fs.get(f"{BUCKET}/demo/", str(local), recursive=True)
    exports = {name: tmp_path / name / "pixart" for name in ("from-s3", "from-local")}
    assert main(["export", "pixart", DATASET, str(exports["from-s3"]), "--flavor", "sigma"]) == 0
    assert main(["export", "pixart", str(local), str(exports["from-local"]), "--flavor", "sigma"]) == 0
    s3_files, local_files = (exported_files(dest) for dest in exports.values())
    assert s3_files and s3_files == local_files


# ---------------------------------------------------------------- the commit scheme on an object store


def test_a_failed_upload_leaves_nothing_visible(s3_server):
    fs = s3_server.new_bucket("failed-upload")
    fs_small_parts = s3_server.filesystem(default_block_size=PART)

    def two_parts_then_fail(file):
        file.write(b"x" * (2 * PART + 1))  # two parts uploaded before the failure
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        atomic_write(fs_small_parts, "failed-upload/shards/a.tar", two_parts_then_fail)
    assert fs.find("failed-upload") == []
    assert fs.list_multipart_uploads("failed-upload") == []  # aborted, not left to linger


KILLED_WRITER = """
import sys, time
from pathlib import Path
from tests.io.conftest import S3Server
from curation.io.layout import atomic_write

def write(file):
    file.write(b"y" * (3 * {part}))  # three parts uploaded
    Path(sys.argv[1]).write_text("uploading")
    time.sleep(120)

atomic_write(S3Server(sys.argv[2]).filesystem(default_block_size={part}), "killed/shards/a.tar", write)
"""


def test_kill_9_mid_upload_leaves_no_half_shard(s3_server, tmp_path):
    fs = s3_server.new_bucket("killed")
    marker = tmp_path / "uploading"
    code = KILLED_WRITER.format(part=PART)
    env = {**s3_server.env(), "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", code, str(marker), s3_server.endpoint], cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert writer.poll() is None and time.monotonic() < deadline, "the writer did not start uploading"
        time.sleep(0.2)
    assert len(fs.list_multipart_uploads("killed")) == 1  # the bytes are on the server...
    assert fs.find("killed") == [] and list_names(fs, "killed/shards") == []  # ...but no object is
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    fs.invalidate_cache()
    assert fs.find("killed") == [] and list_names(fs, "killed/shards") == []


def test_a_complete_upload_is_one_object_with_every_byte(s3_server):
    fs = s3_server.new_bucket("complete")
    payload = os.urandom(2 * PART + 123)
    atomic_write(s3_server.filesystem(default_block_size=PART), "complete/shards/a.tar", lambda f: f.write(payload))
    assert fs.find("complete") == ["complete/shards/a.tar"]
    assert fs.cat_file("complete/shards/a.tar") == payload
