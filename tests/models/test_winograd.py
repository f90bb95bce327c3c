"""Winograd 3×3 convolutions through NNPACK: same outputs as the direct convolution, only where eligible."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curation.models.winograd import WinogradConv2d, nnpack_available, use_winograd_convolutions

pytestmark = pytest.mark.skipif(not nnpack_available(), reason="this torch build has no NNPACK for this CPU")


def direct(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The reference: float64 direct convolution with the layer's own parameters."""
    bias = None if conv.bias is None else conv.bias.double()
    return nn.functional.conv2d(x.double(), conv.weight.double(), bias, conv.stride, conv.padding).detach()


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "padding", "bias", "size"),
    [
        (64, 64, 1, True, (40, 56)),
        (96, 64, 1, False, (33, 31)),
        (64, 80, 0, True, (34, 34)),
        (64, 64, (1, 0), True, (32, 40)),
    ],
)
def test_inference_equals_the_direct_convolution(in_channels, out_channels, padding, bias, size) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=bias)
    x = torch.randn(2, in_channels, *size)
    expected = direct(conv, x)

    assert use_winograd_convolutions(conv) == 1
    assert type(conv) is WinogradConv2d
    with torch.inference_mode():
        got = conv(x)

    assert got.shape == expected.shape
    # Winograd's transforms round differently: up to ~5e-6 of the output scale (direct fp32: ~5e-7)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


def nnpack_inputs(monkeypatch) -> list[torch.Size]:
    """The input shape of every NNPACK call from now on (the calls still run)."""
    shapes = []
    nnpack = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda x, *a: shapes.append(x.shape) or nnpack(x, *a))
    return shapes


def test_nnpack_runs_in_inference_and_the_direct_method_while_autograd_records(monkeypatch) -> None:
    conv = nn.Conv2d(64, 64, 3, padding=1)
    use_winograd_convolutions(conv)
    calls = nnpack_inputs(monkeypatch)
    x = torch.randn(1, 64, 32, 32)

    with torch.no_grad():
        conv(x)
    assert calls == [x.shape]
    out = conv(x)  # autograd on: the plain Conv2d path, so gradients exist
    out.sum().backward()
    assert calls == [x.shape] and conv.weight.grad is not None
    torch.testing.assert_close(out.detach(), nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))


def test_a_batch_runs_one_image_per_nnpack_call(monkeypatch) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 72, 3, padding=1)
    use_winograd_convolutions(conv)
    shapes = nnpack_inputs(monkeypatch)
    x = torch.randn(3, 64, 32, 33)

    with torch.inference_mode():
        got = conv(x)

    assert shapes == [(1, 64, 32, 33)] * 3
    torch.testing.assert_close(got.double(), direct(conv, x), rtol=0, atol=2e-5 * float(direct(conv, x).abs().max()))


def test_only_wide_3x3_stride_1_layers_change() -> None:
    eligible = nn.Conv2d(64, 64, 3, padding=1)
    others = [
        nn.Conv2d(64, 64, 3, stride=2),
        nn.Conv2d(64, 64, 1),
        nn.Conv2d(64, 64, 3, groups=2, padding=1),
        nn.Conv2d(64, 64, 3, dilation=2, padding=2),
        nn.Conv2d(64, 64, 3, padding="same"),
        nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(64, 64, 5, padding=2),
        nn.Conv2d(3, 64, 3, padding=1),  # narrow: oneDNN's direct method is faster
        nn.Conv2d(64, 32, 3, padding=1),
        nn.Linear(4, 4),
    ]
    model = nn.Sequential(eligible, *others)

    assert use_winograd_convolutions(model) == 1
    assert type(eligible) is WinogradConv2d
    assert [type(m) for m in others] == [nn.Conv2d] * 9 + [nn.Linear]


def test_small_maps_take_the_direct_method(monkeypatch) -> None:
    conv = nn.Conv2d(64, 64, 3, padding=1)
    use_winograd_convolutions(conv)
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *args: pytest.fail("NNPACK on a 16x63 map"))
    x = torch.randn(1, 64, 16, 63)  # 1008 pixels < 32 x 32

    with torch.inference_mode():
        got = conv(x)

    torch.testing.assert_close(got.double(), direct(conv, x), rtol=1e-5, atol=1e-4)


def test_a_channels_last_weight_falls_back_to_the_direct_method(monkeypatch) -> None:
    conv = nn.Conv2d(64, 64, 3, padding=1)
    use_winograd_convolutions(conv)
    conv.to(memory_format=torch.channels_last)  # NNPACK would read these strides as OIHW
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *args: pytest.fail("NNPACK got a NHWC weight"))
    x = torch.randn(1, 64, 32, 32)

    with torch.inference_mode():
        got = conv(x)

    torch.testing.assert_close(got.double(), direct(conv, x), rtol=1e-5, atol=1e-4)
