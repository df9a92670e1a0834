"""Seeliger et al.'s reconstruction loss (brainkern.reconstruct.loss) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from brainkern.reconstruct.features import FeatureNet
from brainkern.reconstruct.loss import (
    ReconstructionLoss,
    magnitude_loss,
    pixel_loss,
    presence_loss,
    shrink,
)


def _bce(logit: float, target: float) -> float:
    """Binary cross-entropy of a logit, by hand: log(1 + e^z) - b z."""
    return math.log1p(math.exp(logit)) - target * logit


def _maps(c1: list[float], c2: list[float]) -> dict[str, torch.Tensor]:
    """conv1 as a (1, 1, 2, 2) map, conv2 as (1, 1, 1, 2)."""
    return {
        "conv1": torch.tensor(c1, dtype=torch.float64).reshape(1, 1, 2, 2),
        "conv2": torch.tensor(c2, dtype=torch.float64).reshape(1, 1, 1, 2),
    }


# shown: conv1 [2, 0, -3, 0.5] (one element above 1, one below -1), conv2 [1.5, -2]
FX = ([2.0, 0.0, -3.0, 0.5], [1.5, -2.0])
FY = ([0.5, 1.5, -2.0, 0.0], [3.0, 0.25])


def test_presence_by_hand():
    fx, fy = _maps(*FX), _maps(*FY)
    c1, c2 = FY
    pos1 = [1, 0, 0, 0]  # conv1 > 1
    neg1 = [0, 0, 1, 0]  # conv1 < -1
    pos2 = [1, 0]  # conv2 > 1
    want = (
        sum(_bce(v - 1, b) for v, b in zip(c1, pos1, strict=True)) / 4
        + sum(_bce(-v - 1, b) for v, b in zip(c1, neg1, strict=True)) / 4
        + sum(_bce(v - 1, b) for v, b in zip(c2, pos2, strict=True)) / 2
    )
    assert presence_loss(fx, fy).item() == pytest.approx(want, rel=1e-12)
    # without the negative side only the positive terms remain
    no_neg = want - sum(_bce(-v - 1, b) for v, b in zip(c1, neg1, strict=True)) / 4
    assert presence_loss(fx, fy, negative=()).item() == pytest.approx(no_neg, rel=1e-12)


def test_magnitude_by_hand():
    fx, fy = _maps(*FX), _maps(*FY)
    # a mean over the active elements of the shown map: conv1 positive has one (2 vs 0.5),
    # the negative side one (-3 vs -2), conv2 one (1.5 vs 3)
    want = (2.0 - 0.5) ** 2 + (-3.0 + 2.0) ** 2 + (1.5 - 3.0) ** 2
    assert magnitude_loss(fx, fy).item() == pytest.approx(want, rel=1e-12)
    # a higher threshold drops conv1's 2 and conv2's 1.5 (no active element: 0): only the -3 remains
    assert magnitude_loss(fx, fy, threshold=2.5).item() == pytest.approx(1.0, rel=1e-12)
    # two active elements in one map are averaged; the inactive ones never count
    two = {"conv1": torch.tensor([[[[2.0, 3.0], [0.0, 0.0]]]]), "conv2": torch.zeros(1, 1, 1, 2)}
    got = {"conv1": torch.tensor([[[[1.0, 1.0], [9.0, 9.0]]]]), "conv2": torch.full((1, 1, 1, 2), 5.0)}
    assert magnitude_loss(two, got).item() == pytest.approx((1.0 + 4.0) / 2)


def test_pixel_by_hand():
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    y[0] = 0.5  # 16 pixels off by 0.5
    y[1, 0, 0, 0] = 2.0  # one pixel off by 2
    assert pixel_loss(x, y, scale=1.0).item() == pytest.approx((16 * 0.25 + 4.0) / 32)
    # constant images stay constant when shrunk: (a - b)^2 whatever the scale
    a, b = torch.full((3, 1, 64, 64), 0.3), torch.full((3, 1, 64, 64), -0.5)
    assert pixel_loss(a, b).item() == pytest.approx(0.64, rel=1e-6)
    assert shrink(a).shape == (3, 1, 58, 58)  # round(0.9 * 64) = round(57.6)
    assert shrink(torch.zeros(1, 1, 10, 10)).shape == (1, 1, 9, 9)


def test_pixel_shrinking_blurs_fine_detail():
    # a 1-pixel checkerboard against flat grey: 1 at full size, far less after antialiased shrinking
    grid = torch.arange(64)
    board = ((grid[:, None] + grid[None, :]) % 2 * 2 - 1).float().reshape(1, 1, 64, 64)
    flat = torch.zeros_like(board)
    assert pixel_loss(board, flat, scale=1.0).item() == pytest.approx(1.0)
    assert pixel_loss(board, flat).item() < 0.1


class _Stub(nn.Module):
    """Known maps: conv1 = 3 x (S x S), conv2 = 2 * 2x2 average (S/2 x S/2); one parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def features(self, x):
        return {"conv1": 3 * self.gain * x, "conv2": 2 * self.gain * nn.functional.avg_pool2d(x, 2)}


