"""conv3d_gradfix: F.conv3d with a first backward that can skip weight gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import brainkern.nn as bnn
from brainkern.ops import conv3d_gradfix, no_weight_gradients
from brainkern.ops.conv3d_gradfix import weight_gradients_disabled

CASES = [
    # (input shape, weight shape, stride, padding, dilation, groups)
    ((2, 3, 7, 5, 3), (4, 3, 3, 3, 3), 1, 1, 1, 1),
    ((1, 2, 8, 8, 8), (3, 2, 4, 4, 4), 2, 1, 1, 1),
    ((2, 4, 6, 7, 5), (6, 2, 3, 2, 3), (1, 2, 1), (1, 0, 2), (2, 1, 1), 2),
    ((3, 2, 5, 6, 4), (2, 2, 2, 2, 2), 1, "same", 1, 1),
    ((1, 2, 5, 6, 4), (2, 2, 3, 3, 3), 1, "valid", 1, 1),
]


def _inputs(case, dtype=torch.float64, bias=True):
    xs, ws, *_ = case
    x = torch.randn(xs, dtype=dtype, requires_grad=True)
    w = (torch.randn(ws, dtype=dtype) * 0.3).requires_grad_(True)
    b = torch.randn(ws[0], dtype=dtype, requires_grad=True) if bias else None
    return x, w, b


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_first_order_match_conv3d(case, bias):
    x, w, b = _inputs(case, bias=bias)
    conf = case[2:]
    out = conv3d_gradfix(x, w, b, *conf)
    ref = F.conv3d(x, w, b, *conf)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(ref)
    params = [x, w] + ([b] if bias else [])
    got = torch.autograd.grad(out, params, go)
    want = torch.autograd.grad(ref, params, go)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("case", CASES)
def test_double_backward_weight_gradients_are_exact(case):
    """The penalty-style graph: input gradient under no_weight_gradients, then backward to the weights."""
    x, w, b = _inputs(case)
    conf = case[2:]

    def penalty(conv, gradfix):
        out = conv(x, w, b, *conf)
        with no_weight_gradients(gradfix):
            (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        return gx.square().sum() + (gx * x).sum()

    p = penalty(conv3d_gradfix, True)
    r = penalty(F.conv3d, False)
    torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(p, [x, w, b])
    want = torch.autograd.grad(r, [x, w, b])
    for g, ref in zip(got, want, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-10)


def test_no_weight_gradients_skips_and_restores():
    x, w, b = _inputs(CASES[0])
    out = conv3d_gradfix(x, w, b, 1, 1)
    assert not weight_gradients_disabled()
    with no_weight_gradients():
        with no_weight_gradients():
            assert weight_gradients_disabled()
        assert weight_gradients_disabled()
        out.sum().backward(retain_graph=True)
    assert not weight_gradients_disabled()
    assert x.grad is not None and w.grad is None and b.grad is None
    out.sum().backward()
    assert w.grad is not None and b.grad is not None
    with no_weight_gradients(disable=False):
        assert not weight_gradients_disabled()


GRADCHECK_CASES = [
    # small enough for numerical Jacobians: (input, weight, stride, padding, dilation, groups)
    ((1, 2, 4, 3, 3), (2, 2, 2, 2, 2), 1, 1, 1, 1),
    ((2, 2, 5, 4, 3), (2, 1, 3, 2, 2), (2, 1, 1), (1, 0, 1), (1, 1, 2), 2),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck_and_gradgradcheck(case):
    xs, ws, *conf = case
    x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(ws, dtype=torch.float64) * 0.3).requires_grad_(True)
    b = torch.randn(ws[0], dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return conv3d_gradfix(x, w, b, *conf)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_unbatched_and_autocast():
    x = torch.randn(2, 5, 6, 4)
    w = torch.randn(3, 2, 3, 3, 3)
    torch.testing.assert_close(conv3d_gradfix(x, w, None, 1, 1), F.conv3d(x, w, None, 1, 1))
    xb = x.unsqueeze(0).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv3d_gradfix(xb, w, None, 1, 1)
        ref = F.conv3d(xb, w, None, 1, 1)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    out.float().sum().backward()
    assert xb.grad.dtype == torch.float32


def test_bad_arguments_raise():
    x = torch.randn(1, 2, 4, 4, 4)
    w = torch.randn(3, 2, 3, 3, 3)
    with pytest.raises(ValueError, match="input must be"):
        conv3d_gradfix(torch.randn(4, 4, 4), w)
    with pytest.raises(ValueError, match="weight must be"):
        conv3d_gradfix(x, torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="stride must be"):
        conv3d_gradfix(x, w, stride=(1, 2))
    with pytest.raises(ValueError, match="padding must be"):
        conv3d_gradfix(x, w, padding="full")
    with pytest.raises(ValueError, match="needs stride 1"):
        conv3d_gradfix(x, w, stride=2, padding="same")


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_conv3d_layer_is_a_drop_in(padding_mode):
    ref = nn.Conv3d(2, 3, 3, stride=2, padding=1, padding_mode=padding_mode).double()
    layer = bnn.Conv3d(2, 3, 3, stride=2, padding=1, padding_mode=padding_mode).double()
    assert isinstance(layer, nn.Conv3d)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 2, 7, 6, 5, dtype=torch.float64, requires_grad=True)
    out, want = layer(x), ref(x)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
