import pytest
import torch

from curation.config import ModelRef
from curation.models.loading import (
    check_model_paths,
    looks_local,
    pretrained_kwargs,
    provenance,
    resolve_device,
    resolve_dtype,
)


def test_auto_device_and_dtype_on_a_cpu_worker():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_pretrained_kwargs_carry_subfolder_and_revision():
    ref = ModelRef(path="org/repo", subfolder="vae", revision="abc123")
    assert pretrained_kwargs(ref) == {"subfolder": "vae", "revision": "abc123"}
    assert pretrained_kwargs(ref, subfolder="tokenizer")["subfolder"] == "tokenizer"
    assert pretrained_kwargs(ModelRef(path="local/dir")) == {}


def test_provenance_hashes_local_weights_and_notes_unpinned_hub_ids(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x" * 100)
    first = provenance(ModelRef(path=str(tmp_path), subfolder="vae"))["weights_sha256_sampled"]
    weights.write_bytes(b"y" * 100)
    assert provenance(ModelRef(path=str(tmp_path), subfolder="vae"))["weights_sha256_sampled"] != first
    assert provenance(ModelRef(path="org/not-local"))["revision"] == "main (unpinned)"
    assert provenance(ModelRef(path="org/not-local", revision="v1"))["revision"] == "v1"


def test_missing_local_model_paths_fail_early_and_hub_ids_pass(tmp_path):
    assert looks_local("./models/llava") and looks_local("/abs/path") and looks_local("a/b/c")
    assert not looks_local("llava-hf/llava-1.5-7b-hf")
    check_model_paths([ModelRef(path="llava-hf/llava-1.5-7b-hf"), ModelRef(path=str(tmp_path))])
    with pytest.raises(FileNotFoundError, match="missing-model"):
        check_model_paths([ModelRef(path=str(tmp_path / "missing-model"))])
