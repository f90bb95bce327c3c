"""3×3 convolutions on CPU through NNPACK's Winograd transform (the NNPACK bundled with PyTorch).

PyTorch's CPU convolutions (oneDNN) compute a 3×3 convolution directly; NNPACK's Winograd transform needs
fewer operations, and PyTorch only picks it on its own for batches of 16 or more. It pays off for wide layers
on large maps and loses on narrow layers or small maps (it transforms the kernel on every call). Measured per
layer on one core of this project's CPU (direct = oneDNN's faster layout): 128→128 at 256² 1.97×, 256→256 at
128² 2.5×, 64→64 at 32² 1.47×, 512→512 at 32² 1.12×; but 512→512 at 16² 0.42×, 32→32 at 256² 0.73×, 3→128
0.82×. Hence the rule below: both widths ≥ 64 and a map of ≥ 32² pixels, else the direct convolution. On the
SD/SDXL VAE encoder: ~1.9× faster per image, stored float16 latents within 2 float16 ulps of the direct
convolution's (fp32 results differ by ~1e-5 relative). Inference only: with autograd recording, or off CPU /
float32, the layer is a plain ``Conv2d``.
"""

from __future__ import annotations

import torch
from torch import nn

MIN_CHANNELS = 64  # in and out
MIN_PIXELS = 32 * 32  # input map height × width


def nnpack_available() -> bool:
    """True if this torch build has NNPACK and it runs on this CPU (the call also initialises NNPACK)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):  # a build without the private entry point
        return False


class WinogradConv2d(nn.Conv2d):
    """A ``Conv2d`` (3×3, stride 1, zero padding, one group, ≥ 64 channels) whose inference on maps of ≥ 32² pixels
    runs through NNPACK."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.shape[-2] * x.shape[-1] < MIN_PIXELS or not self._nnpack_can_run(x):
            return super().forward(x)
        if x.shape[0] == 1:
            return self._nnpack(x)
        # one image per call: NNPACK's inference path (its batched path measured ~2x slower per image)
        return torch.cat([self._nnpack(image) for image in x.split(1)])

    def _nnpack(self, x: torch.Tensor) -> torch.Tensor:
        return torch._nnpack_spatial_convolution(x, self.weight, self.bias, list(self.padding), [1, 1])

    def _nnpack_can_run(self, x: torch.Tensor) -> bool:
        # NNPACK reads the weight as contiguous OIHW float32 (it does not check strides itself)
        weight = self.weight
        return x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and weight.is_contiguous()


def winograd_eligible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)  # not "same" / "valid"
    )


def use_winograd_convolutions(model: nn.Module) -> int:
    """Turn every eligible ``Conv2d`` of ``model`` into a ``WinogradConv2d`` in place (same parameters).

    Returns how many layers changed; 0 when NNPACK is not available (the model is left as it was)."""
    if not nnpack_available():
        return 0
    layers = [module for module in model.modules() if winograd_eligible(module)]
    for conv in layers:
        conv.weight.data = conv.weight.data.contiguous()
        conv.__class__ = WinogradConv2d
    return len(layers)
