import io
import json
import shutil
import tarfile
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.io.keys import path_key, sanitize_key
from curation.io.parquet_reader import read_layout, records_from
from curation.io.readers import PARQUET_BATCH_ROWS, iter_unit, plan_inputs, read_unit, unit_id
from curation.records import COLUMNS, FAILED, OK, REJECTED
from tests.io.read_helpers import by_key, image_bytes, outcome, read_all, reader_config, write, write_tar

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
    write(root / "notes.md", "not an image, still an input")
    write(root / ".hidden" / "e.jpg", image_bytes(fmt="JPEG"))
    write(root / "._g.jpg", b"AppleDouble junk")
    return root


def files_of(plan) -> list[dict]:
    return [entry for unit in plan.units if unit["kind"] == "folder" for entry in unit["files"]]


def test_folder_plan_takes_every_visible_file_recursively(image_folder):
    plan = plan_inputs([str(image_folder)], reader_config())
    assert [unit["kind"] for unit in plan.units] == ["folder"]
    assert [entry["path"] for entry in files_of(plan)] == [
        "a.jpg", "b.png", "f.jpg", "f.png", "notes.md", "sub/c.JPEG", "sub/deeper/d.webp",
    ]  # fmt: skip
    assert plan.units[0]["root"] == str(image_folder)
    assert (plan.sidecars, plan.skipped_by_extension, plan.hidden) == (2, 0, 2)
    assert plan.counts() == {"sidecars": 2, "skipped_by_extension": 0, "hidden": 2}


def test_folder_plan_pairs_sidecars_and_is_json_serializable(image_folder):
    plan = plan_inputs([str(image_folder)], reader_config())
    assert json.loads(json.dumps(plan.units)) == plan.units
    sidecars = {entry["path"]: entry["sidecar"] for entry in files_of(plan)}
    assert sidecars["a.jpg"] == "a.txt"
    assert sidecars["b.png"] == "b.json"
    assert sidecars["sub/c.JPEG"] is None


def test_units_carry_a_stable_content_id(image_folder):
    first = plan_inputs([str(image_folder)], reader_config(files_per_task=3)).units
    again = plan_inputs([str(image_folder)], reader_config(files_per_task=3)).units
    assert [unit["unit_id"] for unit in first] == [unit["unit_id"] for unit in again]
    assert len({unit["unit_id"] for unit in first}) == len(first) == 3
    assert all(unit["unit_id"] == unit_id(unit) for unit in first)
    assert len(first[0]["unit_id"]) == 32


def test_folder_plan_is_chunked_by_files_per_task(image_folder):
    plan = plan_inputs([str(image_folder)], reader_config(files_per_task=4))
    assert [len(unit["files"]) for unit in plan.units] == [4, 3]


def test_folder_rows_carry_bytes_source_and_sidecar_captions(image_folder):
    rows = by_key(read_all(plan_inputs([str(image_folder)], reader_config()).units))
    assert sorted(rows) == sorted(
        ["a__jpg", "b__png", "f__jpg", "f__png", "notes__md", "sub--c__JPEG", "sub--deeper--d__webp"]
    )
    assert rows["a__jpg"]["alt"] == "caption from text"
    assert rows["b__png"]["alt"] == "caption from json"
    assert rows["f__jpg"]["alt"] is None
    assert rows["a__jpg"]["source"] == str(image_folder / "a.jpg")
    assert rows["a__jpg"]["image"] == (image_folder / "a.jpg").read_bytes()
    assert rows["notes__md"]["image"] == b"not an image, still an input"  # the filter decides by content
    assert all(row["status"] == OK and set(row) == set(COLUMNS) for row in rows.values())


def test_adding_a_file_with_the_same_stem_does_not_rekey_the_others(image_folder):
    before = {entry["path"]: entry["key"] for entry in files_of(plan_inputs([str(image_folder)], reader_config()))}
    write(image_folder / "a.png", image_bytes())
    after = {entry["path"]: entry["key"] for entry in files_of(plan_inputs([str(image_folder)], reader_config()))}
    assert after == {**before, "a.png": "a__png"}


