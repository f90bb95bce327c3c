import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.config import ReaderConfig
from curation.io.keys import sanitize_key
from curation.io.readers import PARQUET_BATCH_ROWS, iter_unit, plan_inputs, read_unit
from curation.records import COLUMNS, OK, REJECTED


def image_bytes(color=(200, 30, 30), size=(8, 6), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read_all(units, config: ReaderConfig | None = None):
    return [row for unit in units for row in read_unit(unit, config or ReaderConfig())]


def by_key(rows):
    return {row["key"]: row for row in rows}


# ------------------------------------------------------------------ image folders


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write(root / "a.jpg", image_bytes(fmt="JPEG"))
    write(root / "a.txt", "  caption from text  \n")
    write(root / "b.png", image_bytes())
    write(root / "b.json", json.dumps({"url": "x", "alt": "caption from json"}))
    write(root / "sub" / "c.JPEG", image_bytes(fmt="JPEG"))
    write(root / "sub" / "deeper" / "d.webp", image_bytes(fmt="WEBP"))
    write(root / "f.jpg", image_bytes(fmt="JPEG"))
    write(root / "f.png", image_bytes())
    write(root / "notes.md", "not an input")
    write(root / ".hidden" / "e.jpg", image_bytes(fmt="JPEG"))
    write(root / "._g.jpg", b"AppleDouble junk")
    return root


def test_folder_plan_is_recursive_case_insensitive_and_skips_hidden(image_folder):
    units = plan_inputs([str(image_folder)], ReaderConfig())
    assert [unit["kind"] for unit in units] == ["folder"]
    relpaths = [entry[0] for entry in units[0]["files"]]
    assert relpaths == ["a.jpg", "b.png", "f.jpg", "f.png", "sub/c.JPEG", "sub/deeper/d.webp"]
    assert units[0]["root"] == str(image_folder)


def test_folder_plan_finds_sidecars_and_is_json_serializable(image_folder):
    units = plan_inputs([str(image_folder)], ReaderConfig())
    assert json.loads(json.dumps(units)) == units
    sidecars = {relpath: sidecar for relpath, _, sidecar in units[0]["files"]}
    assert sidecars["a.jpg"] == "a.txt"
    assert sidecars["b.png"] == "b.json"
    assert sidecars["sub/c.JPEG"] is None


def test_folder_plan_is_chunked_by_files_per_task(image_folder):
    units = plan_inputs([str(image_folder)], ReaderConfig(files_per_task=4))
    assert [len(unit["files"]) for unit in units] == [4, 2]


def test_folder_rows_carry_bytes_source_and_sidecar_captions(image_folder):
    rows = by_key(read_all(plan_inputs([str(image_folder)], ReaderConfig())))
    assert len(rows) == 6
    assert rows["a"]["alt"] == "caption from text"
    assert rows["b"]["alt"] == "caption from json"
    assert rows["a"]["source"] == str(image_folder / "a.jpg")
    assert rows["a"]["image"] == (image_folder / "a.jpg").read_bytes()
    assert all(row["status"] == OK and set(row) == set(COLUMNS) for row in rows.values())


def test_folder_keys_are_unique_for_shared_stems_and_nested_paths(image_folder):
    rows = read_all(plan_inputs([str(image_folder)], ReaderConfig()))
    keys = [row["key"] for row in rows]
    assert len(set(keys)) == len(keys)
    assert sanitize_key("sub/deeper/d") in keys
    assert "f" not in keys


def test_keys_are_stable_across_plans_and_moves(image_folder, tmp_path):
    first = plan_inputs([str(image_folder)], ReaderConfig())
    assert plan_inputs([str(image_folder)], ReaderConfig()) == first
    moved = shutil.copytree(image_folder, tmp_path / "elsewhere" / "copy")
    moved_plan = plan_inputs([str(moved)], ReaderConfig())
    assert [entry[1] for entry in moved_plan[0]["files"]] == [entry[1] for entry in first[0]["files"]]


def test_single_image_file_and_glob_inputs(image_folder):
    (single,) = plan_inputs([str(image_folder / "a.jpg")], ReaderConfig())
    assert single == {"kind": "folder", "root": str(image_folder), "files": [["a.jpg", "a", "a.txt"]]}
    (globbed,) = plan_inputs([str(image_folder / "sub" / "**" / "*.webp")], ReaderConfig())
    assert globbed["files"] == [["deeper/d.webp", sanitize_key("deeper/d"), None]]


def test_missing_input_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_inputs([str(tmp_path / "nope")], ReaderConfig())
    with pytest.raises(FileNotFoundError, match="matches no file"):
        plan_inputs([str(tmp_path / "*.tar")], ReaderConfig())


def test_single_file_of_unknown_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not an image"):
        plan_inputs([str(write(tmp_path / "list.csv", "a,b"))], ReaderConfig())


def test_file_vanishing_after_planning_becomes_an_unreadable_row(image_folder):
    units = plan_inputs([str(image_folder)], ReaderConfig())
    (image_folder / "b.png").unlink()
    row = by_key(read_all(units))["b"]
    assert (row["status"], row["stage"], row["reason"]) == (REJECTED, "read", "unreadable")
    assert "b.png" in row["detail"]


# ------------------------------------------------------------------ webdataset tars


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            add_member(tar, name, data)
    return path


def test_tar_groups_non_contiguous_members_by_webdataset_key(tmp_path):
    red, blue = image_bytes((255, 0, 0)), image_bytes((0, 0, 255), fmt="JPEG")
    shard = write_tar(
        tmp_path / "shards" / "shard-0000.tar",
        [
            ("s1.png", red),
            ("s2.jpg", blue),
            ("s1.txt", b"first caption"),
            ("s2.json", json.dumps({"caption": "second caption"}).encode()),
            ("s3.txt", b"caption without image"),
            ("dir/s4.seg.png", red),
            ("dir/s4.jpg", blue),
            ("__key__", b"metadata"),
        ],
    )
    (unit,) = plan_inputs([str(tmp_path / "shards")], ReaderConfig())
    assert unit == {"kind": "tar", "uri": str(shard)}
    rows = read_unit(unit, ReaderConfig())
    assert [row["key"] for row in rows] == ["s1", "s2", "s3", sanitize_key("dir/s4")]
    s1, s2, s3, s4 = rows
    assert (s1["image"], s1["alt"], s1["source"]) == (red, "first caption", f"{shard}#s1.png")
    assert (s2["image"], s2["alt"]) == (blue, "second caption")
    assert (s3["status"], s3["reason"], s3["image"]) == (REJECTED, "no_image", None)
    assert s4["image"] == blue and s4["status"] == OK


def test_truncated_tar_keeps_readable_samples_and_accounts_for_the_rest(tmp_path):
    members = [(f"{index:04d}.png", image_bytes(size=(64, 64)) + bytes(4000)) for index in range(3)]
    whole = write_tar(tmp_path / "whole.tar", members).read_bytes()
    truncated = write(tmp_path / "cut" / "truncated.tar", whole[: 512 + 4500 + 1024])  # inside 0001.png's data
    rows = read_unit({"kind": "tar", "uri": str(truncated)}, ReaderConfig())
    assert rows[0]["key"] == "0000" and rows[0]["status"] == OK
    assert rows[1]["key"] == "0001" and rows[1]["source"] == f"{truncated}#0001.png"
    assert {row["reason"] for row in rows[1:]} == {"unreadable_tar"}
    assert all(row["status"] == REJECTED for row in rows[1:])
    assert len({row["key"] for row in rows}) == len(rows)


def test_a_file_that_is_not_a_tar_becomes_one_rejected_row(tmp_path):
    garbage = write(tmp_path / "garbage.tar", b"x" * 100)
    (row,) = read_unit({"kind": "tar", "uri": str(garbage)}, ReaderConfig())
    assert (row["status"], row["reason"], row["source"]) == (REJECTED, "unreadable_tar", str(garbage))


# ------------------------------------------------------------------ parquet


def test_parquet_with_bytes_column_and_captions(tmp_path):
    red = image_bytes()
    path = tmp_path / "data-01.parquet"
    pq.write_table(pa.table({"image": [red, None], "caption": [" a cat ", "a dog"]}), path)
    config = ReaderConfig(caption_column="caption")
    (unit,) = plan_inputs([str(path)], config)
    first, second = read_unit(unit, config)
    assert (first["key"], first["image"], first["alt"]) == ("data-01_00000000", red, "a cat")
    assert first["source"] == f"{path}#0"
    assert (second["key"], second["status"], second["reason"]) == ("data-01_00000001", REJECTED, "no_image")


def test_parquet_with_hugging_face_struct_column_and_key_column(tmp_path):
    red, blue = image_bytes((255, 0, 0)), image_bytes((0, 0, 255))
    write(tmp_path / "imgs" / "b.png", blue)
    images = [{"bytes": red, "path": None}, {"bytes": None, "path": "imgs/b.png"}]
    pq.write_table(pa.table({"image": images, "id": ["img/1", "2"]}), tmp_path / "hf.parquet")
    config = ReaderConfig(key_column="id")
    rows = read_all(plan_inputs([str(tmp_path / "hf.parquet")], config), config)
    assert [row["key"] for row in rows] == [sanitize_key("img/1"), "2"]
    assert [row["image"] for row in rows] == [red, blue]


def test_parquet_with_path_column(tmp_path):
    red = image_bytes()
    absolute = write(tmp_path / "elsewhere" / "abs.png", red)
    write(tmp_path / "data" / "imgs" / "rel.png", red)
    paths = ["imgs/rel.png", str(absolute), "imgs/missing.png"]
    pq.write_table(pa.table({"path": paths}), write(tmp_path / "data" / "p.parquet", b""))
    config = ReaderConfig(path_column="path")
    rows = read_all(plan_inputs([str(tmp_path / "data" / "p.parquet")], config), config)
    assert [row["image"] for row in rows[:2]] == [red, red]
    assert rows[0]["source"] == f"{tmp_path}/data/imgs/rel.png"
    assert (rows[2]["status"], rows[2]["reason"]) == (REJECTED, "unreadable")


def test_parquet_is_read_across_batches_with_continuous_row_indices(tmp_path):
    count = PARQUET_BATCH_ROWS + 6
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"image": [b"%d" % i for i in range(count)]}), path, row_group_size=10)
    rows = list(iter_unit({"kind": "parquet", "uri": str(path)}, ReaderConfig()))
    assert [row["key"] for row in rows] == [f"many_{i:08d}" for i in range(count)]
    assert rows[-1]["image"] == b"%d" % (count - 1)


