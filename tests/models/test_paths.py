"""Model paths on every node: resolved on the driver, tiny models created by a worker that lacks them."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path

from curation.config import load_config
from curation.models.paths import ModelsOnNode, model_refs, resolve_model_paths, tiny_models_on_this_node

ROOT = Path(__file__).resolve().parents[2]


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_relative_local_paths_become_absolute_and_hub_ids_stay(tmp_path):
    (tmp_path / "models/vae").mkdir(parents=True)  # one slash, like a hub id, but it exists here
    config = load_config(
        ROOT / "configs/demo.yaml",
        ["caption.model.path=llava-hf/llava-1.5-7b-hf", "vae.model.path=models/vae", "t5.model.path=./t5/../t5x"],
    )
    resolved = resolve_model_paths(config, tmp_path)
    assert resolved.caption.model.path == "llava-hf/llava-1.5-7b-hf"
    assert resolved.vae.model.path == f"{tmp_path}/models/vae"
    assert resolved.t5.model.path == f"{tmp_path}/t5x"
    assert resolved.tiny_models_dir == f"{tmp_path}/.cache/tiny-models"
    assert resolved.vae.model.subfolder == "vae"  # the rest of each reference is kept
    assert config.vae.model.path == "models/vae"  # the given config is unchanged
    assert resolve_model_paths(resolved, "/elsewhere") == resolved  # absolute paths stay


def test_model_refs_lists_every_model_of_a_recipe():
    config = load_config(ROOT / "configs/demo.yaml")
    assert sorted(ref.path for ref in model_refs(config)) == [
        ".cache/tiny-models/llava",
        ".cache/tiny-models/pixart_sigma",
        ".cache/tiny-models/pixart_sigma",
    ]


def test_paths_outside_the_tiny_models_dir_are_left_alone(tmp_path):
    tiny = tmp_path / "tiny"
    assert tiny_models_on_this_node([str(tmp_path / "mine/llava")], str(tiny)) is False
    assert tiny_models_on_this_node([str(tiny / "llava")], None) is False
    assert not tiny.exists()


def test_a_node_without_the_models_creates_the_same_bytes(tmp_path, tiny_models):
    """Two workers of one node at once (two processes): one writes, the other waits; the driver's bytes."""
    tiny = tmp_path / "node-copy/.cache/tiny-models"
    paths = [str(tiny / "llava"), str(tiny / "pixart_sigma")]
    code = "import sys; from curation.models.paths import tiny_models_on_this_node as f; f(sys.argv[2:], sys.argv[1])"
    other = subprocess.Popen([sys.executable, "-c", code, str(tiny), *paths], cwd=ROOT, stderr=subprocess.PIPE)
    assert tiny_models_on_this_node(paths, str(tiny)) is True
    _, err = other.communicate(timeout=240)
    assert other.returncode == 0, err.decode()[-2000:]
    assert file_hashes(tiny) == file_hashes(tiny_models)


def test_models_on_node_wraps_a_stage_factory_for_ray(tiny_models):
    factory = ModelsOnNode(partial(dict, built=True), (str(tiny_models / "llava"),), str(tiny_models))
    assert pickle.loads(pickle.dumps(factory))() == {"built": True}
