"""Faults: failures above run.max_failed_fraction, kill -9 of the driver and of a Ray worker, resumes that
would mix numerics.

Builds are small (7 inputs of the demo's photos, 256 buckets, one sample per shard so that a kill has many
commit points to land between) on the session's tiny models. A clean in-process build is the reference:
every interrupted-then-resumed dataset must hold exactly its samples, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.cli import main
from curation.config import ModelRef, fingerprint, load_config
from curation.io.layout import REJECTS_SCHEMA
from curation.io.writer import OutputConflictError, finalize, prepare_output, read_errors
from curation.models.loading import provenance
from curation.verify import verify_dataset
from pipelines.t2i import TooManyFailuresError, check_failures
from tests.dataset_compare import shard_members

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs/demo.yaml"
INPUT_FILES = (
    "astronaut.jpg",
    "astronaut.txt",  # a sidecar: alt text of astronaut.jpg, not an input
    "brick.jpg",
    "coffee_exif6.jpg",
    "coins.png",
    "rocket.jpg",
    "grass.png",
    "broken_zero.jpg",  # rejected: an empty file
)
INPUTS, WRITTEN = 7, 6
PROCESS_TIMEOUT_S = 420


# ---------------------------------------------------------------- resume check (no Ray)


def _record(dtype: str = "float32", weights: str = "aaaa", revision: str | None = None) -> dict:
    return {"path": "/m", "device": "cpu", "dtype": dtype, "revision": revision, "weights_sha256_sampled": weights}


def test_resume_check_names_each_changed_numeric(tmp_path: Path) -> None:
    models = {"vae": _record(), "t5": _record(weights="t5t5")}
    prepare_output(str(tmp_path), "fp1", models=models)
    finalize(str(tmp_path), {"fingerprint": "fp1", "models": models})
    changed = {"vae": _record(dtype="bfloat16", weights="bbbb"), "t5": _record(weights="t5t5", revision="v2")}
    with pytest.raises(OutputConflictError) as refused:
        prepare_output(str(tmp_path), "fp1", models=changed)
    message = str(refused.value)
    assert "t5 revision: None -> v2" in message
    assert "vae dtype: float32 -> bfloat16" in message and "vae weights_sha256_sampled: aaaa -> bbbb" in message
    assert "fingerprint" not in message  # the config itself did not change
    assert (tmp_path / "manifest.json").exists()  # refused: nothing touched

    prepare_output(str(tmp_path), "fp1", models=models)  # the same numerics resume
    prepare_output(str(tmp_path), "fp1", overwrite=True, models=changed)
    assert json.loads((tmp_path / "_run" / "state.json").read_text())["models"] == changed


def test_records_without_numerics_do_not_block_a_resume(tmp_path: Path) -> None:
    finalize(str(tmp_path), {"fingerprint": "fp1", "models": {"vae": {"path": "/m"}}})  # an older manifest
    prepare_output(str(tmp_path), "fp1", models={"vae": _record()})


# ---------------------------------------------------------------- builds


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault-inputs")
    for name in INPUT_FILES:
        shutil.copy(ROOT / "examples/images" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    """A private copy of the tiny PixArt-Σ folder (T5 + VAE), whose weights one test re-saves."""
    copy = tmp_path_factory.mktemp("fault-models") / "pixart_sigma"
    shutil.copytree(tiny_models / "pixart_sigma", copy)
    return copy


@pytest.fixture(scope="module")
def build_args(inputs: Path, models: Path, tiny_models: Path) -> Callable[..., list[str]]:
    def args(out: Path, *overrides: str) -> list[str]:
        sets = [
            f"tiny_models_dir={tiny_models}",
            f"caption.model.path={tiny_models}/llava",
            f"t5.model.path={models}",
            f"vae.model.path={models}",
            "writer.samples_per_shard=1",
            *overrides,
        ]
        return ["build", str(DEMO), "--input", str(inputs), "--output", str(out), *[f"--set={s}" for s in sets]]

    return args


@pytest.fixture(scope="module")
def clean(build_args, tmp_path_factory: pytest.TempPathFactory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("fault-clean") / "out"
    assert main(build_args(out)) == 0
    return out


def assert_same_dataset(out: Path, clean: Path) -> None:
    got, want = shard_members(out), shard_members(clean)
    assert sorted(got) == sorted(want)
    differing = {key: [ext for ext in want[key] if got[key].get(ext) != want[key][ext]] for key in want}
    assert {key: exts for key, exts in differing.items() if exts} == {}
    assert {key: set(members) for key, members in got.items()} == {key: set(m) for key, m in want.items()}
    manifest, reference = (json.loads((d / "manifest.json").read_text()) for d in (out, clean))
    expected = {"input": INPUTS, "written": WRITTEN, "rejected": 1, "failed": 0}
    assert manifest["counts"] == reference["counts"] == expected
    assert verify_dataset(str(out)) == []


def test_clean_build_records_the_resolved_numerics(clean: Path) -> None:
    manifest = json.loads((clean / "manifest.json").read_text())
    for name in ("caption", "t5", "vae"):
        assert (manifest["models"][name]["device"], manifest["models"][name]["dtype"]) == ("cpu", "float32")
        assert manifest["stages"][name]["device"] == "cpu"  # what the worker used
        assert manifest["stages"][name]["dtype"] == "float32"
    assert manifest["config"]["vae"]["model"]["dtype"] == "auto"  # the recipe as given
    assert manifest["config"]["run"] == {"max_failed_fraction": 0.05}
    assert len(shard_members(clean)) == WRITTEN


# ---------------------------------------------------------------- max_failed_fraction


def test_failures_above_the_fraction_write_everything_then_exit_non_zero(
    build_args, clean: Path, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from diffusers import AutoencoderKL

    # A loadable VAE whose encoder expects 4 input channels: every RGB batch raises inside the VAE stage.
    config = dict(AutoencoderKL.load_config(models / "vae"))
    config["in_channels"] = 4
    broken = tmp_path / "vae4"
    AutoencoderKL.from_config(config).save_pretrained(broken / "vae")
    out = tmp_path / "out"
    args = build_args(out, f"vae.model.path={broken}")
    expected_failed = sorted(shard_members(clean))  # every image that passes the filter fails in the VAE

    assert main(args) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("curate build:")]
    assert len(error_lines) == 1
    expected_line = f"curate build: {WRITTEN} of {INPUTS} inputs failed (85.7% > run.max_failed_fraction 5.0%)"
    assert error_lines[0].startswith(expected_line)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"input": INPUTS, "written": 0, "rejected": 1, "failed": WRITTEN}
    errors = read_errors(str(out))
    assert sorted(e["key"] for e in errors) == expected_failed
    for entry in errors:
        assert (entry["stage"], entry["reason"], entry["error_type"]) == ("vae", "error", "RuntimeError")
        assert entry["traceback"].startswith("Traceback (most recent call last)")
        assert "curation/stages/vae.py" in entry["traceback"] and entry["time"] and entry["source"]
        assert entry["message"] == entry["traceback"].strip().splitlines()[-1]
    tables = [pq.read_table(path) for path in sorted((out / "rejects").glob("*.parquet"))]
    assert all(table.schema.names == REJECTS_SCHEMA.names for table in tables)  # no traceback in the rejects
    failed = [row for table in tables for row in table.to_pylist() if row["status"] == "failed"]
    assert len(failed) == WRITTEN and all("\n" not in row["detail"] for row in failed)


def test_the_failed_fraction_is_compared_with_more_than() -> None:
    def counts(failed: int, inputs: int) -> dict:
        return {"counts": {"input": inputs, "failed": failed}}

    with pytest.raises(
        TooManyFailuresError, match=r"^2 of 39 inputs failed \(5\.1% > run\.max_failed_fraction 5\.0%\)"
    ):
        check_failures(counts(2, 39), 0.05, "out")
    check_failures(counts(2, 40), 0.05, "out")  # exactly 5%: not more
    check_failures(counts(6, 7), 0.9, "out")
    check_failures(counts(0, 0), 0.0, "out")
    with pytest.raises(TooManyFailuresError, match="tracebacks in out/_run/errors-"):
        check_failures(counts(1, 1000), 0.0, "out")
    assert fingerprint(load_config(DEMO, ["run.max_failed_fraction=0.5"])) == fingerprint(load_config(DEMO))


# ---------------------------------------------------------------- kill -9


def start_build(args: list[str], log: Path) -> subprocess.Popen:
    """``curate build`` in a process group of its own (its embedded Ray's GCS and raylet join it; Ray gives
    workers groups of their own: ``descendants`` finds those)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "curation.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


