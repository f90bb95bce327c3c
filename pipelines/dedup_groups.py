"""The table logic of global dedup, Ray-free: each function works on one Arrow partition or on the driver.

``pipelines/dedup.py`` runs these as Ray Data operations; tests call them on plain tables.

- Duplicate keys: rows sorted by (key, id); the first of a key in input order keeps it.
- Exact duplicates: rows sorted by (sha256, representative order); the first of a digest survives.
- Near duplicates, exact recall within Hamming radius r: the 64 bits are cut into ``b = r + t`` blocks.
  Two hashes within r bits differ in at most r blocks, so at least t blocks are identical (pigeonhole):
  every such pair shares the value of one of the C(b, t) "band" masks (a mask = t blocks). Rows that
  share a band value are candidates; each candidate pair gets an exact Hamming check, and a pair is
  emitted only by the first band in which it collides, so no edge comes out twice. t = 1 is plain
  r + 1 banding (7 bands of ~9 bits for r = 6); t = 2 (28 bands of 16 bits) makes a random pair a
  candidate 2^16 instead of 2^9 times less often, for 4x the band rows.
- Components: connected components of the edges (``scipy.sparse.csgraph`` over the edges' endpoints only:
  the driver holds a few ints per near-duplicate, nothing per unique input). Representative of a
  component: already written first, then most pixels, then smallest key; every other member is rejected.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

REPRESENTATIVE_ORDER = [("written", "descending"), ("pixels", "descending"), ("key", "ascending")]
MAX_PAIRS_PER_CHUNK = 1 << 22  # candidate pairs held at once within one partition (~100 MB of arrays)
LARGE_GROUP = 50_000  # distinct hashes sharing one band value: quadratic work, logged

EDGE_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("distance", pa.int8())])
BAND_SCHEMA = pa.schema([("band", pa.int16()), ("value", pa.uint64()), ("id", pa.int64()), ("phash", pa.uint64())])
EXACT_COPY_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("key", pa.string()),
        ("written", pa.bool_()),
        ("copy_of", pa.int64()),  # id of the survivor of the same sha256
        ("copy_of_key", pa.string()),
    ]
)
KEY_REJECT_SCHEMA = pa.schema([("id", pa.int64()), ("key", pa.string()), ("kept_source", pa.string())])


# ---------------------------------------------------------------- bucketing (which partition a group goes to)


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads structured 64-bit values evenly over buckets."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def bucket_of(values: np.ndarray, buckets: int) -> np.ndarray:
    return (mix64(values) % np.uint64(buckets)).astype(np.int64)


def sha_prefix(sha256: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """First 8 bytes of each 32-byte digest as uint64 (digests are uniform: a fine bucket value)."""
    array = sha256.combine_chunks() if isinstance(sha256, pa.ChunkedArray) else sha256
    array = array.cast(pa.binary(32))
    raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    digests = raw[array.offset * 32 : (array.offset + len(array)) * 32].reshape(-1, 32)
    return np.ascontiguousarray(digests[:, :8]).view("<u8").ravel()


# ---------------------------------------------------------------- duplicate keys


def duplicate_keys(table: pa.Table) -> pa.Table:
    """(id, key, kept_source) of every row whose key an earlier row (smaller id) already has."""
    if table.num_rows < 2:
        return KEY_REJECT_SCHEMA.empty_table()
    ordered = table.sort_by([("key", "ascending"), ("id", "ascending")])
    keys = ordered["key"].combine_chunks()
    repeat = np.zeros(ordered.num_rows, dtype=bool)
    repeat[1:] = pc.equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    if not repeat.any():
        return KEY_REJECT_SCHEMA.empty_table()
    first = _run_starts(repeat)
    sources = ordered["source"].to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(repeat)
    return pa.table(
        {
            "id": ordered["id"].to_numpy()[rows],
            "key": keys.to_numpy(zero_copy_only=False)[rows],
            "kept_source": sources[first[rows]],
        },
        schema=KEY_REJECT_SCHEMA,
    )


def _run_starts(repeat: np.ndarray) -> np.ndarray:
    """For each row, the index of the first row of its run (a run continues while ``repeat`` is true)."""
    starts = np.where(repeat, 0, np.arange(len(repeat)))
    return np.maximum.accumulate(starts)


# ---------------------------------------------------------------- exact duplicates


def exact_copies(table: pa.Table) -> pa.Table:
    """``table`` with ``copy_of`` / ``copy_of_key``: null for the survivor of each sha256, else the survivor's.

    Columns in: id, key, sha256, phash, pixels, written. The survivor is the first by
    ``REPRESENTATIVE_ORDER``; copies have the same bytes, hence the same pixels and pHash.
    """
    ordered = table.sort_by([("sha256", "ascending"), *REPRESENTATIVE_ORDER])
    digests = ordered["sha256"].combine_chunks()
    repeat = np.zeros(ordered.num_rows, dtype=bool)
    if ordered.num_rows > 1:
        repeat[1:] = pc.equal(digests[1:], digests[:-1]).to_numpy(zero_copy_only=False)
    survivor = _run_starts(repeat)
    copy_of = pa.array(ordered["id"].to_numpy()[survivor], mask=~repeat, type=pa.int64())
    keys = ordered["key"].to_numpy(zero_copy_only=False)
    copy_of_key = pa.array(keys[survivor], mask=~repeat, type=pa.string())
    return ordered.append_column("copy_of", copy_of).append_column("copy_of_key", copy_of_key)


# ---------------------------------------------------------------- near duplicates: bands and edges


def band_masks(radius: int, key_blocks: int) -> np.ndarray:
    """One uint64 mask per band: the union of ``key_blocks`` of the ``radius + key_blocks`` blocks."""
    blocks = radius + key_blocks
    bounds = [64 * i // blocks for i in range(blocks + 1)]
    block_masks = [((1 << (hi - lo)) - 1) << lo for lo, hi in itertools.pairwise(bounds)]
    combos = itertools.combinations(range(blocks), key_blocks)
    return np.array([sum(block_masks[i] for i in combo) for combo in combos], dtype=np.uint64)


def band_rows(ids: np.ndarray, phashes: np.ndarray, masks: np.ndarray) -> pa.Table:
    """One row per (input, band): the band's masked value is the candidate key."""
    bands = len(masks)
    values = (phashes[None, :] & masks[:, None]).ravel()
    return pa.table(
        {
            "band": np.repeat(np.arange(bands, dtype=np.int16), len(ids)),
            "value": values,
            "id": np.tile(ids, bands),
            "phash": np.tile(phashes, bands),
        },
        schema=BAND_SCHEMA,
    )


