"""``make demo-vllm`` writes the captions ``make demo`` writes: the demo built with ``caption.backend=vllm``
against the HF backend's demo build, sample by sample (vLLM venv only)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from curation.cli import main
from tests.dataset_compare import sample_json


def vllm_installed() -> bool:
    spec = importlib.util.find_spec("vllm")  # not ``import vllm``: tests/vllm is a namespace package too
    return spec is not None and spec.origin is not None


pytestmark = [
    pytest.mark.skipif(not vllm_installed(), reason="vLLM backend: runs in the vLLM venv (make test-vllm)"),
    pytest.mark.timeout(900),
]
CAPTION_FIELDS = ("captions", "caption_status", "caption_tokens", "caption_flags", "t5_tokens")


def test_the_demo_built_with_vllm_has_the_hf_demos_captions(demo_dataset, demo_build_args, tmp_path):
    args = list(demo_build_args)
    args[args.index("--output") + 1] = str(tmp_path / "demo-vllm")
    assert main([*args, "--set", "caption.backend=vllm"]) == 0
    with_vllm, with_hf = sample_json(tmp_path / "demo-vllm"), sample_json(demo_dataset)
    assert sorted(with_vllm) == sorted(with_hf) and len(with_hf) == 20
    for key, expected in with_hf.items():
        assert {f: with_vllm[key][f] for f in CAPTION_FIELDS} == {f: expected[f] for f in CAPTION_FIELDS}, key
    manifest = json.loads((tmp_path / "demo-vllm" / "manifest.json").read_text())
    assert manifest["config"]["caption"]["backend"] == "vllm"
    assert manifest["counts"] == json.loads((demo_dataset / "manifest.json").read_text())["counts"]
