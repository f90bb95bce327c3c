"""curate inspect: the dataset summary, one sample (metadata, captions, feature shapes, shard and members)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.cli import main
from curation.inspect import InspectError, dataset_summary, format_sample, sample_details
from tests.report_helpers import T5_DIM, full_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return full_dataset(tmp_path_factory.mktemp("inspect") / "ds")


def shard_of(dataset: Path, key: str) -> str:
    rows = [row for path in (dataset / "index").glob("*.parquet") for row in pq.read_table(path).to_pylist()]
    return next(row["shard"] for row in rows if row["key"] == key)


def test_summary_counts_reasons_and_duplicates(dataset: Path):
    summary = dataset_summary(str(dataset))
    assert summary["counts"] == {"input": 10, "written": 4, "rejected": 5, "failed": 1}
    assert summary["reject_reasons"] == {
        "duplicate": 1,
        "near_duplicate": 1,
        "not_an_image": 1,
        "nsfw": 1,
        "too_small": 1,
    }
    assert summary["failure_reasons"] == {"error": 1}
    assert summary["duplicates_removed"] == 2 and summary["shards"] == 2
    assert summary["captions"] == ["dense", "short"] and summary["t5_max_length"] == 300


def test_one_sample_from_its_own_shard_only(dataset: Path, tmp_path: Path):
    shard = shard_of(dataset, "img_0")
    with tarfile.open(dataset / "shards" / shard) as tar:
        members = sorted(name for name in tar.getnames() if name.startswith("img_0."))
    copy = tmp_path / "ds"
    (copy / "shards").mkdir(parents=True)
    for name in ("index", "rejects", "manifest.json"):
        src = dataset / name
        (copy / name).symlink_to(src, target_is_directory=src.is_dir())
    (copy / "shards" / shard).symlink_to(dataset / "shards" / shard)  # the other shards are gone: never opened

    details = sample_details(str(copy), "img_0")
    assert details["shard"] == f"shards/{shard}" and sorted(details["members"]) == members
    assert details["features"] == {
        "img_0.t5.npy": {"dtype": "float16", "shape": [4, T5_DIM]},  # 3 words + EOS
        "img_0.t5.short.npy": {"dtype": "float16", "shape": [3, T5_DIM]},
        "img_0.vae.npy": {"dtype": "float16", "shape": [8, 8, 12]},
    }
    text = format_sample(details)
    assert "  dense [ok; 4 T5 tokens; flags: repetition]: word word word" in text
    assert "  short [ok; 3 T5 tokens]: brief brief" in text and "  alt [ok]: a red <b>barn</b>" in text
    assert f"shard     shards/{shard}" in text and "scores: aesthetic 6.0" in text


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("tiny_a", "tiny_a was not written: rejected at filter (too_small): <script>alert(1)</script>"),
        ("crash", "crash was not written: failed at vae (error): RuntimeError: boom"),
        ("nope", "nope: no such sample in {ds} (not in the index nor in the rejects)"),
    ],
)
def test_a_key_that_was_not_written_says_why(dataset: Path, key: str, message: str):
    with pytest.raises(InspectError) as error:
        sample_details(str(dataset), key)
    assert str(error.value) == message.format(ds=dataset)


def test_cli(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["inspect", str(dataset)]) == 0
    assert "counts       input 10  written 4  rejected 5  failed 1" in capsys.readouterr().out
    assert main(["inspect", str(dataset), "img_2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["caption_flags"] == {"short": ["too_short"]}
    assert main(["inspect", str(dataset), "nope"]) == 2
    assert (
        capsys.readouterr().err
        == f"curate inspect: nope: no such sample in {dataset} (not in the index nor in the rejects)\n"
    )
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"curate inspect: {tmp_path / 'missing'} does not exist\n"
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a curated dataset" in capsys.readouterr().err