def test_parquet_without_an_image_column_becomes_one_rejected_row(tmp_path):
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"picture": [b"x"]}), path)
    (row,) = read_unit({"kind": "parquet", "uri": str(path)}, ReaderConfig())
    assert (row["status"], row["reason"]) == (REJECTED, "unreadable")
    assert "'image'" in row["detail"] and "picture" in row["detail"]


def test_directory_mixing_tars_parquets_and_images_plans_all_of_them(tmp_path):
    write_tar(tmp_path / "mix" / "b.tar", [("x.png", image_bytes())])
    pq.write_table(pa.table({"image": [image_bytes()]}), tmp_path / "mix" / "a.parquet")
    write(tmp_path / "mix" / "c.png", image_bytes())
    kinds = [unit["kind"] for unit in plan_inputs([str(tmp_path / "mix")], ReaderConfig())]
    assert sorted(kinds) == ["folder", "parquet", "tar"]


# ------------------------------------------------------------------ any fsspec filesystem


def test_inputs_on_a_non_local_fsspec_filesystem_are_planned_and_read():
    import fsspec

    fs = fsspec.filesystem("memory")
    if fs.exists("/remote"):
        fs.rm("/remote", recursive=True)
    members = io.BytesIO()
    with tarfile.open(fileobj=members, mode="w") as tar:
        for name, data in [("k1.jpg", image_bytes(fmt="JPEG")), ("k1.txt", b"remote caption")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    fs.pipe("/remote/shards/shard-0.tar", members.getvalue())
    fs.pipe("/remote/folder/x.png", image_bytes())
    table = io.BytesIO()
    pq.write_table(pa.table({"image": [image_bytes()]}), table)
    fs.pipe("/remote/table/part.parquet", table.getvalue())

    units = plan_inputs(["memory://remote/shards", "memory://remote/folder", "memory://remote/table"], ReaderConfig())
    assert [unit["kind"] for unit in units] == ["tar", "folder", "parquet"]
    rows = by_key(read_all(units))
    assert rows["k1"]["alt"] == "remote caption" and rows["k1"]["source"].startswith("memory://")
    assert rows["x"]["status"] == OK and rows["part_00000000"]["status"] == OK


def test_same_relative_path_under_two_inputs_gets_distinct_stable_keys(tmp_path):
    for name in ("first", "second"):
        write(tmp_path / name / "photos" / "x.jpg", image_bytes(fmt="JPEG"))
        write(tmp_path / name / f"only_{name}.png", image_bytes())
    inputs = [str(tmp_path / "first"), str(tmp_path / "second")]
    rows = read_all(plan_inputs(inputs, ReaderConfig()))
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == 4
    assert {"only_first", "only_second"} <= set(keys)  # keys that do not collide stay plain
    assert sorted(keys) == sorted(row["key"] for row in read_all(plan_inputs(inputs, ReaderConfig())))
    assert len(read_all(plan_inputs([inputs[0], inputs[0]], ReaderConfig()))) == 2  # a repeated input is read once
