import hashlib
import re

from curation.io.keys import MAX_KEY_LENGTH, folder_keys, sanitize_key

SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def sha8(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def test_safe_ids_are_kept_as_they_are():
    for source_id in ["000123", "abc_DEF-9", "sample-0001_x"]:
        assert sanitize_key(source_id) == source_id


def test_lossy_ids_get_cleaned_form_plus_hash_of_the_original():
    assert sanitize_key("dir/000123") == f"dir_000123-{sha8('dir/000123')}"
    assert sanitize_key("a b..c") == f"a_b_c-{sha8('a b..c')}"
    assert sanitize_key("café") == f"caf-{sha8('café')}"


def test_leading_and_trailing_separators_are_stripped_and_count_as_lossy():
    assert sanitize_key("/x/") == f"x-{sha8('/x/')}"
    assert sanitize_key("_x") == f"x-{sha8('_x')}"


def test_ids_that_clean_to_the_same_text_stay_distinct():
    keys = {sanitize_key(source_id) for source_id in ["a b", "a:b", "a/b", "a_b", "a__b"]}
    assert len(keys) == 5


def test_empty_or_all_unsafe_ids_become_the_hash_alone():
    assert sanitize_key("") == sha8("")
    assert sanitize_key("///") == sha8("///")


def test_long_ids_are_capped_and_still_distinct():
    first, second = "x" * 300 + "1", "x" * 300 + "2"
    assert len(sanitize_key(first)) == MAX_KEY_LENGTH
    assert sanitize_key(first) != sanitize_key(second)
    assert sanitize_key(first).endswith(f"-{sha8(first)}")


def test_keys_only_use_safe_characters():
    for source_id in ["a/b/c.d", "über straße", "tab\there", "../../etc", "x" * 500, "", "?"]:
        assert SAFE_KEY.match(sanitize_key(source_id)), source_id


def test_folder_keys_come_from_the_path_without_extension():
    keys = folder_keys(["b.jpg", "sub/c.JPG"])
    assert keys == {"b.jpg": "b", "sub/c.JPG": f"sub_c-{sha8('sub/c')}"}


def test_folder_paths_sharing_a_stem_both_get_a_hash_of_their_full_path():
    keys = folder_keys(["a.jpg", "a.png", "b.jpg"])
    assert keys["a.jpg"] == f"a-{sha8('a.jpg')}"
    assert keys["a.png"] == f"a-{sha8('a.png')}"
    assert keys["b.jpg"] == "b"


def test_folder_keys_do_not_depend_on_listing_order():
    paths = ["a.jpg", "a.png", "b.jpg", "x/y z.webp"]
    assert folder_keys(paths) == folder_keys(list(reversed(paths)))
    assert len(set(folder_keys(paths).values())) == len(paths)
