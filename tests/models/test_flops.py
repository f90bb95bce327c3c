"""Analytic FLOP counts against torch's own count (``FlopCounterMode``) of the real architectures.

FlopCounterMode counts matrix products only (mm/addmm/bmm, convolutions, SDPA as QKᵀ + AV), and so does
``curation.models.flops``: the counts must be equal, not merely close. Tiny random-weight models run for
real (masks, padding and ``generate`` included); the full-size configs (T5-XXL, SDXL VAE, LLaVA-1.5-7B)
run on the meta device, where shapes are propagated without computing anything.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, T5EncoderModel
from transformers import T5Config as HFT5Config

from curation.models.flops import llava_generate_flops, mfu, peak_flops, t5_encoder_flops, vae_encoder_flops


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def counted_flops(run) -> int:
    """FLOPs torch counts while ``run()`` executes (SDPA's CPU kernel counted with torch's own SDPA formula)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        run()
    return counter.get_total_flops()


def tiny_t5(feed_forward_proj: str) -> T5EncoderModel:
    config = HFT5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=6,  # heads·d_kv = 48 ≠ d_model, so Q/K/V/O widths are checked
        relative_attention_num_buckets=8,
        feed_forward_proj=feed_forward_proj,
        is_encoder_decoder=False,
        use_cache=False,
    )
    torch.manual_seed(0)
    return T5EncoderModel._from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_t5_counts_micro_batches_padded_to_their_longest_caption(feed_forward_proj):
    model = tiny_t5(feed_forward_proj)
    batches = [(3, 11), (2, 5)]  # (captions, padded length) as the stage runs them after sorting by length

    def run():
        for size, length in batches:
            ids = torch.randint(2, 64, (size, length))
            mask = torch.ones_like(ids)
            mask[-1, length // 2 :] = 0  # the shortest caption's padding
            model(input_ids=ids, attention_mask=mask)

    lengths = [length for size, length in batches for _ in range(size)]
    assert t5_encoder_flops(model.config, lengths) == counted_flops(run)


def test_t5_xxl_config_at_120_and_300_tokens():
    config = HFT5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
    )
    with torch.device("meta"):
        model = T5EncoderModel._from_config(config, attn_implementation="sdpa")
    for length in (120, 300):
        ids = torch.zeros(2, length, dtype=torch.long, device="meta")
        assert t5_encoder_flops(config, [length, length]) == counted_flops(lambda ids=ids: model(input_ids=ids))
    # ray_notes §4.1: 1.117 TFLOP per caption at 120 tokens, 2.81 at 300.
    assert round(t5_encoder_flops(config, [120]) / 1e12, 3) == 1.117
    assert round(t5_encoder_flops(config, [300]) / 1e12, 2) == 2.81


SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024,
    scaling_factor=0.13025,
)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"mid_block_add_attention": False, "use_quant_conv": False, "layers_per_block": 1}],
    ids=["sdxl-shaped", "no-attention-no-quant-conv"],
)
def test_vae_encode_on_odd_sizes(overrides):
    config = {**SDXL_VAE, "block_out_channels": (8, 16, 24, 24), "norm_num_groups": 4, **overrides}
    torch.manual_seed(0)
    vae = AutoencoderKL(**config).eval()
    height, width = 36, 52  # odd sizes after two halvings exercise Downsample2D's asymmetric padding
    counted = counted_flops(lambda: vae.encode(torch.randn(2, 3, height, width)).latent_dist.mean)
    assert 2 * vae_encoder_flops(vae.config, height, width) == counted


def test_sdxl_vae_config_at_1024():
    with torch.device("meta"):
        vae = AutoencoderKL(**SDXL_VAE)
        pixels = torch.zeros(1, 3, 1024, 768)
    assert vae_encoder_flops(vae.config, 1024, 768) == counted_flops(lambda: vae.encode(pixels))
    # ray_notes §4.2: 4.88 TFLOP at 1024², 26.1 at 2048².
    assert round(vae_encoder_flops(vae.config, 1024, 1024) / 1e12, 2) == 4.88
    assert round(vae_encoder_flops(vae.config, 2048, 2048) / 1e12, 1) == 26.1


IMAGE_TOKEN = 5


def llava_config(vision: dict, text: dict, **extra) -> LlavaConfig:
    return LlavaConfig(
        vision_config=CLIPVisionConfig(**vision).to_dict(),
        text_config=LlamaConfig(**text).to_dict(),
        image_token_index=IMAGE_TOKEN,
        **extra,
    )


TINY_VISION = dict(hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, image_size=24)
TINY_TEXT = dict(
    vocab_size=50, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4
) | dict(num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=2)


@pytest.mark.parametrize(
    "select",
    [
        {"vision_feature_layer": -2, "vision_feature_select_strategy": "default"},
        {"vision_feature_layer": [-2, -1], "vision_feature_select_strategy": "full"},
    ],
    ids=["llava-1.5", "multi-layer-full"],
)
def test_llava_generate_counts_vision_projector_prefill_and_decode(select):
    config = llava_config(TINY_VISION | {"patch_size": 8}, TINY_TEXT, image_seq_length=0, **select)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    image_tokens = 9 + (select["vision_feature_select_strategy"] == "full")  # (24 / 8)² patches (+ CLS)
    batch, new_tokens = 2, 6
    ids = torch.randint(6, 50, (batch, 4 + image_tokens + 3))
    ids[:, 4 : 4 + image_tokens] = IMAGE_TOKEN
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding, as the caption stage batches prompts
    pixels = torch.randn(batch, 3, 24, 24)

    def run():
        output = model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
        assert output.shape[1] == ids.shape[1] + new_tokens

    assert llava_generate_flops(config, batch, ids.shape[1], new_tokens) == counted_flops(run)


def test_llava_1_5_7b_config_vision_and_prefill():
    """Real size on the meta device: image features and a prefill from embeddings (LLaVA's check of image
    tokens against features needs values, so the two halves of a prefill are counted separately)."""
    config = llava_config(
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
        | dict(image_size=336, patch_size=14, projection_dim=768),
        dict(vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    batch, prompt = 2, 640
    with torch.device("meta"):
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        pixels = torch.zeros(batch, 3, 336, 336)
        embeddings = torch.zeros(batch, prompt, 4096)

    def prefill():
        model.model.get_image_features(pixels, vision_feature_layer=-2, vision_feature_select_strategy="default")
        model(inputs_embeds=embeddings, logits_to_keep=1)

    assert llava_generate_flops(config, batch, prompt, new_tokens=1) == counted_flops(prefill)


@pytest.mark.parametrize(
    "device_name, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", torch.float16, 989e12),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312e12),
        ("NVIDIA A100-SXM4-80GB", torch.float32, 19.5e12),
        ("NVIDIA A10G", torch.bfloat16, 125e12),
        ("NVIDIA L40S", torch.bfloat16, 362e12),
        ("NVIDIA L4", torch.bfloat16, 121e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, None),  # no bf16 tensor cores
        ("cpu", torch.float32, None),
        ("NVIDIA H100 80GB HBM3", "torch.bfloat16", 989e12),  # str(dtype), as the manifest stores it
        ("NVIDIA H100 80GB HBM3", "auto", None),
        ("NVIDIA H100 80GB HBM3", None, None),
        (None, torch.bfloat16, None),
    ],
)
def test_peak_flops_table(device_name, dtype, peak):
    assert peak_flops(device_name, dtype) == peak


def test_mfu():
    assert mfu(494.5e12, 1.0, "NVIDIA H100 80GB HBM3", torch.bfloat16) == 0.5
    assert mfu(1e12, 1.0, "cpu", torch.float32) is None
