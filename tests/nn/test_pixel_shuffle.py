"""PixelShuffle3d / PixelUnshuffle3d layers and the ICNR initialiser."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainkern.nn import PixelShuffle3d, PixelUnshuffle3d, icnr_
from brainkern.ops import pixel_shuffle3d_reference, pixel_unshuffle3d_reference, use_backend


def test_layers_apply_the_ops(backend_device):
    backend, device = backend_device
    x = torch.randn(2, 16, 3, 2, 5, device=device)
    with use_backend(backend):
        y = PixelShuffle3d(2)(x)
        z = PixelUnshuffle3d(2)(y)
    assert torch.equal(y, pixel_shuffle3d_reference(x, 2))
    assert torch.equal(z, pixel_unshuffle3d_reference(y, 2))
    assert torch.equal(z, x)


def test_layers_repr_and_state():
    assert repr(PixelShuffle3d(3)) == "PixelShuffle3d(upscale_factor=3)"
    assert repr(PixelUnshuffle3d(2)) == "PixelUnshuffle3d(downscale_factor=2)"
    assert list(PixelShuffle3d(2).parameters()) == [] and PixelShuffle3d(2).state_dict() == {}


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: PixelShuffle3d(0), ValueError, "upscale_factor must be >= 1, got 0"),
        (lambda: PixelShuffle3d(1.5), TypeError, r"upscale_factor must be an int, got float \(1.5\)"),
        (lambda: PixelUnshuffle3d(-1), ValueError, "downscale_factor must be >= 1, got -1"),
        (lambda: PixelUnshuffle3d("2"), TypeError, "downscale_factor must be an int"),
    ],
)
def test_layers_reject_bad_factors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_layer_input_errors_come_from_the_op():
    with pytest.raises(ValueError, match=r"input channels \(12\).*\(2\*\*3=8\)"):
        PixelShuffle3d(2)(torch.randn(1, 12, 2, 2, 2))


@pytest.mark.parametrize("r", [2, 3])
def test_icnr_starts_as_nearest_neighbour_upsampling(backend_device, r):
    backend, device = backend_device
    c, c_in = 2, 3
    conv = nn.Conv3d(c_in, c * r**3, kernel_size=3, padding=1, bias=False)
    conv = conv.to(device=device, dtype=torch.float64)
    assert icnr_(conv.weight, r) is conv.weight
    x = torch.randn(2, c_in, 4, 3, 5, device=device, dtype=torch.float64)
    with use_backend(backend):
        y = PixelShuffle3d(r)(conv(x))
    # The C-channel conv that every group of r^3 channels repeats.
    low = F.conv3d(x, conv.weight[:: r**3], padding=1)
    expected = F.interpolate(low, scale_factor=r, mode="nearest")
    # The conv may sum the same products in another order per channel: float64 rounding only.
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    # Each r x r x r output block is constant.
    blocks = pixel_unshuffle3d_reference(y, r).reshape(2, c, r**3, 4, 3, 5)
    torch.testing.assert_close(blocks, blocks[:, :, :1].expand_as(blocks), rtol=1e-12, atol=1e-12)
    # A random conv weight does not have that property.
    nn.init.kaiming_normal_(conv.weight)
    y = pixel_unshuffle3d_reference(PixelShuffle3d(r)(conv(x)), r).reshape(2, c, r**3, 4, 3, 5)
    assert not torch.allclose(y, y[:, :, :1].expand_as(y))


def test_icnr_calls_the_initializer_on_the_sub_kernel():
    seen = []

    def init(t: torch.Tensor) -> None:
        seen.append(tuple(t.shape))
        with torch.no_grad():
            t.copy_(torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape))

    weight = torch.empty(2 * 27, 4, 3, 3, 3)
    icnr_(weight, 3, initializer=init)
    assert seen == [(2, 4, 3, 3, 3)]
    sub = torch.arange(2 * 4 * 27, dtype=weight.dtype).reshape(2, 4, 3, 3, 3)
    assert torch.equal(weight, sub.repeat_interleave(27, dim=0))


def test_icnr_default_is_kaiming_with_the_full_weights_fan_in():
    torch.manual_seed(1)
    weight = torch.empty(8 * 64, 32, 3, 3, 3)
    icnr_(weight, 2)
    # kaiming_normal_ (fan_in, leaky_relu a=0): std = sqrt(2 / fan_in), fan_in = 32 * 27.
    expected_std = (2 / (32 * 27)) ** 0.5
    sub = weight[::8]
    assert abs(sub.std().item() / expected_std - 1) < 0.05
    assert abs(weight.std().item() / expected_std - 1) < 0.05


def test_icnr_on_a_parameter_keeps_it_a_leaf_parameter():
    conv = nn.Conv3d(2, 8, 1)
    icnr_(conv.weight, 2)
    assert isinstance(conv.weight, nn.Parameter) and conv.weight.is_leaf and conv.weight.requires_grad


@pytest.mark.parametrize(
    ("shape", "r", "error", "match"),
    [
        ((12, 3, 3, 3, 3), 2, ValueError, r"\(12\) must be divisible by upscale_factor\*\*3 \(2\*\*3=8"),
        ((8, 3, 3, 3), 2, ValueError, r"Conv3d weight .* got shape \(8, 3, 3, 3\)"),
        ((8, 3, 3, 3, 3), 0, ValueError, "upscale_factor must be >= 1, got 0"),
        ((8, 3, 3, 3, 3), 2.0, TypeError, r"upscale_factor must be an int, got float \(2.0\)"),
    ],
)
def test_icnr_rejects_bad_weights(shape, r, error, match):
    with pytest.raises(error, match=match):
        icnr_(torch.empty(shape), r)


def _train(backend: str, steps: int = 4) -> list[float]:
    torch.manual_seed(3)
    conv = nn.Conv3d(2, 4 * 8, 3, padding=1)
    icnr_(conv.weight, 2)
    nn.init.zeros_(conv.bias)
    model = nn.Sequential(PixelUnshuffle3d(2), nn.Conv3d(16, 2, 1), nn.SiLU(), conv, PixelShuffle3d(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 2, 6, 4, 8)
    target = torch.randn(2, 4, 6, 4, 8)
    losses = []
    with use_backend(backend):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_tiny_training_matches_the_reference(backend_device):
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the convergence check runs on the CPU")
    reference = _train("reference")
    assert reference[-1] < reference[0]
    assert _train(backend) == reference
