"""PixArt aspect-ratio buckets and the nearest-ratio rule.

PixArt's tables (``diffusion/data/datasets/utils.py``, ASPECT_RATIO_256/512/1024/2048) are the
2048 table scaled by 1/2^k. The 2048 table is written out below, as PixArt and diffusers
(``ASPECT_RATIO_2048_BIN``) ship it; the tests check it equals diffusers' table, key order included, and
the derived tables equal diffusers' 256/512/1024 bins. It is a literal, not an import of diffusers'
pipeline module, because that import costs ~7 s of CPU (diffusers + transformers) in every Ray worker
process that buckets an image: each filter task and the VAE actor.
"""

from __future__ import annotations

from functools import cache

BASE_SIZES = (256, 512, 1024, 2048)
# {ratio key (height / width): (height, width)} of PixArt's 2048 table, in its key order.
ASPECT_RATIO_2048 = {
    "0.25": (1024, 4096), "0.26": (1024, 3968), "0.27": (1024, 3840), "0.28": (1024, 3712), "0.32": (1152, 3584),
    "0.33": (1152, 3456), "0.35": (1152, 3328), "0.4": (1280, 3200), "0.42": (1280, 3072), "0.48": (1408, 2944),
    "0.5": (1408, 2816), "0.52": (1408, 2688), "0.57": (1536, 2688), "0.6": (1536, 2560), "0.68": (1664, 2432),
    "0.72": (1664, 2304), "0.78": (1792, 2304), "0.82": (1792, 2176), "0.88": (1920, 2176), "0.94": (1920, 2048),
    "1.0": (2048, 2048), "1.07": (2048, 1920), "1.13": (2176, 1920), "1.21": (2176, 1792), "1.29": (2304, 1792),
    "1.38": (2304, 1664), "1.46": (2432, 1664), "1.67": (2560, 1536), "1.75": (2688, 1536), "2.0": (2816, 1408),
    "2.09": (2944, 1408), "2.4": (3072, 1280), "2.5": (3200, 1280), "2.89": (3328, 1152), "3.0": (3456, 1152),
    "3.11": (3584, 1152), "3.62": (3712, 1024), "3.75": (3840, 1024), "3.88": (3968, 1024), "4.0": (4096, 1024),
}  # fmt: skip


@cache
def aspect_ratio_table(base_size: int) -> dict[str, tuple[int, int]]:
    """``{ratio key: (height, width)}`` in PixArt's key order, e.g. table(1024)['0.6'] == (768, 1280)."""
    if base_size not in BASE_SIZES:
        raise ValueError(f"no PixArt aspect-ratio table for {base_size}; choose one of {BASE_SIZES}")
    scale = 2048 // base_size
    return {key: (int(h) // scale, int(w) // scale) for key, (h, w) in ASPECT_RATIO_2048.items()}


def closest_ratio(height: int, width: int, base_size: int) -> str:
    """PixArt's ``get_closest_ratio``: the key minimising |key - h/w|; ties go to the first key."""
    ratio = height / width
    table = aspect_ratio_table(base_size)
    return min(table, key=lambda key: abs(float(key) - ratio))


def bucket_for(height: int, width: int, base_size: int) -> tuple[str, tuple[int, int]]:
    key = closest_ratio(height, width, base_size)
    return key, aspect_ratio_table(base_size)[key]