def test_keys_are_stable_across_plans_and_moves(image_folder, tmp_path):
    first = files_of(plan_inputs([str(image_folder)], reader_config()))
    moved = shutil.copytree(image_folder, tmp_path / "elsewhere" / "copy")
    assert [e["key"] for e in files_of(plan_inputs([str(moved)], reader_config()))] == [e["key"] for e in first]


def test_orphan_sidecars_are_rejected_inputs(tmp_path):
    root = tmp_path / "docs"
    write(root / "README.txt", "read me")
    write(root / "notes.json", "{}")
    write(root / "photo.jpg", image_bytes(fmt="JPEG"))
    write(root / "photo.txt", "a photo")
    plan = plan_inputs([str(root)], reader_config())
    assert plan.sidecars == 1
    rows = by_key(read_all(plan.units))
    assert sorted(rows) == ["README__txt", "notes__json", "photo__jpg"]
    assert outcome(rows["README__txt"]) == (REJECTED, "read", "not_an_image")
    assert rows["README__txt"]["detail"].startswith("text file with no file of the same name beside it")
    assert rows["notes__json"]["detail"].startswith("JSON file with no file of the same name")
    assert rows["README__txt"]["source"] == str(root / "README.txt")
    assert rows["photo__jpg"]["alt"] == "a photo"


def test_extension_allow_list_skips_and_counts(image_folder):
    write(image_folder / "orphan.txt", "no image")
    config = reader_config(extensions=["jpg", ".PNG"])
    plan = plan_inputs([str(image_folder)], config)
    assert [entry["path"] for entry in files_of(plan)] == ["a.jpg", "b.png", "f.jpg", "f.png"]
    # notes.md, c.JPEG, d.webp and the orphan sidecar are left out; a.txt and b.json are consumed
    assert (plan.sidecars, plan.skipped_by_extension, plan.hidden) == (2, 4, 2)


def test_single_file_and_glob_inputs_probe_their_sidecars(image_folder):
    (single,) = plan_inputs([str(image_folder / "a.jpg")], reader_config()).units
    assert single["root"] == str(image_folder)
    assert single["files"] == [{"path": "a.jpg", "key": "a__jpg", "sidecar": "a.txt"}]
    plan = plan_inputs([str(image_folder / "sub" / "**" / "*.webp")], reader_config())
    assert plan.units[0]["files"] == [{"path": "deeper/d.webp", "key": "deeper--d__webp", "sidecar": None}]


def test_a_single_file_of_any_type_is_an_input(tmp_path):
    (unit,) = plan_inputs([str(write(tmp_path / "list.csv", "a,b"))], reader_config()).units
    (row,) = read_unit(unit, reader_config())
    assert (row["key"], row["status"], row["image"]) == ("list__csv", OK, b"a,b")


def test_missing_input_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_inputs([str(tmp_path / "nope")], reader_config())
    with pytest.raises(FileNotFoundError, match="matches no file"):
        plan_inputs([str(tmp_path / "*.tar")], reader_config())


def test_file_vanishing_after_planning_is_a_failure_not_a_rejection(image_folder):
    units = plan_inputs([str(image_folder)], reader_config()).units
    (image_folder / "b.png").unlink()
    (image_folder / "a.txt").unlink()
    rows = by_key(read_all(units))
    assert outcome(rows["b__png"]) == (FAILED, "read", "read_error")
    assert "b.png" in rows["b__png"]["detail"] and "FileNotFoundError" in rows["b__png"]["detail"]
    assert outcome(rows["a__jpg"]) == (FAILED, "read", "read_error")  # its listed caption is gone
    assert "a.txt" in rows["a__jpg"]["detail"]


def test_files_over_the_byte_limit_are_rejected_without_being_read_whole(tmp_path):
    root = tmp_path / "sizes"
    write(root / "big.png", b"x" * 101)
    write(root / "edge.png", b"x" * 100)
    write(root / "cap.jpg", b"y" * 10)
    write(root / "cap.txt", "z" * 101)
    rows = by_key(read_all(plan_inputs([str(root)], reader_config()).units, max_bytes=100))
    assert outcome(rows["big__png"]) == (REJECTED, "read", "file_size")
    assert rows["big__png"]["detail"] == "101 bytes > max 100"
    assert rows["edge__png"]["status"] == OK
    assert outcome(rows["cap__jpg"]) == (REJECTED, "read", "file_size")
    assert rows["cap__jpg"]["detail"] == "sidecar cap.txt: 101 bytes > max 100"


