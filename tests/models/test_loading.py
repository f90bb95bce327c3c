from pathlib import Path

import pytest
import torch

from curation.config import ModelRef, load_config
from curation.models.loading import (
    check_model_paths,
    looks_local,
    model_records,
    pretrained_kwargs,
    provenance,
    resolve_device,
    resolve_dtype,
    resolve_numerics,
    resolve_on_driver,
)

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(
    ("device", "dtype", "num_gpus", "cluster_gpus", "expected"),
    [
        ("auto", "auto", 1, 8, ("cuda", "bfloat16")),  # a GPU stage on a GPU cluster: bf16 assumed
        ("auto", "auto", 0.5, 1, ("cuda", "bfloat16")),
        ("auto", "auto", 0, 8, ("cpu", "float32")),  # Ray hides GPUs from workers that did not ask for one
        ("auto", "auto", 1, 0, ("cpu", "float32")),
        ("auto", "float16", 1, 2, ("cuda", "float16")),
        ("cuda:1", "auto", 1, 2, ("cuda:1", "bfloat16")),
        ("cpu", "bfloat16", 0, 0, ("cpu", "bfloat16")),
    ],
)
def test_driver_resolves_auto_device_and_dtype_from_the_cluster(device, dtype, num_gpus, cluster_gpus, expected):
    ref = resolve_on_driver(ModelRef(path="org/m", device=device, dtype=dtype), num_gpus, cluster_gpus)
    assert (ref.device, ref.dtype) == expected
    assert ref.path == "org/m"


def test_resolve_numerics_uses_each_stage_pool_and_keeps_the_fingerprint():
    config = load_config(ROOT / "configs/demo.yaml", ["t5.resources.num_gpus=1", "vae.model.dtype=float16"])
    resolved = resolve_numerics(config, cluster_gpus=2)
    assert (resolved.t5.model.device, resolved.t5.model.dtype) == ("cuda", "bfloat16")
    assert (resolved.vae.model.device, resolved.vae.model.dtype) == ("cpu", "float16")
    assert (resolved.caption.model.device, resolved.caption.model.dtype) == ("cpu", "float32")
    assert (config.t5.model.device, config.t5.model.dtype) == ("auto", "auto")  # the recipe is untouched
    on_cpu = resolve_numerics(config, cluster_gpus=0)
    assert (on_cpu.t5.model.device, on_cpu.t5.model.dtype) == ("cpu", "float32")
    records = model_records(resolved)
    assert {name: (r["device"], r["dtype"]) for name, r in records.items()} == {
        "caption": ("cpu", "float32"),
        "t5": ("cuda", "bfloat16"),
        "vae": ("cpu", "float16"),
    }
    assert records["t5"]["subfolders"] == ["tokenizer", "text_encoder"]


def test_provenance_hashes_a_single_local_weights_file(tmp_path):
    weights = tmp_path / "aesthetic.pth"
    weights.write_bytes(b"a" * 64)
    first = provenance(ModelRef(path=str(weights)))
    assert first["weights_sha256_sampled"] and first["revision"] is None
    weights.write_bytes(b"b" * 64)
    assert provenance(ModelRef(path=str(weights)))["weights_sha256_sampled"] != first["weights_sha256_sampled"]


def test_model_records_cover_the_enabled_scorers(tiny_models):
    scorers = tiny_models / "scorers"
    config = load_config(
        ROOT / "configs/demo.yaml",
        [f"scorers.clip.path={scorers}/clip", f"scorers.aesthetic.model.path={scorers}/aesthetic"],
    )
    records = model_records(resolve_numerics(config, cluster_gpus=0))
    assert set(records) == {"caption", "t5", "vae", "scorers.clip", "scorers.aesthetic"}
    aesthetic = records["scorers.aesthetic"]
    assert aesthetic["file"] == config.scorers.aesthetic.weights_file
    assert (
        aesthetic["weights_sha256_sampled"]
        == provenance(ModelRef(path=str(scorers / "aesthetic" / config.scorers.aesthetic.weights_file)))[
            "weights_sha256_sampled"
        ]
    )
    assert (records["scorers.clip"]["device"], records["scorers.clip"]["dtype"]) == ("cpu", "float32")