def band_edges(table: pa.Table, radius: int, masks: np.ndarray) -> pa.Table:
    """Edges (a, b, Hamming distance <= radius) among rows sharing (band, value), each pair once overall.

    Equal hashes collapse first (each joins the first id holding its hash, emitted by band 0 only), so a
    value shared by many identical images (blank frames) costs linear time. Distinct hashes sharing a
    value are compared pairwise in chunks of ``MAX_PAIRS_PER_CHUNK``: memory stays bounded, time grows
    with the square of the distinct hashes in one group (logged above ``LARGE_GROUP``).
    """
    if table.num_rows < 2:
        return EDGE_SCHEMA.empty_table()
    band, value, ids, phash = (table[name].to_numpy() for name in ("band", "value", "id", "phash"))
    order = np.lexsort((ids, phash, value, band))
    band, value, ids, phash = band[order], value[order], ids[order], phash[order]
    same_group = np.zeros(len(ids), dtype=bool)
    same_group[1:] = (band[1:] == band[:-1]) & (value[1:] == value[:-1])
    same_hash = np.zeros(len(ids), dtype=bool)
    same_hash[1:] = same_group[1:] & (phash[1:] == phash[:-1])
    first_of_hash = _run_starts(same_hash)
    twins = np.flatnonzero(same_hash & (band == 0))
    parts = [_edges(ids[first_of_hash[twins]], ids[twins], np.zeros(len(twins), dtype=np.int8))]
    distinct = np.flatnonzero(~same_hash)
    parts += _distinct_pair_edges(band[distinct], same_group[distinct], ids[distinct], phash[distinct], radius, masks)
    return pa.concat_tables(parts)


