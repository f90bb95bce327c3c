"""Where each PixArt dataset class looks for its files, per flavor and mode (reference §1, §3b, §8)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOKENS = {"alpha": 120, "sigma": 300}


@dataclass(frozen=True)
class Layout:
    """Where one flavor's loaders look, relative to ``DEST/InternData`` ("" is InternData itself)."""

    dataset_class: str
    json_dirs: tuple[str, ...]
    caption_dirs: tuple[str, ...]  # T5 of the entry's ``prompt``
    sharegpt4v_dir: str | None  # Σ: T5 of the entry's ``sharegpt4v`` (the loader's other branch)
    vae_dir: str
    feature_dtype: type[np.generic]
    mask_dtype: type[np.generic]
    vae_dtype: type[np.generic]


def pixart_layout(flavor: str, resolution: int, single_scale: bool) -> Layout:
    """The folders and dtypes of reference §1a/§1b/§3b for one flavor and mode."""
    if flavor == "sigma":
        suffix = "resolution_new" if single_scale else "resolution_ms_new"
        return Layout(
            "InternalDataSigma" if single_scale else "InternalDataMSSigma",
            ("",),
            ("caption_features_new",),
            "sharegpt4v_caption_features_new",
            f"img_sdxl_vae_features_{resolution}{suffix}",
            np.float16,
            np.int16,
            np.float16,
        )
    if single_scale:  # α single-scale latents were float32 (fp32 VAE); fp16 → fp32 is lossless.
        vae_dir = f"img_vae_features_{resolution}resolution/noflip"
        wmask = ("caption_feature_wmask",)
        return Layout("InternalData", ("", "partition"), wmask, None, vae_dir, np.float32, np.int64, np.float32)
    # A's InternalDataMS reads partition_filter/ + caption_feature_wmask/; S's reads the root + caption_features/.
    return Layout(
        "InternalDataMS",
        ("", "partition_filter"),
        ("caption_feature_wmask", "caption_features"),
        None,
        f"img_vae_fatures_{resolution}_multiscale/ms",
        np.float32,
        np.int64,
        np.float16,
    )


@dataclass(frozen=True)
class ExportPlan:
    dest: Path
    flavor: str
    max_length: int
    resolution: int
    single_scale: bool
    scale_factor: float
    layout: Layout

    @property
    def data_dir(self) -> Path:
        return self.dest / "InternData"

    @property
    def image_dir(self) -> Path:
        return self.dest / "InternImgs"

    def caption_paths(self, key: str) -> list[Path]:
        return [self.data_dir / folder / f"{key}.npz" for folder in self.layout.caption_dirs]

    def sharegpt4v_path(self, key: str) -> Path:
        return self.data_dir / str(self.layout.sharegpt4v_dir) / f"{key}.npz"

    def feature_paths(self, role: str, key: str) -> list[Path]:
        """Where the T5 npz of an entry's ``prompt`` or ``sharegpt4v`` caption goes (every loader's folder)."""
        if role == "prompt":
            return self.caption_paths(key)
        return [self.sharegpt4v_path(key)] if self.layout.sharegpt4v_dir else []

    def vae_path(self, key: str) -> Path:
        return self.data_dir / self.layout.vae_dir / f"{key}.npy"

    def folders(self) -> list[Path]:
        sharegpt4v = [self.layout.sharegpt4v_dir] if self.layout.sharegpt4v_dir else []
        named = [*self.layout.json_dirs, *self.layout.caption_dirs, *sharegpt4v, self.layout.vae_dir]
        return [self.image_dir, *(self.data_dir / name for name in named)]


def plan_export(
    manifest: dict[str, Any], dest: str | Path, flavor: str, resolution: int | None, single_scale: bool
) -> ExportPlan:
    """Check the dataset fits the flavor (token length, VAE family, bucket table) and fix the layout."""
    if flavor not in TOKENS:
        raise ValueError(f"flavor must be one of {sorted(TOKENS)}, got {flavor!r}")
    config = manifest["config"]
    max_length = int(config["t5"]["max_length"])
    if max_length != TOKENS[flavor]:
        raise ValueError(f"dataset T5 max_length is {max_length}; PixArt-{flavor} needs {TOKENS[flavor]} (§8.2)")
    if config.get("flavor", flavor) != flavor:
        raise ValueError(f"the dataset's latents come from PixArt-{config['flavor']}'s VAE, not {flavor}'s (§8.1)")
    base = int(config["vae"]["aspect_ratios"])
    if (resolution or base) != base:
        raise ValueError(f"latents are stored for the {base} bucket table; build with vae.aspect_ratios={resolution}")
    if flavor == "alpha" and not single_scale and base == 2048:
        raise ValueError("PixArt-alpha has no ASPECT_RATIO_2048 table; use sigma or a smaller table")
    dest = Path(dest).absolute()
    if "InternData" in str(dest):  # PixArt finds images by replacing 'InternData' in the whole root path (§8.9)
        raise ValueError(f"{dest}: the destination path must not contain 'InternData'")
    layout = pixart_layout(flavor, base, single_scale)
    return ExportPlan(dest, flavor, max_length, base, single_scale, float(config["vae"]["scale_factor"]), layout)
