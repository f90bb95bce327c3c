"""Compare two built datasets sample by sample, whatever built them and wherever they were written."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path


def dataset_contents(dataset: Path) -> dict[str, dict[str, object]]:
    """Every sample's tar members by key (the ``source`` path cut to its file name) plus its index row."""
    from curation.io.layout import SHARDS_DIR, iter_tar_samples, read_index

    samples: dict[str, dict[str, object]] = {}
    for shard in sorted((dataset / SHARDS_DIR).glob("*.tar")):
        with shard.open("rb") as file:
            for key, members in iter_tar_samples(file):
                record = json.loads(members.pop("json"))
                record["source"] = Path(record["source"]).name
                samples[key] = {**members, "json": record}
    for row in read_index(str(dataset)).to_pylist():
        row.pop("shard")
        row["source"] = Path(row["source"]).name
        samples[row["key"]]["index"] = row
    return samples


def shard_members(dataset: Path) -> dict[str, dict[str, bytes]]:
    """{key: {member extension: bytes}} over every shard, read with plain ``tarfile``; no member twice."""
    found: dict[str, dict[str, bytes]] = {}
    for shard in sorted((dataset / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                assert ext not in found.get(key, {}), f"{member.name} written twice"
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return found


def sample_json(dataset: Path) -> dict[str, dict]:
    """{key: the sample's json} over every shard."""
    return {key: json.loads(members["json"]) for key, members in shard_members(dataset).items()}
