"""The same stages on CUDA with bf16 (deselected on CPU machines: run with ``pytest -m gpu``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from curation.buckets import bucket_for
from curation.config import CaptionConfig, ModelRef, Resources, T5Config, VAEConfig
from curation.io.layout import load_npy
from curation.records import new_row
from curation.stages.caption import CaptionStage
from curation.stages.t5 import T5Stage
from curation.stages.vae import VAEStage

pytestmark = pytest.mark.gpu
CAPTIONS = ["a photo of a dog", "a cat sitting on a wooden table near a window with soft light"]


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("GPU tests were selected but no CUDA device is visible")


def _t5(tiny_models, device: str, dtype: str) -> T5Stage:
    model = ModelRef(path=str(tiny_models / "pixart_sigma"), device=device, dtype=dtype)
    return T5Stage(T5Config(model=model, resources=Resources(num_gpus=1, batch_size=8)))


def test_t5_on_cuda_bf16_matches_cpu_fp32(tiny_models):
    gpu = _t5(tiny_models, "auto", "auto").encode(CAPTIONS)
    cpu = _t5(tiny_models, "cpu", "float32").encode(CAPTIONS)
    for (g, g_tokens, _), (c, c_tokens, _) in zip(gpu, cpu, strict=True):
        assert g_tokens == c_tokens
        np.testing.assert_allclose(g.astype(np.float32), c.astype(np.float32), atol=5e-2, rtol=5e-2)


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "orange").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_vae_and_caption_run_on_cuda(tiny_models):
    row = new_row("k", "test", _jpeg(320, 256))
    bucket, (bucket_h, bucket_w) = bucket_for(256, 320, 256)
    row.update(width=320, height=256, bucket=bucket, bucket_h=bucket_h, bucket_w=bucket_w)
    caption = CaptionStage(
        CaptionConfig(
            model=ModelRef(path=str(tiny_models / "llava")),
            max_new_tokens=4,
            resources=Resources(num_gpus=1, batch_size=2),
        )
    )
    caption.setup()
    assert caption.model.device.type == "cuda"
    caption.process_rows([row])
    vae = VAEStage(
        VAEConfig(
            model=ModelRef(path=str(tiny_models / "pixart_sigma"), subfolder="vae"),
            aspect_ratios=256,
            resources=Resources(num_gpus=1, batch_size=2),
        )
    )
    vae.setup()
    vae.process_rows([row])
    assert row["status"] == "ok" and json.loads(row["captions"])["dense"]
    assert load_npy(row["vae"]).shape == (8, bucket_h // 8, bucket_w // 8)
