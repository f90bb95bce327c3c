"""A model folder that ships its own code is refused, and its code never runs, unless the config opts in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.config import load_config
from curation.stages.caption import CaptionStage

ROOT = Path(__file__).resolve().parents[2]
AUTO_MAP = {"AutoConfig": "custom.Config", "AutoModelForImageTextToText": "custom.Model"}


def repo_with_code(root: Path, marker: Path) -> Path:
    """A model folder whose config and processor point at ``custom.py``, which leaves ``marker`` if it runs."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "custom_vlm", "auto_map": AUTO_MAP}))
    processor = {"processor_class": "Processor", "auto_map": {"AutoProcessor": "custom.Processor"}}
    (root / "processor_config.json").write_text(json.dumps(processor))
    (root / "custom.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    return root


def test_the_caption_stage_refuses_code_shipped_with_a_model(tmp_path):
    marker = tmp_path / "custom-code-ran"
    repo = repo_with_code(tmp_path / "repo", marker)
    stage = CaptionStage(load_config(ROOT / "configs/demo.yaml", [f"caption.model.path={repo}"]).caption)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        stage.setup()
    assert not marker.exists()
