import io
import json
import tarfile
from pathlib import Path

from curation.io.keys import sanitize_key
from curation.io.readers import plan_inputs, read_unit
from curation.records import OK, REJECTED
from tests.io.read_helpers import (
    by_key,
    image_bytes,
    outcome,
    read_all,
    reader_config,
    regular,
    special,
    tar_bytes,
    write,
    write_tar,
)


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
    (unit,) = plan_inputs([str(tmp_path / "shards")], reader_config()).units
    assert {name: unit[name] for name in ("kind", "uri")} == {"kind": "tar", "uri": str(shard)}
    rows = read_unit(unit, reader_config())
    s4_key = f"shard-0000_{sanitize_key('dir/s4')}"
    assert [row["key"] for row in rows] == ["shard-0000_s1", "shard-0000_s2", "shard-0000_s3", s4_key]
    s1, s2, s3, s4 = rows
    assert (s1["image"], s1["alt"], s1["source"]) == (red, "first caption", f"{shard}#s1.png")
    assert (s2["image"], s2["alt"]) == (blue, "second caption")
    assert (*outcome(s3), s3["image"]) == (REJECTED, "read", "not_an_image", None)
    assert s3["detail"] == "no image member (members: s3.txt)"
    assert s4["image"] == blue and s4["status"] == OK


def test_two_tars_reusing_webdataset_keys_give_distinct_keys(tmp_path):
    for shard in ("shard-000000", "shard-000001"):
        members = [(f"{i:06d}.jpg", image_bytes((i, 0, 0), fmt="JPEG")) for i in range(3)]
        members += [(f"{i:06d}.txt", f"{shard} caption {i}".encode()) for i in range(3)]
        write_tar(tmp_path / "shards" / f"{shard}.tar", members)
    rows = read_all(plan_inputs([str(tmp_path / "shards")], reader_config()).units)
    assert [row["key"] for row in rows] == [f"shard-00000{s}_00000{i}" for s in (0, 1) for i in range(3)]
    assert [row["alt"] for row in rows] == [f"shard-00000{s} caption {i}" for s in (0, 1) for i in range(3)]
    shards = tmp_path / "shards"
    expected_sources = [f"{shards}/shard-00000{s}.tar#00000{i}.jpg" for s in (0, 1) for i in range(3)]
    assert [row["source"] for row in rows] == expected_sources


def test_image_member_is_found_by_any_extension_pillow_opens(tmp_path):
    tiff, bmp = image_bytes(fmt="TIFF"), image_bytes(fmt="BMP")
    shard = write_tar(tmp_path / "t.tar", [("a.tif", tiff), ("b.bmp", bmp), ("b.png", b"png wins"), ("c.bin", b"?")])
    rows = by_key(read_unit({"kind": "tar", "uri": str(shard)}, reader_config()))
    assert rows["t_a"]["image"] == tiff
    assert rows["t_b"]["image"] == b"png wins"  # jpg, jpeg, png, webp come first
    assert (rows["t_c"]["reason"], rows["t_c"]["detail"]) == ("not_an_image", "no image member (members: c.bin)")
    allow_list = reader_config(extensions=["bmp"])
    assert by_key(read_unit({"kind": "tar", "uri": str(shard)}, allow_list))["t_b"]["image"] == bmp


def test_members_without_extension_are_samples_of_their_own(tmp_path):
    shard = write_tar(tmp_path / "t.tar", [("README", b"hello"), ("x.jpg", image_bytes(fmt="JPEG"))])
    rows = read_unit({"kind": "tar", "uri": str(shard)}, reader_config())
    assert [(row["key"], row["status"], row["reason"]) for row in rows] == [
        ("t_README", REJECTED, "not_an_image"),
        ("t_x", OK, None),
    ]


