"""verify_dataset: a sound dataset passes; each kind of corruption is reported."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from ray.data._internal.execution.interfaces import TaskContext

from curation.io.layout import npy_bytes
from curation.io.writer import ShardSink, finalize
from curation.recompute import (
    FP32_TOLERANCE,
    LOW_PRECISION_TOLERANCE,
    pick_samples,
    recompute_problems,
    relative_error,
    tolerance,
)
from curation.records import REJECTED, Row, mark, new_row, rows_to_table
from curation.verify import main, verify_dataset

SHARD = "run1-00000-0000.tar"


def ok_row(key: str) -> Row:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buffer, format="JPEG")
    image = buffer.getvalue()
    rng = np.random.default_rng(0)
    row = new_row(key, f"file:///in/{key}.jpg", image)
    row.update(
        image_ext="jpg", width=40, height=30, sha256=hashlib.sha256(image).hexdigest(), phash="8f373714acfcf4d0",
        filter_notes="{}", bucket="0.75", bucket_h=48, bucket_w=64, captions=json.dumps({"dense": f"Blue {key}."}),
        caption_status=json.dumps({"dense": "ok"}),
        t5=npy_bytes(rng.standard_normal((4, 8)).astype(np.float16)), t5_tokens=4,
        t5_truncated=False, vae=npy_bytes(rng.standard_normal((8, 6, 8)).astype(np.float16)),
    )  # fmt: skip
    return row


def build_dataset(path: Path, rows: list[Row], per_shard: int = 3) -> Path:
    ShardSink(str(path), per_shard, "run1").write([rows_to_table(rows)], TaskContext(task_idx=0, op_name="Write"))
    finalize(str(path), {"fingerprint": "fp"})
    return path


def good_rows(count: int = 5) -> list[Row]:
    rejected = mark(new_row("small", "file:///in/small.jpg", b"x"), REJECTED, "filter", "too_small")
    return [ok_row(f"img_{i}") for i in range(count)] + [rejected]


def rewrite_tar(path: Path, edit: Callable[[dict[str, bytes]], dict[str, bytes]]) -> None:
    with tarfile.open(path) as tar:
        members = {info.name: tar.extractfile(info).read() for info in tar.getmembers()}
    with tarfile.open(path, "w") as tar:
        for name, data in edit(members).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return build_dataset(tmp_path / "ds", good_rows())


def test_sound_dataset_passes(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    assert verify_dataset(str(dataset)) == []
    assert verify_dataset(str(dataset), fraction=0.01) == []
    assert main([str(dataset)]) == 0
    assert "OK" in capsys.readouterr().out


def problems_after(dataset: Path, edit: Callable[[dict[str, bytes]], dict[str, bytes]]) -> list[str]:
    rewrite_tar(dataset / "shards" / SHARD, edit)
    return verify_dataset(str(dataset))


def replace(name: str, data: bytes) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    return lambda members: {**members, name: data}


def test_wrong_vae_shape(dataset: Path) -> None:
    problems = problems_after(dataset, replace("img_0.vae.npy", npy_bytes(np.zeros((8, 8, 8), np.float16))))
    assert len(problems) == 1 and "img_0.vae.npy" in problems[0] and "(8, 6, 8)" in problems[0]


def test_wrong_dtype_and_token_count_of_t5(dataset: Path) -> None:
    problems = problems_after(dataset, replace("img_1.t5.npy", npy_bytes(np.zeros((3, 8), np.float32))))
    assert len(problems) == 1 and "img_1.t5.npy" in problems[0]


def test_pickled_npy(dataset: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # what npy_bytes refuses to write
    pickled = buffer.getvalue()
    problems = problems_after(dataset, replace("img_0.t5.npy", pickled))
    assert len(problems) == 1 and "allow_pickle=False" in problems[0]


def test_missing_member(dataset: Path) -> None:
    problems = problems_after(dataset, lambda m: {n: d for n, d in m.items() if n != "img_2.txt"})
    assert problems == [f"{SHARD}: img_2: missing members ['txt']"]


def test_missing_sample(dataset: Path) -> None:
    problems = problems_after(dataset, lambda m: {n: d for n, d in m.items() if not n.startswith("img_2.")})
    assert len(problems) == 1 and "img_2" in problems[0] and "not in the tar" in problems[0]


def test_duplicate_key_within_a_shard(dataset: Path) -> None:
    def duplicate(members: dict[str, bytes]) -> dict[str, bytes]:
        copies = {n.replace("img_0.", "x/img_0."): d for n, d in members.items() if n.startswith("img_0.")}
        return {**members, **copies}  # same key again, after the others

    problems = problems_after(dataset, duplicate)
    assert any("img_0 appears twice" in p for p in problems)


def test_duplicate_key_across_shards(tmp_path: Path) -> None:
    rows = good_rows(2)
    path = build_dataset(tmp_path / "ds", rows)
    ShardSink(str(path), 3, "run2").write([rows_to_table([ok_row("img_0")])], TaskContext(task_idx=0, op_name="Write"))
    finalize(str(path), {})
    problems = verify_dataset(str(path))
    assert any("duplicate keys" in p and "img_0" in p for p in problems)


def test_json_size_disagrees_with_image(dataset: Path) -> None:
    def widen(members: dict[str, bytes]) -> dict[str, bytes]:
        meta = json.loads(members["img_0.json"])
        meta["width"] = 41
        return {**members, "img_0.json": json.dumps(meta).encode()}

    problems = problems_after(dataset, widen)
    assert any("40x30" in p for p in problems) and any("index has 40" in p for p in problems)


def test_caption_text_differs_from_json(dataset: Path) -> None:
    problems = problems_after(dataset, replace("img_0.txt", b"something else"))
    assert problems == [f"{SHARD}: img_0.txt differs from captions['dense']"]


def test_json_missing_field(dataset: Path) -> None:
    def drop_sha(members: dict[str, bytes]) -> dict[str, bytes]:
        meta = json.loads(members["img_1.json"])
        del meta["sha256"]
        return {**members, "img_1.json": json.dumps(meta).encode()}

    assert any("sha256" in p for p in problems_after(dataset, drop_sha))


def test_sideways_exif_image_is_compared_upright(tmp_path: Path) -> None:
    row = ok_row("rotated")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30x40, shown 40x30
    buffer = io.BytesIO()
    Image.new("RGB", (30, 40)).save(buffer, format="JPEG", exif=exif)
    row.update(image=buffer.getvalue(), sha256=hashlib.sha256(buffer.getvalue()).hexdigest())
    assert verify_dataset(str(build_dataset(tmp_path / "ds", [row]))) == []


def test_missing_manifest_and_shard(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    (dataset / "manifest.json").unlink()
    (dataset / "shards" / "run1-00000-0001.tar").unlink()
    problems = verify_dataset(str(dataset))
    assert any("manifest.json missing" in p for p in problems)
    assert any("missing shards" in p and "run1-00000-0001.tar" in p for p in problems)
    assert main([str(dataset)]) == 1
    assert "manifest.json missing" in capsys.readouterr().err


def test_counts_that_do_not_add_up(dataset: Path) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    manifest["counts"]["input"] += 1
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    assert [p for p in verify_dataset(str(dataset)) if "do not add up" in p]


def test_truncated_tar(dataset: Path) -> None:
    path = dataset / "shards" / SHARD
    path.write_bytes(path.read_bytes()[:700])
    assert [p for p in verify_dataset(str(dataset)) if p.startswith(f"{SHARD}: unreadable tar")]


# ---------------------------------------------------------------- --recompute


def test_tolerance_follows_the_recorded_numerics() -> None:
    assert tolerance({"device": "cpu", "dtype": "float32"}) == FP32_TOLERANCE == 2e-3
    for record in ({"device": "cpu", "dtype": "bfloat16"}, {"device": "cuda", "dtype": "float32"}, {}, None):
        assert tolerance(record) == LOW_PRECISION_TOLERANCE == 0.1


def test_relative_error_and_sample_choice() -> None:
    expected = np.array([[2.0, -4.0], [1.0, 0.5]], np.float32)
    assert relative_error(expected.astype(np.float16), expected) == 0.0
    assert relative_error(np.array([[2.0, -3.0], [1.0, 0.5]], np.float16), expected) == 0.25  # |1| / max |4|
    assert relative_error(expected[:1], expected) == float("inf")
    keys = [f"k{i}" for i in range(10)]
    assert pick_samples(keys, 0.25, seed=3) == pick_samples(list(reversed(keys)), 0.25, seed=3)
    assert len(pick_samples(keys, 0.25, seed=3)) == 3 and pick_samples(keys, 0.0, seed=3) == []
    assert pick_samples(keys, 1.0, seed=1) == sorted(keys)


def demo_samples(dataset: Path) -> dict[str, tuple[str, dict]]:
    """{key: (shard, KEY.json)} of a built dataset."""
    found = {}
    for shard in sorted((dataset / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                if info.name.endswith(".json"):
                    found[info.name.removesuffix(".json")] = (shard.name, json.loads(tar.extractfile(info).read()))
    return found


def first_pair(metas: dict[str, dict], same: Callable[[dict], Any], differ: Callable[[dict], Any]) -> tuple[str, str]:
    """The first two keys (sorted) that agree on ``same`` and disagree on ``differ``."""
    keys = sorted(metas)
    for index, first in enumerate(keys):
        for second in keys[index + 1 :]:
            a, b = metas[first], metas[second]
            if same(a) == same(b) and differ(a) != differ(b):
                return first, second
    raise AssertionError("the demo dataset has no such pair")


def swap_member(dataset: Path, shards: dict[str, str], first: str, second: str, member: str) -> None:
    """Exchange ``KEY.member`` of two samples, rewriting the shard(s) that hold them."""
    contents = {}
    for key in (first, second):
        with tarfile.open(dataset / "shards" / shards[key]) as tar:
            contents[key] = tar.extractfile(f"{key}.{member}").read()
    swapped = {f"{first}.{member}": contents[second], f"{second}.{member}": contents[first]}
    for shard in {shards[first], shards[second]}:
        rewrite_tar(dataset / "shards" / shard, lambda members: {n: swapped.get(n, d) for n, d in members.items()})


def test_recompute_passes_on_the_demo_dataset(demo_dataset: Path, capsys: pytest.CaptureFixture) -> None:
    from curation.cli import main as curate

    assert curate(["verify", str(demo_dataset), "--recompute", "1.0"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"0 problem(s) in {demo_dataset}")


def test_recompute_names_the_samples_of_swapped_features(
    demo_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from curation.cli import main as curate

    copy = tmp_path / "swapped"
    shutil.copytree(demo_dataset, copy)
    found = demo_samples(copy)
    shards, metas = {key: shard for key, (shard, _) in found.items()}, {key: meta for key, (_, meta) in found.items()}
    t5_pair = first_pair(metas, lambda m: m["t5_tokens"], lambda m: m["captions"]["dense"])
    vae_pair = first_pair(metas, lambda m: m["bucket_hw"], lambda m: m["sha256"])
    swap_member(copy, shards, *t5_pair, "t5.npy")
    swap_member(copy, shards, *vae_pair, "vae.npy")
    assert verify_dataset(str(copy)) == []  # shapes and counts still agree: only a re-encode sees it

    assert curate(["verify", str(copy), "--recompute", "1.0", "--seed", "7"]) == 1
    lines = capsys.readouterr().out.splitlines()
    flagged = {line.split(": ", 2)[1].split(":")[0] for line in lines if "differs from a re-encode" in line}
    assert flagged == {f"{key}.t5.npy" for key in t5_pair} | {f"{key}.vae.npy" for key in vae_pair}
    keys = sorted({*t5_pair, *vae_pair})
    assert f"recompute: {len(keys)} of {len(metas)} samples differ from a re-encode: {', '.join(keys)}" in lines


def test_recompute_refuses_models_whose_weights_changed(demo_dataset: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demo_dataset, copy, ignore=shutil.ignore_patterns("shards"))
    manifest = json.loads((copy / "manifest.json").read_text())
    recorded = manifest["models"]["vae"]["weights_sha256_sampled"]
    manifest["models"]["vae"]["weights_sha256_sampled"] = "0123456789abcdef"  # as if re-saved since the build
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = recompute_problems(str(copy), 1.0)
    assert problems == [
        f"models.vae: the weights at {manifest['config']['vae']['model']['path']} changed since the build "
        f"(0123456789abcdef -> {recorded}): cannot re-encode"
    ]