def test_the_same_file_through_two_inputs_is_read_once(image_folder):
    plan = plan_inputs([str(image_folder), str(image_folder / "a.jpg"), str(image_folder)], reader_config())
    assert len(files_of(plan)) == 7


def test_same_relative_path_under_two_roots_gives_the_same_key(tmp_path):
    for name in ("first", "second"):
        write(tmp_path / name / "photos" / "x.jpg", image_bytes(fmt="JPEG"))
    rows = read_all(plan_inputs([str(tmp_path / "first"), str(tmp_path / "second")], reader_config()).units)
    # a local rule cannot tell them apart: the pipeline's global pass rejects the second as duplicate_key
    assert [(row["key"], row["source"]) for row in rows] == [
        ("photos--x__jpg", str(tmp_path / "first" / "photos" / "x.jpg")),
        ("photos--x__jpg", str(tmp_path / "second" / "photos" / "x.jpg")),
    ]


# ------------------------------------------------------------------ parquet


def test_parquet_with_bytes_column_and_captions(tmp_path):
    red = image_bytes()
    path = tmp_path / "data-01.parquet"
    pq.write_table(pa.table({"image": [red, None], "caption": [" a cat ", "a dog"]}), path)
    config = reader_config(caption_column="caption")
    (unit,) = plan_inputs([str(path)], config).units
    first, second = read_unit(unit, config)
    assert (first["key"], first["image"], first["alt"]) == ("data-01_00000000", red, "a cat")
    assert first["source"] == f"{path}#0"
    assert (second["key"], *outcome(second)) == ("data-01_00000001", REJECTED, "read", "not_an_image")
    assert second["detail"] == "empty image and path cells"


def test_parquet_with_hugging_face_struct_column_and_key_column(tmp_path):
    red, blue = image_bytes((255, 0, 0)), image_bytes((0, 0, 255))
    write(tmp_path / "imgs" / "b.png", blue)
    images = [{"bytes": red, "path": None}, {"bytes": None, "path": "imgs/b.png"}]
    pq.write_table(pa.table({"image": images, "id": ["img/1", "2"]}), tmp_path / "hf.parquet")
    config = reader_config(key_column="id")
    rows = read_all(plan_inputs([str(tmp_path / "hf.parquet")], config).units, config)
    assert [row["key"] for row in rows] == [sanitize_key("img/1"), "2"]
    assert [row["image"] for row in rows] == [red, blue]


def test_parquet_with_path_column(tmp_path):
    red = image_bytes()
    absolute = write(tmp_path / "elsewhere" / "abs.png", red)
    write(tmp_path / "data" / "imgs" / "rel.png", red)
    write(tmp_path / "data" / "imgs" / "huge.png", b"h" * 200)
    paths = ["imgs/rel.png", str(absolute), "imgs/missing.png", "imgs/huge.png"]
    pq.write_table(pa.table({"path": paths}), write(tmp_path / "data" / "p.parquet", b""))
    config = reader_config(path_column="path")
    rows = read_all(plan_inputs([str(tmp_path / "data" / "p.parquet")], config).units, config, max_bytes=150)
    assert [row["image"] for row in rows[:2]] == [red, red]
    assert rows[0]["source"] == f"{tmp_path}/data/imgs/rel.png"
    assert outcome(rows[2]) == (REJECTED, "read", "missing_file")  # a dangling reference in the data
    assert (*outcome(rows[3]), rows[3]["detail"]) == (REJECTED, "read", "file_size", "200 bytes > max 150")


def test_parquet_inline_bytes_over_the_limit_are_rejected(tmp_path):
    path = tmp_path / "sizes.parquet"
    pq.write_table(pa.table({"image": [b"a" * 50, b"b" * 51]}), path)
    rows = read_unit({"kind": "parquet", "uri": str(path)}, reader_config(), max_bytes=50)
    assert [row["status"] for row in rows] == [OK, REJECTED]
    assert (rows[1]["reason"], rows[1]["detail"]) == ("file_size", "51 bytes > max 50")