def _edges(a: np.ndarray, b: np.ndarray, distance: np.ndarray) -> pa.Table:
    return pa.table({"a": a, "b": b, "distance": distance.astype(np.int8)}, schema=EDGE_SCHEMA)


def _distinct_pair_edges(
    band: np.ndarray, same_group: np.ndarray, ids: np.ndarray, phash: np.ndarray, radius: int, masks: np.ndarray
) -> list[pa.Table]:
    count = len(ids)
    starts = np.flatnonzero(~same_group)
    group_end = np.repeat(np.append(starts[1:], count), np.diff(np.append(starts, count)))
    later = group_end - np.arange(count) - 1  # partners after each row in its group
    sizes = np.diff(np.append(starts, count))
    if sizes.size and sizes.max() > LARGE_GROUP:
        log.warning("dedup: %d distinct pHashes share one band value: quadratic comparisons", sizes.max())
    cumulative = np.cumsum(later)
    edges, begin = [], 0
    while begin < count:
        done_before = cumulative[begin - 1] if begin else 0
        end = max(int(np.searchsorted(cumulative, done_before + MAX_PAIRS_PER_CHUNK, side="right")), begin + 1)
        edges.append(_chunk_edges(begin, min(end, count), later, band, ids, phash, radius, masks))
        begin = end
    return edges


def _chunk_edges(
    begin: int,
    end: int,
    later: np.ndarray,
    band: np.ndarray,
    ids: np.ndarray,
    phash: np.ndarray,
    radius: int,
    masks: np.ndarray,
) -> pa.Table:
    counts = later[begin:end]
    total = int(counts.sum())
    if total == 0:
        return EDGE_SCHEMA.empty_table()
    left = np.repeat(np.arange(begin, end), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    right = left + 1 + offsets
    xor = phash[left] ^ phash[right]
    distance = np.bitwise_count(xor)
    near = distance <= radius
    left, right, xor, distance = left[near], right[near], xor[near], distance[near]
    first_band = np.argmax((xor[:, None] & masks[None, :]) == 0, axis=1)  # exists: the pair collided here
    canonical = first_band == band[left]
    return _edges(ids[left[canonical]], ids[right[canonical]], distance[canonical])


# ---------------------------------------------------------------- components and representatives


def component_labels(edges: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(node ids, component label of each) over the endpoints of ``edges``."""
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    half = len(a)
    graph = coo_matrix((np.ones(half, dtype=np.int8), (inverse[:half], inverse[half:])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    return nodes, labels


@dataclass(frozen=True)
class Kept:
    """A component member that is not its representative: its key, the representative's, their distance."""

    member_key: str
    kept_id: int
    kept_key: str
    distance: int


def representatives(nodes: pa.Table, labels_by_id: dict[int, int]) -> dict[int, Kept]:
    """``Kept`` of every node that is not the representative of its component. ``nodes``: id, key, pixels,
    written, phash of every node of the components.
    """
    table = nodes.append_column("component", pa.array([labels_by_id[i] for i in nodes["id"].to_pylist()]))
    ordered = table.sort_by([("component", "ascending"), *REPRESENTATIVE_ORDER]).to_pylist()
    result: dict[int, Kept] = {}
    for _, members in itertools.groupby(ordered, key=lambda row: row["component"]):
        head, *rest = members
        for row in rest:
            distance = (row["phash"] ^ head["phash"]).bit_count()
            result[row["id"]] = Kept(row["key"], head["id"], head["key"], distance)
    return result
