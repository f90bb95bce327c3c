"""Analytic forward FLOPs of the GPU stages' models, and MFU against a small table of GPU peaks.

Convention: one multiply-add = 2 FLOPs; only matrix products are counted (linear layers, convolutions,
attention QKᵀ and AV), exactly the ops ``torch.utils.flop_counter.FlopCounterMode`` counts, so the tests
compare the two for equality. Norms, activations, softmax, residual adds and embedding lookups are left out
(well under 1% of these models' work). Attention is counted dense (all n² scores), as FlopCounterMode does and
as the PaLM MFU convention does, also for causal prefill, where flash kernels skip about half of it.

Counts follow the shapes actually run: the T5 stage pads each micro-batch to its longest caption, so callers
pass the padded lengths; a batched ``generate`` pads every prompt to the longest one and runs every row for
as many steps as the longest generation.

This module imports nothing beyond torch and the standard library (``benchmarks/gpu.py`` loads it on
machines where only torch and transformers are installed). Configs are read by attribute or by key, so a
transformers ``PretrainedConfig``, a diffusers ``FrozenDict`` and a plain dict all work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _linear(tokens: int, d_in: int, d_out: int) -> int:
    return 2 * tokens * d_in * d_out


def _attention_scores(queries: int, keys: int, heads: int, head_dim: int) -> int:
    """QKᵀ and AV: two [queries × head_dim] · [head_dim × keys] products per head."""
    return 2 * 2 * queries * keys * heads * head_dim


def _conv(c_in: int, c_out: int, kernel: int, out_h: int, out_w: int) -> int:
    return 2 * c_in * c_out * kernel * kernel * out_h * out_w


# --- T5 encoder -------------------------------------------------------------------------------------------


def t5_encoder_flops(config: Any, token_counts: list[int]) -> float:
    """Forward FLOPs of a ``T5EncoderModel`` over sequences of the given lengths (one entry per sequence).

    Pass the lengths as run: for a micro-batch of B captions padded to L tokens, ``[L] * B``.
    Per layer and token: Q, K, V, O projections (d_model × heads·d_kv each) and the FFN (two d_model × d_ff
    input matrices for ``gated-*``, one otherwise, and d_ff × d_model out); per layer and sequence of n tokens:
    attention 4·n²·heads·d_kv.
    """
    d_model, d_ff = _get(config, "d_model"), _get(config, "d_ff")
    inner = _get(config, "num_heads") * _get(config, "d_kv")
    ffn_inputs = 2 if str(_get(config, "feed_forward_proj", "relu")).startswith("gated") else 1
    per_token = _linear(1, d_model, inner) * 4 + _linear(1, d_model, d_ff) * ffn_inputs + _linear(1, d_ff, d_model)
    total = 0
    for n in token_counts:
        total += n * per_token + _attention_scores(n, n, _get(config, "num_heads"), _get(config, "d_kv"))
    return float(total * _get(config, "num_layers"))


# --- SD / SDXL AutoencoderKL encoder --------------------------------------------------------------------


def _resnet_block(c_in: int, c_out: int, h: int, w: int) -> int:
    """diffusers ``ResnetBlock2D`` without time embedding: two 3×3 convs, a 1×1 shortcut when channels change."""
    shortcut = _conv(c_in, c_out, 1, h, w) if c_in != c_out else 0
    return _conv(c_in, c_out, 3, h, w) + _conv(c_out, c_out, 3, h, w) + shortcut


def _downsampled(size: int) -> int:
    """diffusers ``Downsample2D`` with padding 0: pad (0, 1) then a 3×3 stride-2 conv."""
    return (size + 1 - 3) // 2 + 1


def vae_encoder_flops(config: Any, height: int, width: int) -> float:
    """Forward FLOPs of ``AutoencoderKL.encode`` for one image of ``height × width`` pixels.

    conv_in, per level ``layers_per_block`` ResnetBlock2D and (except the last level) a stride-2 conv, the
    mid block (ResnetBlock2D, single-head self-attention over the h·w latent-grid positions with Q/K/V/out
    projections, ResnetBlock2D), conv_out to 2·latent_channels and quant_conv (1×1) when ``use_quant_conv``.
    Only ``DownEncoderBlock2D`` encoders (every SD/SDXL VAE) are supported.
    """
    blocks = list(_get(config, "down_block_types"))
    if any(kind != "DownEncoderBlock2D" for kind in blocks):
        raise ValueError(f"only DownEncoderBlock2D encoders are counted, got {blocks}")
    channels = list(_get(config, "block_out_channels"))
    layers = _get(config, "layers_per_block", 2)
    h, w = height, width
    total = _conv(_get(config, "in_channels", 3), channels[0], 3, h, w)
    c_in = channels[0]
    for level, c_out in enumerate(channels):
        for layer in range(layers):
            total += _resnet_block(c_in if layer == 0 else c_out, c_out, h, w)
        c_in = c_out
        if level < len(channels) - 1:
            h, w = _downsampled(h), _downsampled(w)
            total += _conv(c_out, c_out, 3, h, w)
    mid = channels[-1]
    total += 2 * _resnet_block(mid, mid, h, w)
    if _get(config, "mid_block_add_attention", True):
        positions = h * w
        total += 4 * _linear(positions, mid, mid) + _attention_scores(positions, positions, 1, mid)
    moments = 2 * _get(config, "latent_channels", 4)
    total += _conv(mid, moments, 3, h, w)
    if _get(config, "use_quant_conv", True):
        total += _conv(moments, moments, 1, h, w)
    return float(total)


# --- LLaVA-family generate ------------------------------------------------------------------------------


def _vision_tokens(vision: Any) -> tuple[int, int]:
    """(patch positions, sequence length) of one crop: CLIP prepends a class token, SigLIP does not."""
    patches = (_get(vision, "image_size") // _get(vision, "patch_size")) ** 2
    with_class = _get(vision, "model_type", "clip_vision_model") != "siglip_vision_model"
    return patches, patches + int(with_class)


def _vision_tower_flops(vision: Any) -> int:
    """One crop through a CLIP/SigLIP ViT: patch conv and every encoder layer (LLaVA runs all of them)."""
    d, d_ff = _get(vision, "hidden_size"), _get(vision, "intermediate_size")
    heads = _get(vision, "num_attention_heads")
    _, n = _vision_tokens(vision)
    side = _get(vision, "image_size") // _get(vision, "patch_size")
    patch_embedding = _conv(_get(vision, "num_channels", 3), d, _get(vision, "patch_size"), side, side)
    per_layer = (
        4 * _linear(n, d, d) + _linear(n, d, d_ff) + _linear(n, d_ff, d) + _attention_scores(n, n, heads, d // heads)
    )
    return patch_embedding + _get(vision, "num_hidden_layers") * per_layer


def _projector_flops(config: Any) -> int:
    """One crop's features through LLaVA's two-layer MLP projector (vision width → LM width → LM width)."""
    vision, text = _get(config, "vision_config"), _get(config, "text_config")
    layers = _get(config, "vision_feature_layer", -2)
    d_in = _get(vision, "hidden_size") * (len(layers) if isinstance(layers, list | tuple) else 1)
    patches, n = _vision_tokens(vision)
    tokens = patches if _get(config, "vision_feature_select_strategy", "default") == "default" else n
    d_text = _get(text, "hidden_size")
    return _linear(tokens, d_in, d_text) + _linear(tokens, d_text, d_text)


def _decoder_layer_flops(text: Any, queries: int, keys: int) -> int:
    """One Llama/Mistral/Qwen2-style decoder layer: GQA projections, gated MLP, attention over ``keys``."""
    d, d_ff = _get(text, "hidden_size"), _get(text, "intermediate_size")
    heads = _get(text, "num_attention_heads")
    head_dim = _get(text, "head_dim") or d // heads
    kv_heads = _get(text, "num_key_value_heads") or heads
    projections = 2 * _linear(queries, d, heads * head_dim) + 2 * _linear(queries, d, kv_heads * head_dim)
    mlp = 3 * _linear(queries, d, d_ff)
    return projections + mlp + _attention_scores(queries, keys, heads, head_dim)


def _language_model_flops(text: Any, prompt_length: int, new_tokens: int) -> int:
    """One sequence: prefill over the prompt, then one step per further token over a growing KV cache.

    ``generate`` computes logits only for the last position (``logits_to_keep=1``), so the LM head runs once
    per generated token.
    """
    layers = _get(text, "num_hidden_layers")
    total = layers * _decoder_layer_flops(text, prompt_length, prompt_length)
    for step in range(1, new_tokens):
        total += layers * _decoder_layer_flops(text, 1, prompt_length + step)
    return total + new_tokens * _linear(1, _get(text, "hidden_size"), _get(text, "vocab_size"))


def llava_generate_flops(
    config: Any, batch_size: int, prompt_length: int, new_tokens: int, vision_crops: int | None = None
) -> float:
    """Forward FLOPs of one batched ``generate`` call of a LLaVA-family model.

    ``prompt_length``: ``input_ids.shape[1]`` (padded, image tokens included, as transformers' processors
    expand ``<image>``); ``new_tokens``: generated columns (``output.shape[1] - prompt_length``; every row
    runs that many steps); ``vision_crops``: images through the vision tower, ``batch_size`` for llava-1.5.
    Exact for llava-1.5-shaped configs (CLIP tower, two-layer projector, Llama LM). For LLaVA-NeXT /
    OneVision pass the number of AnyRes crops run (an upper bound is ``pixel_values.shape[0] *
    pixel_values.shape[1]``): the count is then exact up to SigLIP's pooling head, which is not counted.
    """
    crops = batch_size if vision_crops is None else vision_crops
    vision = crops * (_vision_tower_flops(_get(config, "vision_config")) + _projector_flops(config))
    text = batch_size * _language_model_flops(_get(config, "text_config"), prompt_length, new_tokens)
    return float(vision + text)


# --- Peaks and MFU --------------------------------------------------------------------------------------

# Dense (no sparsity) tensor-core peaks per GPU from NVIDIA datasheets, in FLOP/s: (bf16, fp16, fp32).
# fp32 is the plain (non-TF32) vector rate, what a float32 matmul gets unless TF32 is allowed.
# Patterns are tried in order against ``torch.cuda.get_device_name()`` (e.g. "NVIDIA H100 80GB HBM3").
_PEAKS: tuple[tuple[str, float | None, float | None, float | None], ...] = (
    (r"\bGH200\b", 989e12, 989e12, 67e12),
    (r"\bH200\b.*\bNVL\b", 835e12, 835e12, 60e12),
    (r"\bH200\b", 989e12, 989e12, 67e12),
    (r"\bH100\b.*\bPCIe\b", 756e12, 756e12, 51e12),
    (r"\bH100\b.*\bNVL\b", 835e12, 835e12, 60e12),
    (r"\bH100\b", 989e12, 989e12, 67e12),  # SXM ("H100 80GB HBM3")
    (r"\bB200\b", 2250e12, 2250e12, 75e12),
    (r"\bA100\b", 312e12, 312e12, 19.5e12),
    (r"\bL40S\b", 362e12, 362e12, 91.6e12),
    (r"\bL40\b", 181e12, 181e12, 90.5e12),
    (r"\bL4\b", 121e12, 121e12, 30.3e12),
    (r"\bA10G\b", 125e12, 125e12, 31.2e12),
    (r"\bA10\b", 125e12, 125e12, 31.2e12),
    (r"\bRTX 4090\b", 165e12, 165e12, 82.6e12),
    (r"\bV100\b", None, 125e12, 15.7e12),
    (r"\bT4\b", None, 65e12, 8.1e12),
)
_DTYPE_COLUMNS = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
_DTYPE_NAMES |= {"half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if isinstance(dtype, torch.dtype) or dtype is None:
        return dtype
    return _DTYPE_NAMES.get(dtype.removeprefix("torch.").lower())


def peak_flops(device_name: str | None, dtype: torch.dtype | str | None) -> float | None:
    """Dense peak FLOP/s of a GPU for ``dtype`` (bf16, fp16, fp32; a torch dtype or its name, "torch." prefix
    allowed); None when the device or the dtype is unknown (CPU, other GPUs, int8, None)."""
    column = _DTYPE_COLUMNS.get(_as_dtype(dtype))
    if column is None or not device_name:
        return None
    for pattern, *peaks in _PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peaks[column]
    return None


def mfu(flops: float, seconds: float, device_name: str | None, dtype: torch.dtype | str | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's dense peak; None when the peak is unknown."""
    peak = peak_flops(device_name, dtype)
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak
