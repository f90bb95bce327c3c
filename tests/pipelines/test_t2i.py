"""End to end: ``curate build configs/demo.yaml`` on an embedded Ray, checked against the contract."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_256_BIN
from PIL import Image

from curation.caption_quality import FLAGS
from curation.cli import main
from curation.io.layout import load_npy
from tests.dataset_compare import shard_members

ROOT = Path(__file__).resolve().parents[2]
JSON_FIELDS = {
    "key",
    "source",
    "width",
    "height",
    "bucket",
    "bucket_hw",
    "captions",
    "caption_status",
    "caption_tokens",
    "caption_flags",
    "caption_t5_tokens",
    "caption_t5_truncated",
    "t5_tokens",
    "t5_truncated",
    "sha256",
    "phash",
}


@pytest.fixture(scope="module")
def demo_output(demo_dataset, demo_build_args):
    return demo_dataset, demo_build_args


def _table(folder: Path):
    files = sorted(folder.glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_manifest_accounts_for_every_input(demo_output):
    out, _ = demo_output
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    files = [p for p in (ROOT / "examples/images").rglob("*") if p.is_file() and not p.name.startswith(".")]
    stems = {p.with_suffix("") for p in files if p.suffix not in {".txt", ".json"}}
    sidecars = [p for p in files if p.suffix in {".txt", ".json"} and p.with_suffix("") in stems]
    assert counts["input"] == len(files) - len(sidecars) == counts["written"] + counts["rejected"] + counts["failed"]
    assert manifest["inputs"]["sidecars"] == len(sidecars) == 3
    assert "unaccounted" not in manifest
    for field in ("config", "fingerprint", "models", "versions", "started_at", "finished_at"):
        assert manifest[field], field
    assert set(manifest["models"]) == {"caption", "t5", "vae"}
    assert all(m.get("weights_sha256_sampled") for m in manifest["models"].values())


# What each bundled file that is not written gets (examples/images; the rest are 20 good photos).
DEMO_REJECTS = {
    "LICENSE.md": ("filter", "not_an_image"),  # text
    "not_an_image.png": ("filter", "not_an_image"),  # text with an image extension
    "broken_header.webp": ("filter", "not_an_image"),  # random bytes
    "broken_zero.jpg": ("filter", "empty"),
    "broken_truncated.jpg": ("filter", "truncated"),
    "retina_strip_6x1.jpg": ("filter", "aspect_ratio"),
    "microaneurysms_tiny.png": ("filter", "too_small"),
    "nested/deeper/astronaut_small.jpg": ("dedup", "near_duplicate"),  # astronaut.jpg downscaled, re-encoded
}


def test_every_demo_input_has_its_exact_outcome(demo_output):
    out, _ = demo_output
    images = ROOT / "examples/images"
    rejects = {str(Path(r["source"]).relative_to(images)): r for r in _table(out / "rejects")}
    assert {name: (r["stage"], r["reason"]) for name, r in rejects.items()} == DEMO_REJECTS
    assert all(r["status"] == "rejected" and r["key"] and r["detail"] for r in rejects.values())
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == {"input": 28, "written": 20, "rejected": 8, "failed": 0}
    written = {str(Path(r["source"]).relative_to(images)) for r in _table(out / "index")}
    assert len(written) == 20 and not written & set(DEMO_REJECTS)


def test_shards_hold_every_contract_field(demo_output):
    out, _ = demo_output
    samples = shard_members(out)
    index = {row["key"]: row for row in _table(out / "index")}
    assert set(samples) == set(index)
    for key, members in samples.items():
        image_ext = [e for e in members if e in ("jpg", "png", "webp")]
        assert len(image_ext) == 1 and {"json", "txt", "t5.npy", "vae.npy"} <= set(members), members.keys()
        meta = json.loads(members["json"])
        assert set(meta) >= JSON_FIELDS and meta["key"] == key
        assert Image.open(io.BytesIO(members[image_ext[0]])).size == (meta["width"], meta["height"])
        assert members["txt"].decode() == meta["captions"]["dense"]
        assert {"dense", "short"} <= set(meta["captions"])
        assert set(meta["caption_status"]) == set(meta["caption_tokens"]) == {"dense", "short"}
        assert all(flag in FLAGS for flags in meta["caption_flags"].values() for flag in flags)
        assert 0 < meta["caption_tokens"]["dense"] <= 24 and 0 < meta["caption_tokens"]["short"] <= 12
        short = load_npy(members["t5.short.npy"])
        assert short.dtype == np.float16 and short.shape[0] == meta["caption_t5_tokens"]["short"]
        assert meta["caption_t5_tokens"]["dense"] == meta["t5_tokens"]
        t5 = load_npy(members["t5.npy"])
        vae = load_npy(members["vae.npy"])
        assert t5.dtype == np.float16 and t5.shape[0] == meta["t5_tokens"] and t5.ndim == 2
        h, w = meta["bucket_hw"]
        assert vae.dtype == np.float16 and vae.shape == (8, h // 8, w // 8)
        # PixArt's rule against diffusers' own 256 table: the ratio key nearest to h / w, and its [h, w].
        nearest = min(ASPECT_RATIO_256_BIN, key=lambda ratio: abs(float(ratio) - meta["height"] / meta["width"]))
        assert meta["bucket"] == nearest and meta["bucket_hw"] == [int(v) for v in ASPECT_RATIO_256_BIN[nearest]]
        assert index[key]["shard"] and index[key]["caption"] == meta["captions"]["dense"]


def test_manifest_has_the_run_statistics_of_every_stage(demo_output):
    out, _ = demo_output
    manifest = json.loads((out / "manifest.json").read_text())
    stages, counts = manifest["stages"], manifest["counts"]
    assert list(stages) == ["dedup", "read", "filter", "vae", "caption", "t5", "write"]
    assert stages["read"]["rows_in"] == counts["input"]
    written_by_filter = stages["filter"]["rows_out"].get("ok", 0)
    assert manifest["funnel"]["dedup"] == {"near_duplicate": 1}  # the downscaled re-encoded astronaut
    rejected_before_filter = sum(n for status, n in stages["read"]["rows_out"].items() if status != "ok")
    assert stages["filter"]["rows_in"] == counts["input"] - rejected_before_filter
    assert stages["vae"]["rows_in"] == written_by_filter
    assert stages["write"]["rows_out"]["ok"] == counts["written"]
    assert stages["write"]["seconds"] > 0 and stages["write"]["waited_seconds"] >= 0  # busy excludes the wait
    for name in ("vae", "caption", "t5"):
        stage = stages[name]
        assert stage["workers"] == 1 and stage["setup_seconds"] > 0 and stage["device"] == "cpu"
        assert 0 < stage["model_seconds"] <= stage["seconds"]
        assert stage["rows_per_s"] > 0 and stage["rows_per_worker_s"] >= stage["rows_per_s"]
        assert stage["model_tflops_per_s"] > 0


def test_rerun_resumes_without_rewriting(demo_output):
    out, args = demo_output
    before = sorted(p.name for p in (out / "shards").glob("*.tar"))
    counts_before = json.loads((out / "manifest.json").read_text())["counts"]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == counts_before
    assert manifest["inputs"]["already_done"] == counts_before["written"] + counts_before["rejected"]
    assert all(stage["rows_in"] == 0 for name, stage in manifest["stages"].items() if name != "read")


def test_changed_config_is_refused_without_overwrite(demo_output, capsys):
    _, args = demo_output
    assert main([*args, "--set", "caption.jobs.dense.max_new_tokens=5"]) == 2
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
