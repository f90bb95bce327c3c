"""Transient read errors on a real fsspec filesystem (local files under ``flaky://`` with injected I/O
errors): retried with backoff, FAILED when they persist, never rejected."""

import io
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.io.readers import plan_inputs, read_unit
from curation.io.retry import Retrier, RetryPolicy, is_read_failure, is_retryable
from curation.records import FAILED, OK, REJECTED
from tests.io.read_helpers import (
    FlakyFileSystem,
    by_key,
    image_bytes,
    no_sleep_retry,
    outcome,
    reader_config,
    write,
    write_tar,
)


@pytest.fixture(autouse=True)
def flaky():
    FlakyFileSystem.reset()
    yield FlakyFileSystem
    FlakyFileSystem.reset()


def flaky_uri(path) -> str:
    return f"flaky://{path}"


def read_flaky(uri: str, sleeps: list[float] | None = None, attempts: int = 3, **config) -> list[dict]:
    config = reader_config(**config)
    units = plan_inputs([uri], config).units
    retry = no_sleep_retry(attempts, sleeps)
    return [row for unit in units for row in read_unit(unit, config, retry=retry)]


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(attempts=6, base_delay_s=0.5, max_delay_s=3.0)
    assert [policy.delay(index) for index in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_what_counts_as_transient():
    assert is_retryable(OSError(5, "EIO")) and is_retryable(TimeoutError()) and is_retryable(ConnectionResetError())
    assert not is_retryable(FileNotFoundError()) and is_read_failure(FileNotFoundError())
    assert not is_retryable(ValueError()) and not is_read_failure(ValueError())
    import gzip

    assert not is_read_failure(gzip.BadGzipFile("corrupt data"))


def test_folder_file_failing_twice_is_read_on_the_third_attempt(tmp_path, flaky):
    red = image_bytes()
    write(tmp_path / "in" / "a.png", red)
    flaky.plans[str(tmp_path / "in" / "a.png")] = ["fail", "fail"]
    sleeps: list[float] = []
    (row,) = read_flaky(flaky_uri(tmp_path / "in"), sleeps)
    assert (row["key"], row["status"], row["image"]) == ("a__png", OK, red)
    assert row["source"] == f"flaky://{tmp_path}/in/a.png"
    assert sleeps == [0.01, 0.02]
    assert flaky.opens[str(tmp_path / "in" / "a.png")] == 3


def test_persistent_errors_fail_the_row_and_later_files_get_one_try_until_a_read_works(tmp_path, flaky):
    root = tmp_path / "in"
    for name in ("a", "b", "c", "d"):
        write(root / f"{name}.png", image_bytes())
    flaky.plans[str(root / "a.png")] = ["fail"] * 3  # outlasts the 3 attempts
    flaky.plans[str(root / "b.png")] = ["fail"]  # single try after a's failure: fails
    flaky.plans[str(root / "d.png")] = ["fail"]  # c worked: full retries again
    rows = by_key(read_flaky(flaky_uri(root)))
    assert {key: row["status"] for key, row in rows.items()} == {
        "a__png": FAILED, "b__png": FAILED, "c__png": OK, "d__png": OK,
    }  # fmt: skip
    assert outcome(rows["a__png"]) == (FAILED, "read", "read_error")
    assert rows["a__png"]["detail"] == f"OSError: [Errno 5] injected I/O error: '{root}/a.png'"
    assert [flaky.opens[str(root / f"{name}.png")] for name in "abcd"] == [3, 1, 1, 2]


def test_tar_listing_and_member_reads_are_retried(tmp_path, flaky):
    red, blue = image_bytes((255, 0, 0)), image_bytes((0, 0, 255))
    shard = write_tar(tmp_path / "s.tar", [("k1.png", red), ("k1.txt", b"one"), ("k2.png", blue)])
    # open 1: listing fails; 2: listing works; 3: reading k1 breaks after 2 reads; 4: reopened, works
    flaky.plans[str(shard)] = ["fail", "ok", 2, "ok"]
    rows = read_flaky(flaky_uri(shard))
    assert [(row["key"], row["status"], row["image"], row["alt"]) for row in rows] == [
        ("s_k1", OK, red, "one"),
        ("s_k2", OK, blue, None),
    ]
    assert flaky.opens[str(shard)] == 4


def test_tar_listing_that_keeps_failing_is_one_failed_row(tmp_path, flaky):
    shard = write_tar(tmp_path / "s.tar", [("k1.png", image_bytes())])
    flaky.plans[str(shard)] = ["fail"] * 3
    (row,) = read_flaky(flaky_uri(shard))
    assert (row["key"], *outcome(row), row["source"]) == ("s", FAILED, "read", "read_error", f"flaky://{shard}")


def test_tar_member_that_keeps_failing_is_a_failed_sample(tmp_path, flaky):
    shard = write_tar(tmp_path / "s.tar", [("k1.png", b"first"), ("k2.png", b"second")])
    flaky.plans[str(shard)] = ["ok", "fail", "fail", "fail", "ok"]  # k1 outlasts retries, k2 gets one try
    rows = read_flaky(flaky_uri(shard))
    assert [(row["key"], row["status"], row["reason"]) for row in rows] == [
        ("s_k1", FAILED, "read_error"),
        ("s_k2", OK, None),
    ]
    assert rows[0]["source"] == f"flaky://{shard}#k1.png"


def write_parquet(path, count: int, row_group_size: int) -> list[bytes]:
    """Incompressible 1 KB cells: a file bigger than pyarrow's footer read, read row group by row group."""
    images = [random.Random(index).randbytes(1000) for index in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"image": images}), path, row_group_size=row_group_size)
    return images


