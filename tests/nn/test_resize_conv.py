"""brainkern.nn.ResizeConv3d: the fused layer against Upsample + Conv3d (+ activation)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainkern.nn import ResizeConv3d
from brainkern.ops import use_backend
from brainkern.ops.resize_conv3d import use_resize_conv_impl

_NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _unfused(conv: nn.Conv3d, activation: str | None, slope: float = 0.2) -> nn.Sequential:
    acts = {None: nn.Identity(), "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(slope), "tanh": nn.Tanh()}
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv, acts[activation])


def _assert_same_outputs_and_gradients(y, ref, x, layer: ResizeConv3d, conv: nn.Conv3d) -> None:
    """float64: the layer and the unfused block agree in output and in every gradient (the
    same output gradient fed to both)."""
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
    gy = torch.randn_like(y)
    mine = torch.autograd.grad(y, [x, *layer.parameters()], gy)
    theirs = torch.autograd.grad(ref, [x, *conv.parameters()], gy)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_from_conv_equals_upsample_then_conv(backend_device, activation, bias):
    backend, device = backend_device
    small = backend == "triton" and device == "cpu"  # Triton's interpreter is slow
    conv = nn.Conv3d(3, 5, 3, padding=1, bias=bias).to(device=device, dtype=torch.float64)
    layer = ResizeConv3d.from_conv(conv, activation=activation)
    assert layer.weight.data_ptr() != conv.weight.data_ptr()  # copies, not shared storage
    x = torch.randn(1, 3, *((2, 3, 2) if small else (7, 5, 3)), dtype=torch.float64, device=device)
    x.requires_grad_()
    with use_backend(backend):
        y = layer(x)
    ref = _unfused(conv, activation)(x)
    assert y.shape == (1, 5, *(2 * s for s in x.shape[2:]))
    _assert_same_outputs_and_gradients(y, ref, x, layer, conv)


def test_init_matches_conv3d():
    torch.manual_seed(3)
    conv = nn.Conv3d(4, 6, 3, padding=1)
    torch.manual_seed(3)
    layer = ResizeConv3d(4, 6)
    torch.testing.assert_close(layer.weight, conv.weight, atol=0, rtol=0)
    torch.testing.assert_close(layer.bias, conv.bias, atol=0, rtol=0)
    assert ResizeConv3d(4, 6, bias=False).bias is None


def test_trains_like_the_unfused_block():
    """A few SGD steps give the same losses as Upsample + Conv3d + LeakyReLU."""
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 3, padding=1).double()
    layer = ResizeConv3d.from_conv(conv, activation="leaky_relu")
    ref = _unfused(conv, "leaky_relu")
    x = torch.randn(2, 2, 3, 4, 3, dtype=torch.float64)
    target = torch.randn(2, 3, 6, 8, 6, dtype=torch.float64)
    losses = []
    for model in (layer, ref):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        run = []
        for _ in range(4):
            opt.zero_grad(set_to_none=True)
            loss = (model(x) - target).square().mean()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown activation"):
        ResizeConv3d(2, 3, activation="gelu")
    with pytest.raises(ValueError, match="positive"):
        ResizeConv3d(0, 3)
    with pytest.raises(ValueError, match="kernel_size=3, stride=1, padding=1"):
        ResizeConv3d.from_conv(nn.Conv3d(2, 3, 3, padding=0))
    with pytest.raises(ValueError, match="kernel_size=3"):
        ResizeConv3d.from_conv(nn.Conv3d(2, 3, 5, padding=2))
    with pytest.raises(ValueError, match="nn.Conv3d"):
        ResizeConv3d.from_conv(nn.Conv2d(2, 3, 3, padding=1))


def test_repr_names_the_activation():
    assert "leaky_relu" in repr(ResizeConv3d(2, 3, activation="leaky_relu"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=_NO_GPU)])
def test_wide_layer_on_the_cudnn_implementation(device):
    """A batch of 3 through 37 -> 20 channels on the cudnn path (oneDNN on the CPU) trains like
    Upsample + Conv3d: forward, input and parameter gradients."""
    conv = nn.Conv3d(37, 20, 3, padding=1).to(device=device, dtype=torch.float64)
    layer = ResizeConv3d.from_conv(conv, activation="relu")
    x = torch.randn(3, 37, 1, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    with use_backend("auto"), use_resize_conv_impl("cudnn"):
        y = layer(x)
    _assert_same_outputs_and_gradients(y, _unfused(conv, "relu")(x), x, layer, conv)