Process = tuple[int, str]  # (pid, start time): a pid cannot be mistaken for a later process reusing it


def _process_table() -> dict[int, tuple[int, str, str]]:
    """{pid: (parent pid, start time, command line)} of the live processes."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, ... (field 3 onwards)
            if fields[0] != "Z":
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                table[int(entry.name)] = (int(fields[1]), fields[19], command)
        except (OSError, ValueError, IndexError):
            continue
    return table


def descendants(root: int) -> dict[Process, str]:
    """{process: command line} of the live processes below ``root`` (Ray gives workers process groups of their
    own, so the tree, not the group, finds them)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[(pid, table[pid][1])] = table[pid][2]
        todo += children.get(pid, [])
    return found


def _alive(processes) -> list[Process]:
    table = _process_table()
    return [(pid, start) for pid, start in processes if pid in table and table[pid][1] == start]


def stop_build(process: subprocess.Popen, seen: dict[Process, str]) -> None:
    """Kill what is left of a build: its process group, then any process ``seen`` below it that outlived
    Ray's own fate sharing by 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid, _ in _alive(seen):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(condition: Callable[[], bool], ended: Callable[[], bool], timeout: float = PROCESS_TIMEOUT_S) -> bool:
    """True once ``condition`` holds; False when the build ``ended`` first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if ended():
            return False
        time.sleep(0.05)
    raise AssertionError(f"neither the condition nor the end of the build within {timeout} s")