def test_parquet_stream_broken_midway_resumes_at_the_row_where_it_broke(tmp_path, flaky):
    path = tmp_path / "t" / "rows.parquet"
    images = write_parquet(path, 150, row_group_size=20)
    # open 1: footer; 2: data, breaks after 6 reads; 3: reopened, works
    flaky.plans[str(path)] = ["ok", 6, "ok"]
    rows = read_flaky(flaky_uri(path))
    assert [row["key"] for row in rows] == [f"rows_{index:08d}" for index in range(150)]
    assert [row["image"] for row in rows] == images
    assert {row["status"] for row in rows} == {OK}
    assert flaky.opens[str(path)] == 3


def test_parquet_data_that_stays_unreachable_fails_every_remaining_row(tmp_path, flaky):
    path = tmp_path / "t" / "rows.parquet"
    write_parquet(path, 5, row_group_size=5)
    flaky.plans[str(path)] = ["ok"] + ["fail"] * 3
    rows = read_flaky(flaky_uri(path))
    assert [(row["key"], row["status"], row["reason"]) for row in rows] == [
        (f"rows_{index:08d}", FAILED, "read_error") for index in range(5)
    ]
    assert rows[4]["source"] == f"flaky://{path}#4"


def test_parquet_referenced_file_errors_fail_and_missing_files_are_rejected(tmp_path, flaky):
    write(tmp_path / "d" / "ok.png", b"ok")
    write(tmp_path / "d" / "flaky.png", b"later")
    pq.write_table(pa.table({"path": ["ok.png", "flaky.png", "gone.png"]}), tmp_path / "d" / "p.parquet")
    flaky.plans[str(tmp_path / "d" / "flaky.png")] = ["fail"] * 3
    rows = read_flaky(flaky_uri(tmp_path / "d" / "p.parquet"), path_column="path")
    assert [(row["status"], row["reason"]) for row in rows] == [
        (OK, None),
        (FAILED, "read_error"),
        (REJECTED, "missing_file"),
    ]


def test_retrier_gives_up_at_once_on_errors_that_retrying_cannot_fix():
    calls: list[int] = []

    def missing() -> bytes:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        Retrier(no_sleep_retry(5)).call(missing)
    assert len(calls) == 1


def test_an_io_error_at_the_start_of_a_gzipped_tar_is_not_taken_for_bad_data(tmp_path, flaky):
    path = tmp_path / "z.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("k.jpg")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"jpeg"))
    flaky.plans[str(path)] = [0]  # the listing's very first read breaks (tarfile says "not a gzip file")
    (row,) = read_flaky(flaky_uri(path))
    assert (row["key"], row["status"], row["image"]) == ("z_k", OK, b"jpeg")
    assert flaky.opens[str(path)] == 3
