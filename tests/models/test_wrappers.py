"""The model-wrapper layer: every model kind loads from a ModelRef with its subfolder, revision and remote-code rule.

Revisions are checked for real through a Hugging Face cache laid out on disk (two snapshots of one repo,
``refs/main`` naming one), loaded with ``local_files_only``: the revision decides which weights come back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from curation.config import ModelRef
from curation.models.tiny_scorers import NSFW_LABELS, write_tiny_classifier, write_tiny_clip
from curation.models.wrappers import load_pretrained, load_state_dict, model_provenance, weights_file

MAIN, PINNED = "1" * 40, "2" * 40  # commit hashes of the two snapshots


def tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=4,
        layers_per_block=1,
        latent_channels=4,
    )


def cpu(path: str, **fields) -> ModelRef:
    return ModelRef(path=path, device="cpu", **fields)


def _signature(tensor: torch.Tensor) -> tuple:
    values = tensor.detach().double()
    return tuple(tensor.shape), values.sum().item(), values.abs().sum().item()


def same_weights(model: torch.nn.Module, weights_path: Path) -> bool:
    """The model holds exactly the file's tensors (transformers 5 renames some weights in memory, so the
    tensors are matched by shape and values, not by name); file tensors are cast to the model's dtype."""
    dtype = next(model.parameters()).dtype
    saved = sorted(_signature(tensor.to(dtype)) for tensor in load_file(weights_path).values())
    held = sorted(_signature(tensor) for tensor in model.state_dict().values())
    return bool(saved) and saved == held


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """``models--tiny--repo`` with snapshots MAIN and PINNED, each holding ``clip/`` and ``vae/`` (other weights)."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--tiny--repo"
    for seed, commit in enumerate((MAIN, PINNED)):
        snapshot = repo / "snapshots" / commit
        write_tiny_clip(snapshot / "clip")
        clip = load_file(snapshot / "clip" / "model.safetensors")
        torch.manual_seed(seed)
        save_file({name: torch.randn_like(t) for name, t in clip.items()}, snapshot / "clip" / "model.safetensors")
        tiny_vae(seed).save_pretrained(snapshot / "vae")
        (snapshot / "weights.pth").write_bytes((snapshot / "clip" / "model.safetensors").read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    return cache


def test_each_model_kind_loads_from_a_local_folder_on_its_device_in_eval_mode(tmp_path):
    from diffusers import AutoencoderKL
    from transformers import AutoModelForImageClassification, CLIPModel

    write_tiny_clip(tmp_path / "clip")
    write_tiny_classifier(tmp_path / "nsfw", NSFW_LABELS)
    tiny_vae(0).save_pretrained(tmp_path / "repo" / "vae")

    clip, device, dtype = load_pretrained(CLIPModel, cpu(str(tmp_path / "clip"), dtype="bfloat16"))
    assert (device, dtype) == (torch.device("cpu"), torch.bfloat16) and not clip.training
    assert {p.dtype for p in clip.parameters()} == {torch.bfloat16}
    assert same_weights(clip, tmp_path / "clip" / "model.safetensors")

    classifier = load_pretrained(AutoModelForImageClassification, cpu(str(tmp_path / "nsfw"))).model
    assert type(classifier).__name__ == "ViTForImageClassification" and not classifier.training
    assert {p.dtype for p in classifier.parameters()} == {torch.float32}  # "auto" on a CPU worker
    assert same_weights(classifier, tmp_path / "nsfw" / "model.safetensors")

    # The subfolder of the ref, or the one given by the stage (T5's tokenizer / text_encoder), is used.
    vae = load_pretrained(AutoencoderKL, cpu(str(tmp_path / "repo"), subfolder="vae")).model
    assert same_weights(vae, tmp_path / "repo" / "vae" / "diffusion_pytorch_model.safetensors")
    vae = load_pretrained(AutoencoderKL, cpu(str(tmp_path / "repo")), "vae", dtype=torch.float16).model
    assert next(vae.parameters()).dtype == torch.float16


def test_the_revision_picks_the_snapshot_of_a_hub_id(hub_cache):
    from diffusers import AutoencoderKL
    from transformers import CLIPModel

    offline = dict(cache_dir=str(hub_cache), local_files_only=True)
    snapshots = hub_cache / "models--tiny--repo" / "snapshots"
    for revision, commit in ((None, MAIN), ("main", MAIN), (PINNED, PINNED)):
        clip = load_pretrained(CLIPModel, cpu("tiny/repo", subfolder="clip", revision=revision), **offline).model
        assert same_weights(clip, snapshots / commit / "clip" / "model.safetensors")
        vae = load_pretrained(AutoencoderKL, cpu("tiny/repo", revision=revision), "vae", **offline).model
        assert same_weights(vae, snapshots / commit / "vae" / "diffusion_pytorch_model.safetensors")
        weights = weights_file(cpu("tiny/repo", revision=revision), "weights.pth", **offline)
        assert weights.read_bytes() == (snapshots / commit / "weights.pth").read_bytes()
    with pytest.raises(OSError):  # a revision the cache does not hold is never silently replaced by another
        load_pretrained(CLIPModel, cpu("tiny/repo", subfolder="clip", revision="3" * 40), **offline)


def test_a_local_folder_is_read_as_it_is_whatever_the_revision(hub_cache):
    """from_pretrained ignores ``revision`` for a local folder: the manifest's weights hash is what pins it."""
    from transformers import CLIPModel

    folder = hub_cache / "models--tiny--repo" / "snapshots" / PINNED
    clip = load_pretrained(CLIPModel, cpu(str(folder), subfolder="clip", revision="no-such-revision")).model
    assert same_weights(clip, folder / "clip" / "model.safetensors")
    assert "weights_sha256_sampled" in model_provenance(cpu(str(folder), subfolder="clip", revision="x"))


