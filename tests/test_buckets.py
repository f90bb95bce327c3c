"""Bucket tables and the nearest-ratio rule, checked against PixArt's rule and diffusers' tables."""

from __future__ import annotations

import random
from fractions import Fraction
from itertools import pairwise

import pytest
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_256_BIN,
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

from curation.buckets import BASE_SIZES, aspect_ratio_table, bucket_for, closest_ratio

DIFFUSERS_BINS = {256: ASPECT_RATIO_256_BIN, 512: ASPECT_RATIO_512_BIN, 1024: ASPECT_RATIO_1024_BIN}


def pixart_get_closest_ratio(height: float, width: float, ratios: dict) -> str:
    """PixArt's ``get_closest_ratio`` (diffusion/data/datasets/InternalData_ms.py), key part verbatim."""
    aspect_ratio = height / width
    return min(ratios.keys(), key=lambda ratio: abs(float(ratio) - aspect_ratio))


def random_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = [(rng.randint(1, 8192), rng.randint(1, 8192)) for _ in range(count)]
    # near-square and extreme ratios (beyond the table's 0.25..4 range) get extra coverage
    sizes += [(n, n + rng.randint(-40, 40)) for n in (rng.randint(100, 4000) for _ in range(count // 4))]
    sizes += [(rng.randint(1, 50), rng.randint(2000, 9000)) for _ in range(count // 10)]
    sizes += [(rng.randint(2000, 9000), rng.randint(1, 50)) for _ in range(count // 10)]
    return sizes


def midpoint_sizes() -> list[tuple[int, int, str, str]]:
    """(h, w, lower key, upper key) with h/w exactly half-way between two adjacent keys."""
    keys = list(ASPECT_RATIO_2048_BIN)
    cases = []
    for lower, upper in pairwise(keys):
        middle = (Fraction(lower) + Fraction(upper)) / 2
        for multiple in (1, 3, 7):
            cases.append((middle.numerator * multiple, middle.denominator * multiple, lower, upper))
    return cases


@pytest.mark.parametrize("base_size", BASE_SIZES)
def test_closest_ratio_equals_pixart_rule_on_random_sizes(base_size: int) -> None:
    for height, width in random_sizes(4000, seed=base_size):
        expected = pixart_get_closest_ratio(height, width, ASPECT_RATIO_2048_BIN)
        assert closest_ratio(height, width, base_size) == expected, (height, width)


@pytest.mark.parametrize("base_size", BASE_SIZES)
def test_closest_ratio_equals_pixart_rule_on_exact_midpoints(base_size: int) -> None:
    exact_float_ties = 0
    for height, width, lower, upper in midpoint_sizes():
        chosen = closest_ratio(height, width, base_size)
        assert chosen == pixart_get_closest_ratio(height, width, ASPECT_RATIO_2048_BIN)
        assert chosen in (lower, upper)
        if abs(float(lower) - height / width) == abs(float(upper) - height / width):
            exact_float_ties += 1
            assert chosen == lower, "a tie goes to the first key in dict order"
    assert exact_float_ties > 20  # the tie-break path is really exercised (float rounding breaks some ties)


def test_bucket_for_returns_the_table_entry_of_the_closest_key() -> None:
    assert bucket_for(768, 1280, 1024) == ("0.6", (768, 1280))
    assert bucket_for(1000, 1000, 512) == ("1.0", (512, 512))
    assert bucket_for(9000, 10, 256) == ("4.0", (512, 128))
    with pytest.raises(ValueError, match="no PixArt aspect-ratio table"):
        aspect_ratio_table(768)


@pytest.mark.parametrize("base_size", [256, 512, 1024])
def test_derived_tables_contain_diffusers_bins_exactly(base_size: int) -> None:
    table = aspect_ratio_table(base_size)
    diffusers_bin = DIFFUSERS_BINS[base_size]

    assert len(diffusers_bin) == 33 and len(table) == 40  # diffusers ships PixArt's *_TEST subset
    for key, (height, width) in diffusers_bin.items():
        assert table[key] == (int(height), int(width)) and height.is_integer() and width.is_integer()


def test_2048_table_is_diffusers_2048_bin() -> None:
    assert aspect_ratio_table(2048) == {k: (int(h), int(w)) for k, (h, w) in ASPECT_RATIO_2048_BIN.items()}
    assert list(aspect_ratio_table(2048)) == list(ASPECT_RATIO_2048_BIN)  # the key order decides ties
    assert all(float(h).is_integer() and float(w).is_integer() for h, w in ASPECT_RATIO_2048_BIN.values())


@pytest.mark.parametrize("base_size", BASE_SIZES)
def test_table_shape_rules(base_size: int) -> None:
    table = aspect_ratio_table(base_size)
    scale = 2048 // base_size

    assert list(table) == list(ASPECT_RATIO_2048_BIN)  # same keys, same (tie-breaking) order
    assert list(table) == sorted(table, key=float)
    for key, (height, width) in table.items():
        assert str(float(key)) == key
        # every side divisible by 16, the 256 table included (latent /8, then patch size 2)
        assert height % 16 == 0 and width % 16 == 0, (key, height, width)
        assert (height * scale, width * scale) == tuple(map(int, ASPECT_RATIO_2048_BIN[key]))  # no rounding
        assert abs(height / width - float(key)) <= 0.02
        assert 0.9 * base_size**2 <= height * width <= base_size**2


def test_bucketing_an_image_imports_neither_diffusers_nor_transformers():
    """Every filter task and the VAE actor bucket images: the import would cost seconds per worker process."""
    import subprocess
    import sys

    code = (
        "import sys, curation.stages.filter, curation.stages.prepare, curation.stages.vae;"
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"
