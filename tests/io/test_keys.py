import hashlib
import itertools
import re

from curation.io.keys import (
    MAX_KEY_LENGTH,
    archive_key,
    archive_stem,
    column_key,
    parquet_row_key,
    path_key,
    sanitize_key,
    tar_sample_key,
)

SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def sha16(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def test_safe_ids_are_kept_as_they_are():
    for source_id in ["000123", "abc_DEF-9", "sample-0001_x", "a__b", "a--b"]:
        assert sanitize_key(source_id) == source_id


def test_other_ids_get_cleaned_form_plus_mark_and_hash_of_the_original():
    assert sanitize_key("dir/000123") == f"dir_000123_-{sha16('dir/000123')}"
    assert sanitize_key("a b..c") == f"a_b_c_-{sha16('a b..c')}"
    assert sanitize_key("café") == f"caf_-{sha16('café')}"
    assert sanitize_key("_x") == f"x_-{sha16('_x')}"  # a leading separator is not a plain key
    assert sanitize_key("x_-y") == f"x_-y_-{sha16('x_-y')}"  # the hash mark is reserved


def test_empty_or_all_unsafe_ids_become_a_placeholder_and_the_hash():
    assert sanitize_key("") == f"key_-{sha16('')}"
    assert sanitize_key("///") == f"key_-{sha16('///')}"


def test_ids_that_clean_to_the_same_text_stay_distinct():
    keys = {sanitize_key(source_id) for source_id in ["a b", "a:b", "a/b", "a_b", "a__b", "a_-b"]}
    assert len(keys) == 6


def test_long_ids_are_capped_and_still_distinct():
    first, second = "x" * 300 + "1", "x" * 300 + "2"
    assert len(sanitize_key(first)) == MAX_KEY_LENGTH
    assert sanitize_key(first) != sanitize_key(second)
    assert sanitize_key(first).endswith(f"_-{sha16(first)}")


def test_keys_only_use_safe_characters():
    for source_id in ["a/b/c.d", "über straße", "tab\there", "../../etc", "x" * 500, "", "?"]:
        assert SAFE_KEY.match(sanitize_key(source_id)), source_id
        assert SAFE_KEY.match(path_key(source_id)), source_id


def test_plain_paths_map_to_readable_keys_with_the_extension():
    assert path_key("a.jpg") == "a__jpg"
    assert path_key("sub/IMG_0001.JPG") == "sub--IMG_0001__JPG"
    assert path_key("2024-01-02/x.tar.gz") == "2024-01-02--x__tar__gz"
    assert path_key("README") == "README"


def test_other_paths_get_a_hash_of_the_raw_path():
    assert path_key("IMG 0001.jpg") == f"IMG_0001__jpg_-{sha16('IMG 0001.jpg')}"
    assert path_key("猫.jpg") == f"jpg_-{sha16('猫.jpg')}"
    assert path_key("a__b.jpg") == f"a__b__jpg_-{sha16('a__b.jpg')}"
    long_path = "d/" * 100 + "x.jpg"
    assert len(path_key(long_path)) == MAX_KEY_LENGTH and path_key(long_path).endswith(sha16(long_path))


def test_path_keys_are_distinct_for_paths_that_look_alike():
    names = ["a", "b", "a_b", "a-b", "_", "__", "-", ".", " ", "é"]
    paths = {"".join(parts) for parts in itertools.product(names, repeat=3)}
    paths |= {f"{path}.jpg" for path in paths} | {f"{path}/x.png" for path in paths}
    keys = {path_key(path) for path in paths}
    assert len(keys) == len(paths)


def test_a_path_key_does_not_depend_on_other_paths():
    assert path_key("a.jpg") == "a__jpg"  # with or without a.png beside it: no listing is involved
    assert path_key("a.png") == "a__png"


def test_archive_stems_drop_only_the_archive_suffix():
    assert archive_stem("/data/shard-000001.tar") == "shard-000001"
    assert archive_stem("s3://bucket/x/part.0.tar.gz") == "part.0"
    assert archive_stem("a.TGZ") == "a"
    assert archive_stem("memory://t/data-01.parquet") == "data-01"
    assert archive_key("/d/part.0.parquet") == f"part_0_-{sha16('part.0')}"


def test_tar_sample_keys_are_prefixed_with_the_shard_stem():
    assert tar_sample_key("/d/shard-000001.tar", "000000123") == "shard-000001_000000123"
    assert tar_sample_key("/d/shard-000002.tar", "000000123") == "shard-000002_000000123"
    assert tar_sample_key("/d/s.tar", "dir/k") == f"s_dir_k_-{sha16('dir/k')}"


def test_parquet_row_keys_use_the_stem_and_the_row_index():
    assert parquet_row_key("/d/data-01.parquet", 7) == "data-01_00000007"
    assert parquet_row_key("/e/data-01.parquet", 7) == "data-01_00000007"  # same stem: a global duplicate
    assert column_key("img/1") == f"img_1_-{sha16('img/1')}"
    assert column_key(42) == "42"


def test_composed_keys_stay_bounded():
    key = tar_sample_key("/d/" + "s" * 120 + ".tar", "k" * 120)
    assert len(key) == MAX_KEY_LENGTH and SAFE_KEY.match(key)
    assert key.endswith(sha16("s" * 120 + "/" + "k" * 120))
