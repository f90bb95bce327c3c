"""Global dedup: the table logic against brute force, the Ray step across partitionings, and real builds.

Expected outcomes are computed here from how the inputs were made (which are copies of which, their
pixel counts read with PIL, their keys written out), never from the code under test.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from curation.cli import main
from curation.config import DedupConfig
from pipelines import dedup_groups as groups

RADIUS = 6


# ---------------------------------------------------------------- brute-force reference


def brute_components(phashes: dict[int, int], digests: dict[int, bytes], radius: int) -> list[set[int]]:
    """Components of "same digest or pHash within radius" over all pairs (a full distance matrix, union-find)."""
    nodes = sorted(phashes)
    hashes = np.array([phashes[node] for node in nodes], dtype=np.uint64)
    digest_ids = {digest: i for i, digest in enumerate(sorted(set(digests.values())))}
    codes = np.array([digest_ids[digests[node]] for node in nodes])
    linked = (np.bitwise_count(hashes[:, None] ^ hashes[None, :]) <= radius) | (codes[:, None] == codes[None, :])
    parent = list(range(len(nodes)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in np.argwhere(np.triu(linked, 1)).tolist():
        parent[root(i)] = root(j)
    found: dict[int, set[int]] = {}
    for i, node in enumerate(nodes):
        found.setdefault(root(i), set()).add(node)
    return [members for members in found.values() if len(members) > 1]


def random_hashes(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, count, dtype=np.uint64)
    for start in range(0, count // 5, 3):  # chains of near copies, 0..radius bits apart
        for offset in (1, 2):
            flips = rng.choice(64, int(rng.integers(0, RADIUS + 1)), replace=False)
            hashes[start + offset] = hashes[start] ^ np.uint64(sum(1 << int(bit) for bit in flips))
    return hashes


def edge_components(edges: pa.Table) -> list[set[int]]:
    nodes, labels = groups.component_labels(edges)
    found: dict[int, set[int]] = {}
    for node, label in zip(nodes.tolist(), labels.tolist(), strict=True):
        found.setdefault(label, set()).add(node)
    return list(found.values())


def canonical(components: list[set[int]]) -> list[list[int]]:
    return sorted(sorted(members) for members in components)


# ---------------------------------------------------------------- table logic, no Ray


@pytest.mark.parametrize(("radius", "key_blocks"), [(6, 1), (6, 2), (3, 3), (0, 2)])
def test_band_masks_are_the_key_block_combinations(radius, key_blocks):
    masks = [int(mask) for mask in groups.band_masks(radius, key_blocks)]
    blocks = radius + key_blocks
    assert len(masks) == math.comb(blocks, key_blocks)
    sizes = [64 * (i + 1) // blocks - 64 * i // blocks for i in range(blocks)]
    assert sorted({bin(mask).count("1") for mask in masks}) == sorted(
        {sum(combo) for combo in itertools.combinations(sizes, key_blocks)}
    )
    assert np.bitwise_or.reduce(np.array(masks, dtype=np.uint64)) == np.uint64(2**64 - 1)


@pytest.mark.parametrize(("radius", "key_blocks", "partitions"), [(6, 1, 1), (6, 2, 3), (4, 3, 5)])
def test_band_edges_connect_exactly_the_pairs_within_the_radius(radius, key_blocks, partitions):
    count = 1500
    hashes = random_hashes(count, seed=radius * 10 + key_blocks)
    hashes[900:1000] = hashes[900]  # a hundred identical hashes
    ids = np.arange(count, dtype=np.int64) * 11 + 5
    masks = groups.band_masks(radius, key_blocks)
    rows = groups.band_rows(ids, hashes, masks)
    bucket = groups.bucket_of(rows["value"].to_numpy() ^ rows["band"].to_numpy().astype(np.uint64), partitions)
    edges = pa.concat_tables(
        [groups.band_edges(rows.filter(pa.array(bucket == part)), radius, masks) for part in range(partitions)]
    )
    pairs = [tuple(sorted(pair)) for pair in zip(edges["a"].to_pylist(), edges["b"].to_pylist(), strict=True)]
    assert len(pairs) == len(set(pairs)), "an edge came out of two bands"
    by_id = dict(zip(ids.tolist(), hashes.tolist(), strict=True))
    for a, b, distance in zip(*(edges[name].to_pylist() for name in ("a", "b", "distance")), strict=True):
        assert distance == bin(by_id[a] ^ by_id[b]).count("1") <= radius
    no_digest = {node: node.to_bytes(8, "little") for node in by_id}
    assert canonical(edge_components(edges)) == canonical(brute_components(by_id, no_digest, radius))
    assert len(pairs) < 2 * count  # the identical hashes joined as a star, not as 4950 pairs


def test_many_identical_hashes_cost_linear_time():
    count = 60_000
    hashes = np.full(count, 0x8000000000000000, dtype=np.uint64)  # what a blank frame hashes to
    masks = groups.band_masks(RADIUS, 2)
    start = time.perf_counter()
    edges = groups.band_edges(groups.band_rows(np.arange(count, dtype=np.int64), hashes, masks), RADIUS, masks)
    assert time.perf_counter() - start < 10  # all pairs would be 1.8e9 checks
    assert edges.num_rows == count - 1 and len(edge_components(edges)) == 1


def test_duplicate_keys_keep_the_first_input_whatever_the_row_order():
    ids = [(1 << 32) | 4, 7, (2 << 32) | 0, 3, (1 << 32) | 1, 9]
    keys = ["a", "b", "a", "c", "b", "a"]
    table = pa.table({"id": ids, "key": keys, "source": [f"src{i}" for i in ids]})
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2]):
        found = groups.duplicate_keys(table.take(order)).sort_by("id").to_pylist()
        assert found == [  # 'a': ids 9 < 1<<32|4 < 2<<32|0 keep 9; 'b': 7 < 1<<32|1 keeps 7
            {"id": (1 << 32) | 1, "key": "b", "kept_source": "src7"},
            {"id": (1 << 32) | 4, "key": "a", "kept_source": "src9"},
            {"id": (2 << 32) | 0, "key": "a", "kept_source": "src9"},
        ]


def content_table(rows: list[tuple]) -> pa.Table:
    names = ["id", "key", "sha256", "phash", "pixels", "written"]
    table = pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows])
    types = [pa.int64(), pa.string(), pa.binary(32), pa.uint64(), pa.int64(), pa.bool_()]
    return table.cast(pa.schema(list(zip(names, types, strict=True))))


def test_exact_copies_keep_the_written_then_the_smallest_key():
    one, two = b"1" * 32, b"2" * 32
    table = content_table(
        [
            (1, "b", one, 5, 100, False),
            (2, "a", one, 5, 100, False),
            (3, "z", one, 5, 100, True),
            (4, "d", two, 9, 50, False),
            (5, "c", two, 9, 50, False),
        ]
    )
    out = {row["id"]: (row["copy_of"], row["copy_of_key"]) for row in groups.exact_copies(table).to_pylist()}
    assert out == {3: (None, None), 1: (3, "z"), 2: (3, "z"), 5: (None, None), 4: (5, "c")}


def test_representative_is_written_then_most_pixels_then_smallest_key():
    nodes = content_table(
        [
            (1, "k1", b"a" * 32, 0b1, 500, False),
            (2, "k0", b"b" * 32, 0b11, 500, False),
            (3, "k3", b"c" * 32, 0b111, 900, False),
            (4, "w", b"d" * 32, 0b0, 10, True),
            (5, "x", b"e" * 32, 0b1111, 100, False),
        ]
    )
    labels = {1: 0, 2: 0, 3: 0, 4: 1, 5: 1}
    kept = groups.representatives(nodes, labels)
    assert {node: (k.kept_key, k.distance) for node, k in kept.items()} == {
        1: ("k3", 2),
        2: ("k3", 1),
        5: ("w", 4),
    }


# ---------------------------------------------------------------- the Ray step over synthetic tables


def reference_rejections(table: pa.Table, radius: int) -> dict[int, tuple[str, str]]:
    """id -> (reason, kept key) by the stated rules, over all pairs (no banding, no partitions)."""
    rows = table.to_pylist()
    first_of_key: dict[str, dict] = {}
    outcome: dict[int, tuple[str, str]] = {}
    for row in sorted(rows, key=lambda row: row["id"]):
        kept = first_of_key.setdefault(row["key"], row)
        if kept is not row:
            outcome[row["id"]] = ("duplicate_key", kept["source"])
    content = {row["id"]: row for row in rows if row["id"] not in outcome and row["phash"] is not None}
    phashes = {node: row["phash"] for node, row in content.items()}
    digests = {node: row["sha256"] for node, row in content.items()}
    for members in brute_components(phashes, digests, radius):
        head = min(members, key=lambda node: (-content[node]["pixels"], content[node]["key"]))
        for node in members - {head}:
            same = content[node]["sha256"] == content[head]["sha256"]
            outcome[node] = ("duplicate" if same else "near_duplicate", content[head]["key"])
    return outcome


def step_outcomes(result) -> dict[int, tuple[str, str]]:
    return {node: (rejection.reason, rejection.detail.split(" (")[0]) for node, rejection in result.rejections.items()}


def test_global_step_over_partitions_and_shuffled_rows_matches_brute_force(ray_session):
    import ray.data

    from benchmarks.dedup_scaling import synthetic_hashes
    from pipelines.dedup import CONTENT_SCHEMA, global_step

    table = synthetic_hashes(3000, RADIUS, seed=3)
    expected = reference_rejections(table, RADIUS)
    assert {reason for reason, _ in expected.values()} == {"duplicate", "near_duplicate", "duplicate_key"}
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    dataset = ray.data.from_arrow(shuffled).repartition(6).materialize()
    result = global_step(dataset, CONTENT_SCHEMA.empty_table(), DedupConfig(), partition_rows=700)  # 5 partitions
    assert step_outcomes(result) == expected


# ---------------------------------------------------------------- real builds on copies of real photos

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


@dataclass(frozen=True)
class Made:
    group: str | None  # inputs of one group are copies of one photo; None: not an image
    data: bytes

    @property
    def pixels(self) -> int:
        width, height = Image.open(io.BytesIO(self.data)).size
        return width * height


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def upright(name: str) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(EXAMPLES / name)).convert("RGB")


def exif6(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored a quarter turn counter-clockwise: displays as ``image``
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())


def crop_2_percent(image: Image.Image) -> Image.Image:
    w, h = image.size
    return image.crop((w * 2 // 100, h * 2 // 100, w - w * 2 // 100, h - h * 2 // 100))


def photo_corpus() -> dict[str, Made]:
    """The ``photos`` input: three groups of copies, three single photos and a text file."""
    astronaut, rocket, coffee = upright("astronaut.jpg"), upright("rocket.jpg"), upright("coffee_exif6.jpg")
    original = (EXAMPLES / "astronaut.jpg").read_bytes()
    return {
        "astronaut.jpg": Made("astronaut", original),
        "astronaut_copy.jpg": Made("astronaut", original),
        "astronaut_q30.jpg": Made("astronaut", encode(astronaut, "JPEG", quality=30)),
        "astronaut_half.png": Made("astronaut", encode(astronaut.resize((256, 256), Image.Resampling.LANCZOS), "PNG")),
        "rocket.jpg": Made("rocket", (EXAMPLES / "rocket.jpg").read_bytes()),
        "rocket_big.webp": Made("rocket", encode(rocket.resize((960, 640), Image.Resampling.BICUBIC), "WEBP")),
        "rocket_crop.jpg": Made("rocket", encode(crop_2_percent(rocket), "JPEG", quality=90)),
        "rocket_exif6.jpg": Made("rocket", exif6(rocket)),
        "coffee_exif6.jpg": Made("coffee", (EXAMPLES / "coffee_exif6.jpg").read_bytes()),
        "coffee_upright.png": Made("coffee", encode(coffee, "PNG")),
        "coffee_small.webp": Made("coffee", encode(coffee.resize((240, 360), Image.Resampling.LANCZOS), "WEBP")),
        "clock.jpg": Made("clock", (EXAMPLES / "nested/clock.jpg").read_bytes()),
        "retina.jpg": Made("retina", (EXAMPLES / "retina.jpg").read_bytes()),
        "chelsea.webp": Made("chelsea", (EXAMPLES / "nested/chelsea.webp").read_bytes()),
        "README.txt": Made(None, b"notes, not an image"),
    }


def key_of(name: str) -> str:
    return name.replace(".", "__")  # keys of plain file names (curation.io.keys)


def expected_outcome(files: dict[str, Made]) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """Kept keys and {rejected key: (reason, kept key)} by the rule: most pixels, then smallest key."""
    by_group: dict[str, list[str]] = {}
    for name, made in files.items():
        if made.group:
            by_group.setdefault(made.group, []).append(name)
    kept, rejected = set(), {}
    for names in by_group.values():
        head = min(names, key=lambda name: (-files[name].pixels, key_of(name)))
        kept.add(key_of(head))
        for name in set(names) - {head}:
            same = files[name].data == files[head].data
            rejected[key_of(name)] = ("duplicate" if same else "near_duplicate", key_of(head))
    return kept, rejected


def write_corpus(root: Path, files: dict[str, Made]) -> None:
    root.mkdir(parents=True)
    for name, made in files.items():
        (root / name).write_bytes(made.data)


def renamed(files: dict[str, Made], seed: int) -> dict[str, Made]:
    """The same files under shuffled stems (extensions kept): keys, listing order and read units all change."""
    names = sorted(files)
    stems = [f"f{i:02d}" for i in np.random.default_rng(seed).permutation(len(names))]
    return {stem + Path(name).suffix: files[name] for stem, name in zip(stems, names, strict=True)}


OTHER_CLOCK = (EXAMPLES / "nested/cell.webp").read_bytes()  # `more/clock.jpg`: same key as photos/clock.jpg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dedup_corpus")
    write_corpus(root / "photos", photo_corpus())
    (root / "more").mkdir()
    (root / "more" / "clock.jpg").write_bytes(OTHER_CLOCK)
    return root


def build_args(demo_build_args: list[str], inputs: list[Path], output: Path, *settings: str) -> list[str]:
    args = list(demo_build_args)
    at = args.index("--input")
    del args[at : at + 2]
    args[args.index("--output") + 1] = str(output)
    for path in inputs:
        args += ["--input", str(path)]
    for setting in ("writer.samples_per_shard=4", "--no-report", *settings):
        args += [setting] if setting.startswith("--") else ["--set", setting]
    return args


def rejects(output: Path) -> list[dict]:
    return [row for path in sorted((output / "rejects").glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def index_keys(output: Path) -> set[str]:
    return {key for path in (output / "index").glob("*.parquet") for key in pq.read_table(path)["key"].to_pylist()}


def assert_dedup_outcome(output: Path, kept: set[str], rejected: dict[str, tuple[str, str]]) -> None:
    found = {
        row["key"]: row for row in rejects(output) if row["stage"] == "dedup" and row["reason"] != "duplicate_key"
    }
    assert set(found) == set(rejected)
    for key, (reason, kept_key) in rejected.items():
        assert (found[key]["status"], found[key]["reason"]) == ("rejected", reason), key
        assert found[key]["detail"].startswith(f"{kept_key} ("), found[key]["detail"]
    assert kept <= index_keys(output)
    assert not set(rejected) & index_keys(output)


@pytest.fixture(scope="module")
def built(corpus, demo_build_args, ray_session, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("dedup_build") / "out"
    assert main(build_args(demo_build_args, [corpus / "photos", corpus / "more"], output)) == 0
    return output


def test_build_keeps_one_sample_per_group_by_the_rule(built, corpus):
    kept, rejected = expected_outcome(photo_corpus())
    assert_dedup_outcome(built, kept, rejected)
    assert index_keys(built) == kept  # clock__jpg is photos/clock.jpg, the first input with that key
    copies = [row for row in rejects(built) if row["reason"] in ("duplicate", "near_duplicate")]
    assert copies and all(Image.open(io.BytesIO(row["thumbnail"])).format == "JPEG" for row in copies)
    (key_reject,) = [row for row in rejects(built) if row["reason"] == "duplicate_key"]
    assert (key_reject["key"], key_reject["stage"], key_reject["source"]) == (
        "clock__jpg",
        "dedup",
        str(corpus / "more" / "clock.jpg"),
    )
    assert key_reject["detail"].startswith(str(corpus / "photos" / "clock.jpg"))
    manifest = json.loads((built / "manifest.json").read_text())
    assert list(manifest["stages"])[:2] == ["dedup", "read"]
    reasons = [reason for reason, _ in rejected.values()]
    figures = manifest["stages"]["dedup"]
    assert (figures["duplicate"], figures["near_duplicate"], figures["duplicate_key"]) == (
        reasons.count("duplicate"),
        reasons.count("near_duplicate"),
        1,
    )
    assert figures["rows_in"] == manifest["counts"]["input"] == len(photo_corpus()) + 1
    # the duplicate_key reject shares its key with a written sample and is still counted, once
    assert manifest["funnel"]["dedup"]["duplicate_key"] == 1
    assert "unaccounted" not in manifest
    assert manifest["stages"]["filter"]["rows_in"] == len(kept)  # copies never reach the filter or a model


def plan_outcomes(inputs: list[Path], files_per_task: int, partition_rows: int, block_bytes: int) -> dict:
    """{(input root name, key): (reason, detail)} of the hash pass + global step alone (no model stage)."""
    import ray
    import ray.data

    from curation.config import ReaderConfig
    from curation.io.readers import plan_inputs
    from pipelines.dedup import CONTENT_SCHEMA, FinishedInputs, plan_rejections
    from pipelines.ray_stages import StatsRecorder

    units = plan_inputs([str(path) for path in inputs], ReaderConfig(files_per_task=files_per_task)).units
    context = ray.data.DataContext.get_current()
    previous, context.target_max_block_size = context.target_max_block_size, block_bytes
    recorder = StatsRecorder.remote()
    try:
        plan = plan_rejections(
            units, ReaderConfig(files_per_task=files_per_task), 2**30, 10**9, DedupConfig(), FinishedInputs(),
            CONTENT_SCHEMA.empty_table(), recorder, partition_rows,
        )  # fmt: skip
    finally:
        context.target_max_block_size = previous
        ray.kill(recorder)
    root_of = {index: Path(unit["root"]).name for index, unit in enumerate(units)}
    return {
        (root_of[unit], key): (reason, detail)
        for unit, positions in plan.by_unit.items()
        for key, reason, detail in positions.values()
    }


def test_decisions_do_not_depend_on_parallelism_or_input_order(built, corpus, ray_session):
    photos, more = corpus / "photos", corpus / "more"
    _, rejected = expected_outcome(photo_corpus())
    expected = {("photos", key): outcome for key, outcome in rejected.items()}
    in_build = {  # files_per_task 8, one partition, 64 MiB blocks, photos first
        (Path(row["source"]).parent.name, row["key"]): (row["reason"], row["detail"])
        for row in rejects(built)
        if row["stage"] == "dedup"
    }
    # the other way round: 3 files per read task, 5 partitions, 1 MiB blocks, `more` first
    reversed_run = plan_outcomes([more, photos], files_per_task=3, partition_rows=5, block_bytes=2**20)
    for outcome in (in_build, reversed_run):
        content = {
            where: (reason, detail.split(" (")[0])
            for where, (reason, detail) in outcome.items()
            if reason != "duplicate_key"
        }
        assert content == expected
    assert {w: v for w, v in reversed_run.items() if w[1] != "clock__jpg"} == {
        w: v for w, v in in_build.items() if w[1] != "clock__jpg"
    }
    # duplicate keys: the first input in input order keeps the key
    assert in_build[("more", "clock__jpg")] == ("duplicate_key", f"{photos / 'clock.jpg'} (read first, same key)")
    assert reversed_run[("photos", "clock__jpg")] == ("duplicate_key", f"{more / 'clock.jpg'} (read first, same key)")


def test_other_names_and_parallelism_keep_the_rule(demo_build_args, ray_session, tmp_path):
    files = renamed(photo_corpus(), seed=7)
    write_corpus(tmp_path / "photos", files)
    settings = ("reader.files_per_task=1", "filter.resources.num_workers=1", f"ray.max_block_bytes={2**20}")
    assert main(build_args(demo_build_args, [tmp_path / "photos"], tmp_path / "out", *settings)) == 0
    kept, rejected = expected_outcome(files)
    assert_dedup_outcome(tmp_path / "out", kept, rejected)
    assert index_keys(tmp_path / "out") == kept


def test_resume_rejects_new_copies_of_written_samples(built, corpus, demo_build_args, ray_session, tmp_path):
    from curation.stages.hashing import image_phash

    stored = stored_images(built)
    index = [row for path in (built / "index").glob("*.parquet") for row in pq.read_table(path).to_pylist()]
    mismatched = [row["key"] for row in index if row["phash"] != image_phash(stored[row["key"]])]
    assert not mismatched, "the filter must store curation.stages.hashing.image_phash(original bytes) as phash"
    shutil.copytree(corpus, tmp_path / "corpus")
    shutil.copytree(built, tmp_path / "out")
    astronaut = upright("astronaut.jpg")
    new = {
        "zz_astronaut_again.jpg": (EXAMPLES / "astronaut.jpg").read_bytes(),  # the written sample's bytes
        "astronaut_big.png": encode(astronaut.resize((768, 768), Image.Resampling.BICUBIC), "PNG"),  # more pixels
        "coins.png": (EXAMPLES / "coins.png").read_bytes(),  # a new photo
    }
    for name, data in new.items():
        (tmp_path / "corpus" / "photos" / name).write_bytes(data)
    inputs = [tmp_path / "corpus" / "photos", tmp_path / "corpus" / "more"]
    assert main(build_args(demo_build_args, inputs, tmp_path / "out")) == 0
    found = {row["key"]: row for row in rejects(tmp_path / "out")}
    assert (found["zz_astronaut_again__jpg"]["reason"], found["zz_astronaut_again__jpg"]["detail"]) == (
        "duplicate",
        "astronaut__jpg (same sha256)",
    )
    assert found["astronaut_big__png"]["reason"] == "near_duplicate"
    assert found["astronaut_big__png"]["detail"].startswith("astronaut__jpg (hamming ")
    assert index_keys(tmp_path / "out") == index_keys(built) | {"coins__png"}


def stored_images(output: Path) -> dict[str, bytes]:
    images = {}
    for shard in (output / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if ext in ("jpg", "png", "webp"):
                    images[key] = tar.extractfile(member).read()
    return images


def test_keys_can_collide_only_across_roots_archives_or_key_columns(tmp_path):
    from curation.config import ReaderConfig
    from curation.io.readers import plan_inputs
    from pipelines.dedup import keys_can_collide

    for name in ("a/x.jpg", "b/x.jpg", "c.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    one_root = plan_inputs([str(tmp_path / "a"), str(tmp_path / "a" / "x.jpg")], ReaderConfig(files_per_task=1)).units
    assert not keys_can_collide(one_root, ReaderConfig())
    two_roots = plan_inputs([str(tmp_path / "a"), str(tmp_path / "b")], ReaderConfig()).units
    assert keys_can_collide(two_roots, ReaderConfig())
    assert keys_can_collide(plan_inputs([str(tmp_path / "c.tar")], ReaderConfig()).units, ReaderConfig())
    assert keys_can_collide(one_root, ReaderConfig(key_column="id"))