def tar_names(out: Path) -> set[str]:
    return {p.name for p in (out / "shards").glob("*.tar")} if (out / "shards").exists() else set()


def test_driver_killed_at_random_moments_then_resumed(build_args, clean: Path, tmp_path: Path) -> None:
    rng = random.Random(9)
    out, log = tmp_path / "out", tmp_path / "build.log"
    # Moments: a random time after the output was prepared, then a random time after a new shard appeared.
    moments = [lambda before: (out / "_run" / "state.json").exists(), lambda before: bool(tar_names(out) - before)]
    killed = []
    for moment, delay in zip(moments, (rng.uniform(0, 4), rng.uniform(0, 1)), strict=True):
        before = tar_names(out)
        process = start_build(build_args(out), log)
        if wait_until(lambda: moment(before), lambda: process.poll() is not None):  # noqa: B023 (this iteration)
            time.sleep(delay)
        seen = descendants(process.pid)
        process.send_signal(signal.SIGKILL)
        killed.append(process.wait(timeout=60) == -signal.SIGKILL)
        stop_build(process, seen)
    assert killed[0], log.read_text()[-3000:]  # the first kill lands in the middle of the run
    assert main(build_args(out)) == 0  # the resume
    assert_same_dataset(out, clean)


def test_worker_killed_mid_run_then_rerun(build_args, clean: Path, tmp_path: Path, ray_session) -> None:
    """SIGKILL one stage actor of a build running on the session's embedded Ray (in a thread of this process)."""
    rng = random.Random(5)
    out = tmp_path / "out"
    earlier = set(actor_processes())
    outcome: dict[str, object] = {}

    def build() -> None:
        try:
            outcome["exit"] = main(build_args(out))
        except Exception as error:  # a clean failure is allowed; a hang is not
            outcome["exit"] = repr(error)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()

    def started() -> list[Process]:
        return sorted(set(actor_processes()) - earlier)

    assert wait_until(lambda: len(started()) >= 3, lambda: not thread.is_alive()), outcome  # vae, caption, t5
    time.sleep(rng.uniform(0.2, 1.0))
    victim = rng.choice(started())
    assert thread.is_alive() and _alive([victim])  # the kill lands mid-run
    os.kill(victim[0], signal.SIGKILL)
    thread.join(timeout=PROCESS_TIMEOUT_S)
    assert not thread.is_alive(), "the build hung after a worker was killed"
    if outcome["exit"] != 0:  # failed cleanly: the rerun resumes
        assert main(build_args(out)) == 0
    assert_same_dataset(out, clean)


def actor_processes() -> list[Process]:
    """Ray Data's actor-pool workers ("ray::MapWorker(MapBatches(StageActor))...") of this process's Ray."""
    return sorted(proc for proc, command in descendants(os.getpid()).items() if "MapWorker" in command)


# ---------------------------------------------------------------- resume refused when numerics change


def test_resume_with_another_dtype_is_refused_naming_it(build_args, clean: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    manifest_before = (copy / "manifest.json").read_bytes()
    assert main(build_args(copy, "vae.model.dtype=bfloat16")) == 2
    assert "vae dtype: float32 -> bfloat16" in capsys.readouterr().err
    assert (copy / "manifest.json").read_bytes() == manifest_before


def test_resume_after_the_local_weights_were_resaved_is_refused(
    build_args, clean: Path, models: Path, tmp_path: Path, capsys
) -> None:
    import torch
    from diffusers import AutoencoderKL

    copy = tmp_path / "copy"
    shutil.copytree(clean, copy)
    recorded = json.loads((clean / "manifest.json").read_text())["models"]["vae"]["weights_sha256_sampled"]
    backup = tmp_path / "vae-backup"
    shutil.copytree(models / "vae", backup)
    try:
        vae = AutoencoderKL.from_pretrained(models / "vae")
        with torch.no_grad():
            vae.encoder.conv_in.bias.add_(0.01)  # a fine-tune, re-saved in place
        vae.save_pretrained(models / "vae")
        now = provenance(ModelRef(path=str(models), subfolder="vae"))["weights_sha256_sampled"]
        assert now != recorded
        assert main(build_args(copy)) == 2
        assert f"vae weights_sha256_sampled: {recorded} -> {now}" in capsys.readouterr().err
    finally:  # the other tests build with this model
        shutil.rmtree(models / "vae")
        shutil.copytree(backup, models / "vae")
    assert provenance(ModelRef(path=str(models), subfolder="vae"))["weights_sha256_sampled"] == recorded
