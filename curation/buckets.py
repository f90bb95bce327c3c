"""PixArt aspect-ratio buckets and the nearest-ratio rule.

PixArt's tables (``diffusion/data/datasets/utils.py``, ASPECT_RATIO_256/512/1024/2048) are the
2048 table scaled by 1/2^k. diffusers ships the full 2048 table as ``ASPECT_RATIO_2048_BIN``; the
smaller tables are derived from it here (and cross-checked against diffusers' 256/512/1024 bins in
the tests).
"""

from __future__ import annotations

from functools import cache

from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

BASE_SIZES = (256, 512, 1024, 2048)


@cache
def aspect_ratio_table(base_size: int) -> dict[str, tuple[int, int]]:
    """``{ratio key: (height, width)}`` in PixArt's key order, e.g. table(1024)['0.6'] == (768, 1280)."""
    if base_size not in BASE_SIZES:
        raise ValueError(f"no PixArt aspect-ratio table for {base_size}; choose one of {BASE_SIZES}")
    scale = 2048 // base_size
    return {key: (int(h) // scale, int(w) // scale) for key, (h, w) in ASPECT_RATIO_2048_BIN.items()}


def closest_ratio(height: int, width: int, base_size: int) -> str:
    """PixArt's ``get_closest_ratio``: the key minimising |key - h/w|; ties go to the first key."""
    ratio = height / width
    table = aspect_ratio_table(base_size)
    return min(table, key=lambda key: abs(float(key) - ratio))


def bucket_for(height: int, width: int, base_size: int) -> tuple[str, tuple[int, int]]:
    key = closest_ratio(height, width, base_size)
    return key, aspect_ratio_table(base_size)[key]