REMOTE_CONFIG = """from transformers import PretrainedConfig


class RemoteTinyConfig(PretrainedConfig):
    model_type = "remote_tiny"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
"""
REMOTE_MODEL = """import torch
from transformers import PreTrainedModel

from .configuration_remote_tiny import RemoteTinyConfig


class RemoteTinyModel(PreTrainedModel):
    config_class = RemoteTinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, config.width)
        self.post_init()
"""


def test_repo_code_runs_only_when_the_ref_trusts_it(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic
    from transformers import AutoModel

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not the user's HF cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    repo = tmp_path / "remote"
    repo.mkdir()
    (repo / "configuration_remote_tiny.py").write_text(REMOTE_CONFIG)
    (repo / "modeling_remote_tiny.py").write_text(REMOTE_MODEL)
    auto_map = {
        "AutoConfig": "configuration_remote_tiny.RemoteTinyConfig",
        "AutoModel": "modeling_remote_tiny.RemoteTinyModel",
    }
    (repo / "config.json").write_text(json.dumps({"model_type": "remote_tiny", "width": 4, "auto_map": auto_map}))
    weights = {"proj.weight": torch.arange(16.0).view(4, 4), "proj.bias": torch.ones(4)}
    save_file(weights, repo / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match="trust_remote_code"):
        load_pretrained(AutoModel, cpu(str(repo)))
    model = load_pretrained(AutoModel, cpu(str(repo), trust_remote_code=True)).model
    assert type(model).__name__ == "RemoteTinyModel"
    assert torch.equal(model.proj.weight, weights["proj.weight"])
    assert model_provenance(cpu(str(repo), trust_remote_code=True))["trust_remote_code"] is True
    assert "trust_remote_code" not in model_provenance(cpu(str(repo)))


def test_weights_files_resolve_from_a_file_a_folder_or_a_subfolder_and_load_without_unpickling_code(tmp_path):
    state = {"layers.0.weight": torch.ones(2, 3), "layers.0.bias": torch.zeros(2)}
    (tmp_path / "sub").mkdir()
    torch.save(state, tmp_path / "sub" / "mlp.pth")
    save_file(state, tmp_path / "mlp.safetensors")
    file = weights_file(cpu(str(tmp_path / "sub" / "mlp.pth")), "ignored.pth")
    assert file == tmp_path / "sub" / "mlp.pth"
    assert weights_file(cpu(str(tmp_path), subfolder="sub"), "mlp.pth") == file
    with pytest.raises(FileNotFoundError, match=r"other\.pth"):
        weights_file(cpu(str(tmp_path)), "other.pth")
    for path in (file, tmp_path / "mlp.safetensors"):
        loaded = load_state_dict(path)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)

    torch.save({"layers.0.weight": torch.ones(1), "note": "not a tensor"}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        load_state_dict(tmp_path / "mixed.pth")
    torch.save(Path("an arbitrary object"), tmp_path / "pickle.pth")  # weights_only refuses other classes
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        load_state_dict(tmp_path / "pickle.pth")


def test_provenance_hashes_a_weights_file_directly_or_in_its_folder_and_names_the_hub_revision(tmp_path):
    (tmp_path / "mlp.pth").write_bytes(b"weights")
    direct = model_provenance(cpu(str(tmp_path / "mlp.pth")))
    in_folder = model_provenance(cpu(str(tmp_path)), filename="mlp.pth")
    assert in_folder["weights_sha256_sampled"] == direct["weights_sha256_sampled"]
    assert (in_folder["path"], in_folder["file"]) == (str(tmp_path), "mlp.pth")
    (tmp_path / "mlp.pth").write_bytes(b"other weights")
    changed = model_provenance(cpu(str(tmp_path)), filename="mlp.pth")["weights_sha256_sampled"]
    assert changed != direct["weights_sha256_sampled"]
    hub = model_provenance(cpu("org/aesthetic", revision="abc"), filename="mlp.pth")
    assert (hub["path"], hub["revision"], hub["file"]) == ("org/aesthetic", "abc", "mlp.pth")
    assert model_provenance(cpu("org/clip"))["revision"] == "main (unpinned)"
