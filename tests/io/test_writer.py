"""ShardSink through a real local Ray, plus prepare_output / done_keys / finalize on local files."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image
from ray.data._internal.execution.interfaces import TaskContext

from curation.io import writer
from curation.io.layout import load_npy, npy_bytes, read_index, read_rejects
from curation.io.writer import (
    OutputConflictError,
    ShardSink,
    done_keys,
    finalize,
    prepare_output,
)
from curation.records import FAILED, REJECTED, Row, mark, new_row, rows_to_table

T5_DIM = 16


def jpeg_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def ok_row(key: str, t5_tokens: int = 5, bucket_hw: tuple[int, int] = (48, 64)) -> Row:
    image = jpeg_bytes(40, 30)
    rng = np.random.default_rng(len(key))
    row = new_row(key, f"file:///in/{key}.jpg", image, alt="alt text")
    row.update(
        image_ext="jpg", width=40, height=30, sha256=hashlib.sha256(image).hexdigest(), phash="8f373714acfcf4d0",
        filter_notes=json.dumps({"exif_transpose": False}), bucket="0.75", bucket_h=bucket_hw[0],
        bucket_w=bucket_hw[1], captions=json.dumps({"dense": f"A red square named {key}."}),
        caption_status=json.dumps({"dense": "ok"}),
        t5=npy_bytes(rng.standard_normal((t5_tokens, T5_DIM)).astype(np.float16)), t5_tokens=t5_tokens,
        t5_truncated=False,
        vae=npy_bytes(rng.standard_normal((8, bucket_hw[0] // 8, bucket_hw[1] // 8)).astype(np.float16)),
    )  # fmt: skip
    return row


def rejected_row(key: str, reason: str = "too_small") -> Row:
    return mark(new_row(key, f"file:///in/{key}.jpg", b"x"), REJECTED, "filter", reason, "40x30 < 256")


def failed_row(key: str, reason: str = "error") -> Row:
    return mark(new_row(key, f"file:///in/{key}.jpg", b"x"), FAILED, "caption", reason, "RuntimeError: boom")


def write_task(output: Path, rows: list[Row], task_idx: int = 0, run_id: str = "run1", per_shard: int = 2) -> dict:
    """One write task, as Ray would run it, without starting Ray."""
    sink = ShardSink(str(output), per_shard, run_id)
    return sink.write([rows_to_table(rows)], TaskContext(task_idx=task_idx, op_name="Write"))


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers()}


# ---------------------------------------------------------------- through Ray


def test_sink_writes_contract_shards_through_ray(ray_session, tmp_path: Path) -> None:
    rows = [ok_row(f"img_{i}") for i in range(5)] + [
        rejected_row("small_1"),
        rejected_row("small_2"),
        failed_row("bad"),
    ]
    ray.data.from_arrow(rows_to_table(rows)).write_datasink(ShardSink(str(tmp_path), 2, "run1"))
    manifest = finalize(str(tmp_path), {"fingerprint": "abc", "config": {"writer": {"samples_per_shard": 2}}})

    assert manifest["counts"] == {"input": 8, "written": 5, "rejected": 2, "failed": 1}
    assert manifest["reject_reasons"] == {"too_small": 2}
    assert manifest["failure_reasons"] == {"error": 1}
    assert manifest["buckets"] == {"0.75": 5}
    assert manifest["fingerprint"] == "abc"
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    tar_paths = sorted((tmp_path / "shards").glob("*.tar"))
    assert [p.name for p in tar_paths] == manifest["shards"]
    assert all(p.name.startswith("run1-") for p in tar_paths)

    members: dict[str, bytes] = {}
    for path in tar_paths:
        shard_members = tar_members(path)
        assert len(shard_members) <= 2 * 5  # samples_per_shard samples of 5 members
        members.update(shard_members)
    by_key = {row["key"]: row for row in rows}
    for i in range(5):
        key = f"img_{i}"
        assert members[f"{key}.jpg"] == by_key[key]["image"]  # original bytes, not re-encoded
        meta = json.loads(members[f"{key}.json"])
        assert meta["key"] == key and meta["source"] == f"file:///in/{key}.jpg"
        assert (meta["width"], meta["height"], meta["bucket"], meta["bucket_hw"]) == (40, 30, "0.75", [48, 64])
        assert meta["captions"] == {"dense": f"A red square named {key}."}
        assert meta["filter_notes"] == {"exif_transpose": False}
        assert meta["t5_tokens"] == 5 and meta["t5_truncated"] is False
        assert meta["sha256"] == by_key[key]["sha256"] and meta["caption_status"] == {"dense": "ok"}
        assert members[f"{key}.txt"].decode() == meta["captions"]["dense"]
        t5 = load_npy(members[f"{key}.t5.npy"])
        vae = load_npy(members[f"{key}.vae.npy"])
        assert (t5.dtype, t5.shape) == (np.float16, (5, T5_DIM))
        assert (vae.dtype, vae.shape) == (np.float16, (8, 6, 8))
        assert members[f"{key}.vae.npy"] == by_key[key]["vae"]
    assert not any(name.startswith(("small", "bad")) for name in members)

    index = read_index(str(tmp_path)).to_pylist()
    assert sorted(r["key"] for r in index) == [f"img_{i}" for i in range(5)]
    assert {r["shard"] for r in index} == set(manifest["shards"])
    assert index[0]["caption"] == f"A red square named {index[0]['key']}."
    rejects = read_rejects(str(tmp_path)).to_pylist()
    assert {(r["key"], r["status"], r["stage"]) for r in rejects} == {
        ("small_1", REJECTED, "filter"), ("small_2", REJECTED, "filter"), ("bad", FAILED, "caption")
    }  # fmt: skip


def test_many_write_tasks_write_each_key_once(ray_session, tmp_path: Path) -> None:
    rows = [ok_row(f"k{i:02d}") for i in range(23)]
    dataset = ray.data.from_items(rows, override_num_blocks=6)
    dataset.write_datasink(ShardSink(str(tmp_path), 4, "run1"))
    manifest = finalize(str(tmp_path), {})

    keys = read_index(str(tmp_path), ["key"])["key"].to_pylist()
    assert sorted(keys) == sorted(row["key"] for row in rows)
    for path in (tmp_path / "shards").glob("*.tar"):
        assert 1 <= len(tar_members(path)) // 5 <= 4
    assert manifest["counts"] == {"input": 23, "written": 23, "rejected": 0, "failed": 0}


# ---------------------------------------------------------------- one write task


def test_write_task_names_and_returns(tmp_path: Path) -> None:
    rows = [ok_row("a"), rejected_row("r"), ok_row("b"), ok_row("c"), failed_row("f")]
    result = write_task(tmp_path, rows, task_idx=7)

    assert result == {
        "written": 3,
        "rejected": 1,
        "failed": 1,
        "shards": ["run1-00007-0000.tar", "run1-00007-0001.tar"],
    }
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "run1-00007-0000.parquet",
        "run1-00007-0001.parquet",
    ]
    assert [p.name for p in (tmp_path / "rejects").iterdir()] == ["run1-00007.parquet"]
    assert not list(tmp_path.rglob(".tmp-*"))


def test_same_rows_give_identical_tars(tmp_path: Path) -> None:
    rows = [ok_row("a"), ok_row("b")]
    write_task(tmp_path / "one", rows)
    write_task(tmp_path / "two", rows)
    name = "shards/run1-00000-0000.tar"
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_incomplete_ok_row_fails_instead_of_the_task(tmp_path: Path) -> None:
    broken = ok_row("broken")
    broken["vae"] = None
    result = write_task(tmp_path, [ok_row("good"), broken])

    assert (result["written"], result["failed"]) == (1, 1)
    rejects = read_rejects(str(tmp_path)).to_pylist()
    assert [(r["key"], r["stage"], r["reason"]) for r in rejects] == [("broken", "writer", "incomplete_row")]
    assert "vae" in rejects[0]["detail"]


def test_sink_is_small_and_picklable(tmp_path: Path) -> None:
    sink = ShardSink(str(tmp_path), 1000, "run1")
    assert sink.min_rows_per_write == 1000
    assert len(pickle.dumps(sink)) < 1000
    with pytest.raises(ValueError, match="run_id"):
        ShardSink(str(tmp_path), 10, "bad/id")


# ---------------------------------------------------------------- crash, resume, fingerprints


def test_crash_between_tar_and_index_is_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepare_output(str(tmp_path), "fp1", overwrite=False)
    write_task(tmp_path, [ok_row("a"), ok_row("b")], task_idx=0)

    def crash(*args, **kwargs):
        raise OSError("disk vanished")

    monkeypatch.setattr(writer.pq, "write_table", crash)
    with pytest.raises(OSError):
        write_task(tmp_path, [ok_row("c"), ok_row("d")], task_idx=1)
    monkeypatch.undo()
    assert (tmp_path / "shards" / "run1-00001-0000.tar").exists()  # tar complete, index never written
    assert not list(tmp_path.rglob(".tmp-*"))  # the failed index write cleaned its temp file
    (tmp_path / "shards" / ".tmp-0123-run1-00002-0000.tar").write_bytes(b"half a tar")

    prepare_output(str(tmp_path), "fp1", overwrite=False)
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["run1-00000-0000.tar"]
    assert done_keys(str(tmp_path)) == {"a", "b"}

    write_task(tmp_path, [ok_row("c"), ok_row("d")], task_idx=0, run_id="run2")
    assert finalize(str(tmp_path), {"fingerprint": "fp1"})["counts"]["written"] == 4


def test_index_without_tar_is_dropped(tmp_path: Path) -> None:
    write_task(tmp_path, [ok_row("a"), ok_row("b"), ok_row("c")])
    (tmp_path / "shards" / "run1-00000-0001.tar").unlink()
    prepare_output(str(tmp_path), "fp1")
    assert done_keys(str(tmp_path)) == {"a", "b"}


def test_other_fingerprint_is_refused_unless_overwrite(tmp_path: Path) -> None:
    prepare_output(str(tmp_path), "fp1")
    write_task(tmp_path, [ok_row("a"), rejected_row("r")])
    finalize(str(tmp_path), {"fingerprint": "fp1"})
    (tmp_path / "notes.txt").write_text("not ours")

    with pytest.raises(OutputConflictError, match="fp1"):
        prepare_output(str(tmp_path), "fp2")
    assert (tmp_path / "manifest.json").exists() and done_keys(str(tmp_path)) == {"a", "r"}

    prepare_output(str(tmp_path), "fp2", overwrite=True)
    assert not any((tmp_path / name).exists() for name in ("shards", "index", "rejects", "manifest.json"))
    assert (tmp_path / "notes.txt").read_text() == "not ours"
    assert json.loads((tmp_path / "_run" / "state.json").read_text())["fingerprint"] == "fp2"


def test_unfinished_run_of_other_fingerprint_is_refused(tmp_path: Path) -> None:
    prepare_output(str(tmp_path), "fp1")
    write_task(tmp_path, [ok_row("a")])
    with pytest.raises(OutputConflictError):
        prepare_output(str(tmp_path), "fp2")


def test_same_fingerprint_resumes_and_reopens_the_manifest(tmp_path: Path) -> None:
    prepare_output(str(tmp_path), "fp1")
    write_task(tmp_path, [ok_row("a"), ok_row("b")])
    finalize(str(tmp_path), {"fingerprint": "fp1"})
    prepare_output(str(tmp_path), "fp1")
    assert not (tmp_path / "manifest.json").exists()  # in flux until the resumed run finalizes
    assert done_keys(str(tmp_path)) == {"a", "b"}


def test_done_keys_skips_written_and_rejected_but_retries_failed(tmp_path: Path) -> None:
    assert done_keys(str(tmp_path / "absent")) == set()
    write_task(tmp_path, [ok_row("w"), rejected_row("r"), failed_row("f")])
    assert done_keys(str(tmp_path)) == {"w", "r"}


def test_finalize_counts_each_key_once_by_its_final_outcome(tmp_path: Path) -> None:
    write_task(tmp_path, [failed_row("later_ok"), failed_row("twice"), failed_row("then_rejected")], run_id="run1")
    write_task(tmp_path, [ok_row("later_ok"), failed_row("twice", "oom"), rejected_row("then_rejected", "blurry")],
               run_id="run2")  # fmt: skip
    manifest = finalize(str(tmp_path), {})

    assert manifest["counts"] == {"input": 3, "written": 1, "rejected": 1, "failed": 1}
    assert manifest["reject_reasons"] == {"blurry": 1}
    assert manifest["failure_reasons"] == {"oom": 1}


def test_finalize_of_empty_output(tmp_path: Path) -> None:
    manifest = finalize(str(tmp_path), {"fingerprint": "fp"})
    assert manifest["counts"] == {"input": 0, "written": 0, "rejected": 0, "failed": 0}
    assert manifest["shards"] == [] and manifest["buckets"] == {}


def test_funnel_and_caption_flags_in_the_manifest(tmp_path: Path) -> None:
    flagged = ok_row("flagged")
    flagged["caption_flags"] = json.dumps({"dense": ["repetition", "truncated"], "short": []})
    clean = ok_row("clean")
    clean["caption_flags"] = json.dumps({"dense": [], "short": ["too_short"]})
    rows = [flagged, clean, rejected_row("small", "too_small"), rejected_row("tiny", "too_small")]
    rows += [mark(new_row("copy", "s", b""), REJECTED, "dedup", "duplicate", "clean"), failed_row("boom")]
    write_task(tmp_path, rows, per_shard=10)

    manifest = finalize(str(tmp_path), {}, inputs_read=7)

    assert manifest["funnel"] == {"dedup": {"duplicate": 1}, "filter": {"too_small": 2}, "caption": {"error": 1}}
    assert manifest["caption_flags"] == {
        "dense": {"none": 1, "repetition": 1, "truncated": 1},
        "short": {"none": 1, "too_short": 1},
    }
    assert manifest["counts"] == {"input": 7, "written": 2, "rejected": 3, "failed": 1}
    assert manifest["unaccounted"] == 1  # the readers counted one input that has no outcome


def test_index_files_written_before_a_column_existed_read_as_nulls(tmp_path: Path) -> None:
    write_task(tmp_path, [ok_row("old")])
    index_file = next((tmp_path / "index").glob("*.parquet"))
    table = pq.read_table(index_file).drop_columns(["caption_flags"])
    pq.write_table(table, index_file)

    assert read_index(str(tmp_path), ["key", "caption_flags"]).to_pylist() == [{"key": "old", "caption_flags": None}]
    assert finalize(str(tmp_path), {})["caption_flags"] == {}


def test_the_writer_times_waiting_for_upstream_blocks_apart_from_its_own_work() -> None:
    import time

    from curation.io.writer import _timed

    def slow_upstream():
        for block in ("a", "b"):
            time.sleep(0.05)  # the upstream stages computing the next block
            yield block

    waited = [0.0]
    start = time.perf_counter()
    assert list(_timed(slow_upstream(), waited)) == ["a", "b"]
    assert 0.1 <= waited[0] <= time.perf_counter() - start