def _images(n: int, side: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=gen) * 2 - 1


def test_total_is_the_weighted_sum_of_the_terms():
    x, y = _images(3, 8, 0), _images(3, 8, 1)
    out = ReconstructionLoss(_Stub())(x, y)
    fx = {"conv1": 3 * x, "conv2": 2 * nn.functional.avg_pool2d(x, 2)}
    fy = {"conv1": 3 * y, "conv2": 2 * nn.functional.avg_pool2d(y, 2)}
    assert out["pixel"].item() == pytest.approx(pixel_loss(x, y, scale=0.9).item(), rel=1e-6)
    assert out["presence"].item() == pytest.approx(presence_loss(fx, fy).item(), rel=1e-6)
    assert out["magnitude"].item() == pytest.approx(magnitude_loss(fx, fy).item(), rel=1e-6)
    want = 10 * out["pixel"] + 50 * out["presence"] + 1 * out["magnitude"]
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    other = ReconstructionLoss(_Stub(), lambda_px=1.0, lambda_fp=0.0, lambda_fm=2.0)(x, y)
    assert other["loss"].item() == pytest.approx((out["pixel"] + 2 * out["magnitude"]).item(), rel=1e-6)
    for key in ("pixel", "presence", "magnitude"):
        assert not out[key].requires_grad


def test_gradient_reaches_y_not_the_feature_net():
    torch.manual_seed(0)
    net = FeatureNet(3, side=32)
    net.train()
    loss = ReconstructionLoss(net)
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    loss.train()
    assert not net.training  # stays in eval mode
    x = _images(2, 32, 2)
    y = _images(2, 32, 3).requires_grad_(True)
    loss(x, y)["loss"].backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_perfect_reconstruction():
    torch.manual_seed(0)
    loss = ReconstructionLoss(FeatureNet(3, side=32))
    x = _images(4, 32, 4)
    same = loss(x, x.clone())
    other = loss(x, _images(4, 32, 5))
    assert same["pixel"].item() == 0.0 and same["magnitude"].item() == 0.0
    assert other["pixel"].item() > 0.1 and other["magnitude"].item() > 0.0
    assert same["presence"].item() < other["presence"].item()


def test_ensemble_and_cached_targets():
    loss = ReconstructionLoss(_Stub())
    x = _images(3, 8, 6)
    members = [_images(3, 8, 7), _images(3, 8, 8)]
    both = loss(x, torch.cat(members))
    each = [loss(x, m) for m in members]
    for key in ("loss", "pixel", "presence", "magnitude"):
        assert both[key].item() == pytest.approx((each[0][key] + each[1][key]).item() / 2, rel=1e-6)
    cached = loss(None, torch.cat(members), targets=loss.targets(x))
    assert cached["loss"].item() == pytest.approx(both["loss"].item(), rel=1e-6)
    # targets slice by image
    t = loss.targets(x)
    part = loss(None, members[0][1:], targets={k: v[1:] for k, v in t.items()})
    assert part["loss"].item() == pytest.approx(loss(x[1:], members[0][1:])["loss"].item(), rel=1e-6)


def test_errors():
    loss = ReconstructionLoss(_Stub())
    with pytest.raises(ValueError, match="copies"):
        loss(_images(3, 8, 0), _images(4, 8, 1))
    with pytest.raises(ValueError, match="targets"):
        loss(None, _images(3, 8, 1))
    with pytest.raises(ValueError, match="negative"):
        ReconstructionLoss(_Stub(), negative=("conv3",))
    with pytest.raises(ValueError, match="scale"):
        ReconstructionLoss(_Stub(), pixel_scale=1.5)
    with pytest.raises(ValueError, match="features"):
        ReconstructionLoss(nn.Linear(2, 2))
