"""VAE latents per aspect-ratio bucket: posterior mean ‖ std, unscaled, float16 [8, h/8, w/8].

The pixels are PixArt's online multi-scale transform (resize to cover the bucket, centre crop,
[-1, 1]), re-implemented on PIL because torchvision is not available next to the CPU torch.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps

from curation.config import VAEConfig
from curation.io.layout import npy_bytes
from curation.models.loading import pretrained_kwargs, resolve_device, resolve_dtype
from curation.records import Row
from curation.stages.base import Stage

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def cover_size(height: int, width: int, bucket_hw: tuple[int, int]) -> tuple[int, int]:
    """PixArt's ``resize_size`` (h, w): the smallest aspect-preserving size covering the bucket."""
    target_h, target_w = bucket_hw
    if target_h / height > target_w / width:
        return target_h, int(width * target_h / height)
    return int(height * target_w / width), target_w


def center_crop_box(height: int, width: int, bucket_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """PIL crop box (left, top, right, bottom) with torchvision ``CenterCrop``'s rounding."""
    target_h, target_w = bucket_hw
    # torchvision: int(round((h - th) / 2.0)); Python's round() sends x.5 to the even neighbour.
    top = round((height - target_h) / 2.0)
    left = round((width - target_w) / 2.0)
    return left, top, left + target_w, top + target_h


def bucket_pixels(image: Image.Image, bucket_hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """float32 [3, h, w] in [-1, 1]: RGB, resize to cover, centre crop, ToTensor, Normalize([.5], [.5])."""
    image = image.convert("RGB")
    resized_h, resized_w = cover_size(image.height, image.width, bucket_hw)
    # torchvision's Resize on a PIL image is exactly ``PIL.Image.resize`` with the same filter.
    image = image.resize((resized_w, resized_h), INTERPOLATIONS[interpolation])
    image = image.crop(center_crop_box(resized_h, resized_w, bucket_hw))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels.to(torch.float32).div(255).sub(0.5).div(0.5)


def decode_upright(row: Row) -> Image.Image:
    """The stored image, EXIF orientation applied, checked against the row's (upright) size."""
    with Image.open(io.BytesIO(row["image"])) as encoded:
        image = ImageOps.exif_transpose(encoded)
        image.load()
    if (image.width, image.height) != (row["width"], row["height"]):
        raise ValueError(f"decoded image is {image.width}x{image.height}, row says {row['width']}x{row['height']}")
    return image


def group_by_bucket(rows: list[Row]) -> dict[tuple[int, int], list[Row]]:
    groups: dict[tuple[int, int], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["bucket_h"], row["bucket_w"])].append(row)
    return groups


class VAEStage(Stage):
    name = "vae"
    uses_model: ClassVar[bool] = True

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config.resources)
        self.config = config
        self.vae = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def setup(self) -> None:
        from diffusers import AutoencoderKL

        self.device = resolve_device(self.config.model.device)
        # "auto" is bf16 on CUDA: the SDXL VAE overflows in fp16 unless the user picks an fp16-fixed one.
        self.dtype = resolve_dtype(self.config.model.dtype, self.device)
        kwargs = pretrained_kwargs(self.config.model)
        self.vae = AutoencoderKL.from_pretrained(self.config.model.path, dtype=self.dtype, **kwargs)
        self.vae.to(self.device).eval()

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 3, h, w] in [-1, 1] → float16 [B, 8, h/8, w/8]: posterior mean (0-3) ‖ std (4-7), unscaled."""
        if self.vae is None:
            self.setup()
        with torch.inference_mode():
            posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
            moments = torch.cat([posterior.mean, posterior.std], dim=1)
        return moments.float().cpu().numpy().astype(np.float16)

    def process_rows(self, rows: list[Row]) -> None:
        batch_size = self.resources.batch_size
        for same_shape in group_by_bucket(rows).values():
            for start in range(0, len(same_shape), batch_size):
                self.isolate_failures(same_shape[start : start + batch_size], self._encode_rows)

    def _encode_rows(self, rows: list[Row]) -> None:
        """One ``vae.encode`` call for rows that all share a bucket."""
        interpolation = self.config.interpolation
        pixels = torch.stack(
            [bucket_pixels(decode_upright(row), (row["bucket_h"], row["bucket_w"]), interpolation) for row in rows]
        )
        for row, moments in zip(rows, self.encode_pixels(pixels), strict=True):
            row["vae"] = npy_bytes(moments)
