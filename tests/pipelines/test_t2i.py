"""End to end: ``curate build configs/demo.yaml`` on an embedded Ray, checked against the contract."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.cli import main
from curation.io.layout import load_npy

ROOT = Path(__file__).resolve().parents[2]
BROKEN = {"broken_truncated", "broken_zero", "not_an_image", "broken_header"}
JSON_FIELDS = {
    "key",
    "source",
    "width",
    "height",
    "bucket",
    "bucket_hw",
    "captions",
    "caption_status",
    "t5_tokens",
    "t5_truncated",
    "sha256",
    "phash",
}


@pytest.fixture(scope="module")
def demo_output(demo_dataset, demo_build_args):
    return demo_dataset, demo_build_args


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                assert key not in samples or ext not in samples[key], f"duplicate member {member.name}"
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _table(folder: Path):
    files = sorted(folder.glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_manifest_accounts_for_every_input(demo_output):
    out, _ = demo_output
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    inputs = [
        p
        for p in (ROOT / "examples/images").rglob("*")
        if p.is_file() and p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    ]
    assert counts["input"] == len(inputs) == counts["written"] + counts["rejected"] + counts["failed"]
    assert counts["written"] >= 15
    for field in ("config", "fingerprint", "models", "versions", "started_at", "finished_at"):
        assert manifest[field], field
    assert set(manifest["models"]) == {"caption", "t5", "vae"}
    assert all(m.get("weights_sha256_sampled") for m in manifest["models"].values())


def test_broken_inputs_are_rejected_with_reasons(demo_output):
    out, _ = demo_output
    rejects = {Path(r["source"]).stem: r for r in _table(out / "rejects")}
    assert set(rejects) >= BROKEN
    for row in rejects.values():
        assert row["stage"] and row["reason"] and row["key"]
    assert rejects["broken_zero"]["reason"] == "empty"


def test_shards_hold_every_contract_field(demo_output):
    out, _ = demo_output
    samples = _samples(out)
    index = {row["key"]: row for row in _table(out / "index")}
    assert set(samples) == set(index)
    for key, members in samples.items():
        image_ext = [e for e in members if e in ("jpg", "png", "webp")]
        assert len(image_ext) == 1 and {"json", "txt", "t5.npy", "vae.npy"} <= set(members), members.keys()
        meta = json.loads(members["json"])
        assert set(meta) >= JSON_FIELDS and meta["key"] == key
        assert Image.open(io.BytesIO(members[image_ext[0]])).size == (meta["width"], meta["height"])
        assert members["txt"].decode() == meta["captions"]["dense"]
        t5 = load_npy(members["t5.npy"])
        vae = load_npy(members["vae.npy"])
        assert t5.dtype == np.float16 and t5.shape[0] == meta["t5_tokens"] and t5.ndim == 2
        h, w = meta["bucket_hw"]
        assert vae.dtype == np.float16 and vae.shape == (8, h // 8, w // 8)
        assert (
            float(meta["bucket"]) == pytest.approx(float(meta["bucket"]))
            and str(float(meta["bucket"])) == meta["bucket"]
        )
        assert index[key]["shard"] and index[key]["caption"] == meta["captions"]["dense"]


def test_rerun_resumes_without_rewriting(demo_output):
    out, args = demo_output
    before = sorted(p.name for p in (out / "shards").glob("*.tar"))
    counts_before = json.loads((out / "manifest.json").read_text())["counts"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == before
    assert json.loads((out / "manifest.json").read_text())["counts"] == counts_before


def test_changed_config_is_refused_without_overwrite(demo_output, capsys):
    _, args = demo_output
    assert main([*args, "--set", "caption.max_new_tokens=5"]) == 2
    assert "fingerprint" in capsys.readouterr().err.lower()


def test_verify_passes_on_the_demo_dataset(demo_output):
    out, _ = demo_output
    assert main(["verify", str(out)]) == 0


def test_missing_model_path_is_a_clear_error_before_any_work(demo_build_args, tmp_path, capsys):
    args = list(demo_build_args)
    args[args.index("--output") + 1] = str(tmp_path / "never-written")
    assert main([*args, "--set", f"vae.model.path={tmp_path}/no-such-vae"]) == 2
    assert "no-such-vae" in capsys.readouterr().err
    assert not (tmp_path / "never-written" / "shards").exists()