def test_parquet_is_read_across_batches_and_row_groups_with_continuous_indices(tmp_path):
    count = PARQUET_BATCH_ROWS + 6
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"image": [b"%d" % i for i in range(count)]}), path, row_group_size=10)
    rows = list(iter_unit({"kind": "parquet", "uri": str(path)}, reader_config()))
    assert [row["key"] for row in rows] == [f"many_{i:08d}" for i in range(count)]
    assert [row["image"] for row in rows] == [b"%d" % i for i in range(count)]


def test_parquet_without_an_image_column_rejects_each_row(tmp_path):
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"picture": [b"x", b"y"]}), path)
    rows = read_unit({"kind": "parquet", "uri": str(path)}, reader_config())
    assert [row["key"] for row in rows] == ["wrong_00000000", "wrong_00000001"]
    assert {outcome(row) for row in rows} == {(REJECTED, "read", "unreadable_parquet")}
    assert "'image'" in rows[0]["detail"] and "picture" in rows[0]["detail"]


def test_a_file_that_is_not_parquet_becomes_one_rejected_row(tmp_path):
    path = write(tmp_path / "fake.parquet", b"PAR1 not really")
    (row,) = read_unit({"kind": "parquet", "uri": str(path)}, reader_config())
    assert (row["key"], *outcome(row), row["source"]) == ("fake", REJECTED, "read", "unreadable_parquet", str(path))


def test_directory_mixing_tars_parquets_and_files_plans_all_of_them(tmp_path):
    write_tar(tmp_path / "mix" / "b.tar", [("x.png", image_bytes())])
    pq.write_table(pa.table({"image": [image_bytes()]}), tmp_path / "mix" / "a.parquet")
    write(tmp_path / "mix" / "c.png", image_bytes())
    kinds = [unit["kind"] for unit in plan_inputs([str(tmp_path / "mix")], reader_config()).units]
    assert kinds == ["tar", "parquet", "folder"]


# ------------------------------------------------------------------ any fsspec filesystem


def test_inputs_on_a_non_local_fsspec_filesystem_are_planned_and_read():
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

    uris = ["memory://remote/shards", "memory://remote/folder", "memory://remote/table"]
    units = plan_inputs(uris, reader_config()).units
    assert [unit["kind"] for unit in units] == ["tar", "folder", "parquet"]
    rows = by_key(read_all(units))
    assert rows["shard-0_k1"]["alt"] == "remote caption" and rows["shard-0_k1"]["source"].startswith("memory://")
    assert rows[path_key("x.png")]["status"] == OK and rows["part_00000000"]["status"] == OK


def test_parquet_records_can_restart_at_any_row(tmp_path):
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"image": [b"%d" % i for i in range(100)]}), path, row_group_size=30)
    layout = read_layout(str(path))
    assert (layout.row_group_starts, layout.num_rows) == ([0, 30, 60, 90], 100)
    for start in (0, 29, 30, 45, 99, 100):
        records = list(records_from(str(path), ["image"], layout, start))
        assert [record["image"] for record in records] == [b"%d" % i for i in range(start, 100)]


def test_corrupt_parquet_data_rejects_its_row_group_and_reading_goes_on(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": [b"%d" % i for i in range(6)]}), path, row_group_size=3)
    second_group = pq.ParquetFile(path).metadata.row_group(1).column(0)
    assert min(second_group.dictionary_page_offset or second_group.data_page_offset, 1000) > 40
    data = bytearray(path.read_bytes())
    data[4:40] = bytes(byte ^ 0xFF for byte in data[4:40])  # the first row group's page headers
    path.write_bytes(bytes(data))
    rows = read_unit({"kind": "parquet", "uri": str(path)}, reader_config())
    assert [row["key"] for row in rows] == [f"bad_{i:08d}" for i in range(6)]
    assert [outcome(row) for row in rows[:3]] == [(REJECTED, "read", "unreadable_parquet")] * 3
    assert "CorruptParquetError" in rows[0]["detail"]
    assert [(row["status"], row["image"]) for row in rows[3:]] == [(OK, b"3"), (OK, b"4"), (OK, b"5")]
