"""``DEST/export_summary.json``: what the export wrote, the PixArt config keys to set, and notes."""

from __future__ import annotations

from collections import Counter
from typing import Any

from curation.pixart.embed_files import null_embed_name
from curation.pixart.export_captions import PRIMARY_CAPTION, PROMPT, SHAREGPT4V
from curation.pixart.layout import ExportPlan

JSON_NAME = "data_info.json"
COUNTS = (
    "exported",
    "prompt_caption",
    "prompt_fallback_dense",
    "legacy_format",
    "sharegpt4v_caption",
    "sharegpt4v_features",
    "t5_encoded_at_export",
    "skipped_not_square",
    "skipped_inconsistent",
    "skipped_incomplete",
    "skipped_duplicate_key",
)


def real_prompt_ratio(plan: ExportPlan, stats: Counter) -> float:
    # Σ's loader reads sharegpt4v (text and features) with probability 1 - ratio, so every sample needs both.
    exported = stats["exported"]
    complete = 0 < exported == stats["sharegpt4v_features"] == stats["sharegpt4v_caption"]
    return 0.5 if plan.flavor == "sigma" and complete else 1.0


def pixart_config(plan: ExportPlan, ratio: float) -> dict[str, Any]:
    """The PixArt config keys to set for this export (reference §7)."""
    data = {"type": plan.layout.dataset_class, "root": "InternData", "image_list_json": [JSON_NAME]}
    return {
        "data_root": str(plan.dest),
        "data": {**data, "load_vae_feat": True, "load_t5_feat": True},
        "image_size": plan.resolution,
        "multi_scale": not plan.single_scale,
        "aspect_ratio_type": None if plan.single_scale else f"ASPECT_RATIO_{plan.resolution}",
        "scale_factor": plan.scale_factor,
        "model_max_length": plan.max_length,
        "real_prompt_ratio": ratio,
    }


def _notes(plan: ExportPlan, stats: Counter, embeddings: dict[str, Any], prompt_caption: str) -> list[str]:
    notes = [
        f"Run PixArt's train scripts from {plan.dest} (or copy its output/ folder into your PixArt working "
        "directory): they read output/pretrained_models/ and output/tmp/ relative to the working directory."
    ]
    if embeddings["null_embed"] is None:
        notes.append(
            f"No embeddings/{null_embed_name(plan.max_length)} in the dataset: run `curate embed-prompts` or export "
            "without --skip-embeddings (PixArt-Σ's load_checkpoint needs the file whenever it loads a checkpoint)."
        )
    if embeddings.get("not_cached"):
        notes.append(f"The embeddings were computed for this export only (not cached: {embeddings['not_cached']}).")
    if plan.single_scale:
        notes.append(f"Single-scale: {stats['skipped_not_square']} samples outside the square bucket were skipped.")
    if stats["prompt_fallback_dense"]:
        notes.append(
            f"{stats['prompt_fallback_dense']} samples have no {prompt_caption!r} caption: their prompt is "
            "the dense caption (the same features in both T5 folders)."
        )
    if plan.flavor == "sigma" and real_prompt_ratio(plan, stats) == 1.0:
        notes.append(f"Set real_prompt_ratio=1.0 (Σ configs default to 0.5): {_sharegpt4v_gap(stats)}.")
    if plan.flavor == "alpha":
        notes.append(
            "Train with the PixArt-alpha repo's train.py: the sigma repo's loop does not read alpha "
            "T5 features (§8.14)."
        )
    if stats["skipped_inconsistent"]:
        notes.append(
            f"{stats['skipped_inconsistent']} samples skipped: image size, bucket and latent shape "
            "disagree (run `curate verify`)."
        )
    return notes


def _sharegpt4v_gap(stats: Counter) -> str:
    exported, captions, features = stats["exported"], stats["sharegpt4v_caption"], stats["sharegpt4v_features"]
    if captions < exported:
        return (
            f"{exported - captions} of {exported} samples have no second caption (a dataset built before "
            "per-caption T5 features, whose only other caption is the alt text)"
        )
    return f"only {features} of {exported} samples have sharegpt4v T5 features (see --no-second-captions)"


def _captions(plan: ExportPlan, prompt_caption: str) -> dict[str, str]:
    if plan.flavor != "sigma":
        return {PROMPT: PRIMARY_CAPTION}
    return {PROMPT: prompt_caption, SHAREGPT4V: PRIMARY_CAPTION, "prompt_fallback": PRIMARY_CAPTION}


def build_summary(
    plan: ExportPlan, stats: Counter, embeddings: dict[str, Any], json_paths: list[str], prompt_caption: str
) -> dict[str, Any]:
    counts = {name: stats[name] for name in COUNTS}
    return {
        "flavor": plan.flavor,
        "max_length": plan.max_length,
        "resolution": plan.resolution,
        "single_scale": plan.single_scale,
        "dest": str(plan.dest),
        "captions": _captions(plan, prompt_caption),
        "counts": counts,
        "t5_loaded": stats["t5_encoded_at_export"] > 0 or embeddings["source"] == "computed",
        "folders": [str(folder) for folder in plan.folders()],
        "data_info": json_paths,
        "embeddings": embeddings,
        "pixart_config": pixart_config(plan, real_prompt_ratio(plan, stats)),
        "notes": _notes(plan, stats, embeddings, prompt_caption),
    }