def test_unsafe_members_are_rejected_with_their_reason(tmp_path):
    good = image_bytes(fmt="JPEG")
    shard = write(
        tmp_path / "evil.tar",
        tar_bytes(
            [
                regular("../up.jpg", good),
                regular("/abs.jpg", good),
                regular("ok/../../x.jpg", good),
                special("link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                regular("target.jpg", good),
                special("hard.jpg", tarfile.LNKTYPE, "target.jpg"),
                special("dev.jpg", tarfile.CHRTYPE),
                special("blk.jpg", tarfile.BLKTYPE),
                special("pipe.jpg", tarfile.FIFOTYPE),
                regular("mixed.jpg", good),
                special("mixed.txt", tarfile.SYMTYPE, "../../secret"),
                special("adir", tarfile.DIRTYPE),
            ]
        ),
    )
    rows = read_unit({"kind": "tar", "uri": str(shard)}, reader_config())
    expected = [
        (f"evil_{sanitize_key('../up')}", "../up.jpg: '..' in name"),
        (f"evil_{sanitize_key('/abs')}", "/abs.jpg: absolute name"),
        (f"evil_{sanitize_key('ok/../../x')}", "ok/../../x.jpg: '..' in name"),
        ("evil_link", "link.jpg: symbolic link to '/etc/passwd'"),
        ("evil_target", None),
        ("evil_hard", "hard.jpg: hard link to 'target.jpg'"),
        ("evil_dev", "dev.jpg: device file"),
        ("evil_blk", "blk.jpg: device file"),
        ("evil_pipe", "pipe.jpg: fifo"),
        ("evil_mixed", "mixed.txt: symbolic link to '../../secret'"),
    ]
    assert [(row["key"], row["detail"] if row["status"] != OK else None) for row in rows] == expected
    assert [row["reason"] for row in rows if row["status"] != OK] == ["unsafe_member"] * 9
    assert all(row["image"] is None for row in rows if row["status"] != OK)
    assert rows[0]["source"] == f"{shard}#../up"


def test_oversized_members_are_rejected_from_their_header(tmp_path):
    shard = write_tar(
        tmp_path / "big.tar",
        [("small.jpg", b"j" * 100), ("huge.jpg", b"J" * 101), ("capt.jpg", b"c" * 10), ("capt.txt", b"t" * 101)],
    )
    rows = by_key(read_unit({"kind": "tar", "uri": str(shard)}, reader_config(), max_bytes=100))
    assert rows["big_small"]["image"] == b"j" * 100
    assert (*outcome(rows["big_huge"]), rows["big_huge"]["detail"]) == (
        REJECTED, "read", "file_size", "101 bytes > max 100",
    )  # fmt: skip
    assert rows["big_capt"]["detail"] == "capt.txt: 101 bytes > max 100"


def test_truncated_tar_keeps_readable_samples_and_accounts_for_the_rest(tmp_path):
    members = [(f"{index:04d}.png", image_bytes(size=(64, 64)) + bytes(4000)) for index in range(3)]
    whole = write_tar(tmp_path / "whole.tar", members).read_bytes()
    truncated = write(tmp_path / "cut" / "truncated.tar", whole[: 512 + 4500 + 1024])  # inside 0001.png's data
    rows = read_unit({"kind": "tar", "uri": str(truncated)}, reader_config())
    assert [row["key"] for row in rows] == ["truncated_0000", "truncated_0001", "truncated"]
    assert rows[0]["status"] == OK
    assert rows[1]["source"] == f"{truncated}#0001.png"
    assert [outcome(row) for row in rows[1:]] == [(REJECTED, "read", "unreadable_tar")] * 2


def test_a_file_that_is_not_a_tar_becomes_one_rejected_row(tmp_path):
    garbage = write(tmp_path / "garbage.tar", b"x" * 100)
    (row,) = read_unit({"kind": "tar", "uri": str(garbage)}, reader_config())
    assert (row["key"], *outcome(row), row["source"]) == ("garbage", REJECTED, "read", "unreadable_tar", str(garbage))


def test_gzipped_tars_are_read(tmp_path):
    path = tmp_path / "z.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in [regular("k.txt", b"caption first"), regular("k.jpg", b"jpeg bytes")]:
            tar.addfile(info, io.BytesIO(data))
    (row,) = read_all(plan_inputs([str(path)], reader_config()).units)
    assert (row["key"], row["image"], row["alt"]) == ("z_k", b"jpeg bytes", "caption first")


def test_member_keys_depend_only_on_the_shard_and_the_member(tmp_path: Path):
    first = write_tar(tmp_path / "a" / "s.tar", [("k.jpg", b"1")])
    (row,) = read_unit({"kind": "tar", "uri": str(first)}, reader_config())
    write_tar(tmp_path / "a" / "s.tar", [("k.jpg", b"1"), ("k.png", b"2"), ("j.jpg", b"3")])
    again = by_key(read_unit({"kind": "tar", "uri": str(first)}, reader_config()))
    assert row["key"] == "s_k" and again["s_k"]["image"] == b"1"
