"""DiffAugment-3D policy layer: draws, their limits, and their application to a batch.

Each augmentation is checked against a tiny example worked out by hand; the op
itself (every backend against the reference) is tested in
``tests/ops/test_diff_augment3d.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from brainkern.augment import POLICIES, AugmentParams, DiffAugment3d, diff_augment
from brainkern.ops import diff_augment3d_reference, use_backend


def _params(shift=(0, 0, 0), lo=(0, 0, 0), hi=(0, 0, 0), scale=1.0) -> AugmentParams:
    return AugmentParams(
        torch.tensor([shift]),
        torch.tensor([lo]),
        torch.tensor([hi]),
        torch.tensor([scale], dtype=torch.float32),
    )


def _volume(d=3, h=4, w=5) -> torch.Tensor:
    return torch.arange(d * h * w, dtype=torch.float32).reshape(1, 1, d, h, w) / 10


# ----------------------------------------------------------------------------- hand-computed examples


def test_translation_by_hand():
    x = _volume()
    y = DiffAugment3d(background=-1.0).apply(x, _params(shift=(0, 1, -2)))
    expected = torch.full_like(x, -1.0)
    for d in range(3):
        for h in range(4):
            for w in range(5):
                sh, sw = h - 1, w + 2  # y[p] = x[p - shift]
                if 0 <= sh < 4 and 0 <= sw < 5:
                    expected[0, 0, d, h, w] = x[0, 0, d, sh, sw]
    assert torch.equal(y, expected)
    # Spot values: row h=0 is fill, y[0, 0, 0, 1, 0] = x[0, 0, 0, 0, 2].
    assert y[0, 0, 0, 0].tolist() == [-1.0] * 5
    assert y[0, 0, 0, 1, 0].item() == pytest.approx(0.2)
    assert y[0, 0, 0, 1, 3:].tolist() == [-1.0, -1.0]


def test_cutout_by_hand():
    x = _volume()
    y = DiffAugment3d(background=0.5).apply(x, _params(lo=(1, 0, 2), hi=(2, 3, 4)))
    expected = x.clone()
    expected[0, 0, 1, 0:3, 2:4] = 0.5
    assert torch.equal(y, expected)
    assert int((y != x).sum()) == 1 * 3 * 2  # the box's volume (no voxel of x equals 0.5 there)


def test_intensity_by_hand():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0]).reshape(1, 1, 1, 1, 4)
    y = DiffAugment3d(background=-1.0).apply(x, _params(scale=0.5))
    # background + 0.5 * (x - background): background stays, 1 goes to 0.
    assert y.flatten().tolist() == [-1.0, -0.5, -0.25, 0.0]


def test_all_three_at_once_by_hand():
    x = torch.ones(1, 2, 2, 2, 3)
    y = DiffAugment3d(background=0.0).apply(
        x, _params(shift=(0, 0, 1), lo=(1, 1, 0), hi=(2, 2, 3), scale=0.75)
    )
    expected = torch.full_like(x, 0.75)
    expected[..., 0] = 0.0  # translated in from outside along W
    expected[:, :, 1, 1, :] = 0.0  # the cutout row
    assert torch.equal(y, expected)


def test_translation_beyond_the_volume_is_all_background():
    x = torch.randn(2, 1, 3, 4, 5)
    params = AugmentParams(
        torch.tensor([[3, 0, 0], [0, 0, -5]]), torch.zeros(2, 3, dtype=torch.int64),
        torch.zeros(2, 3, dtype=torch.int64), torch.ones(2),
    )  # fmt: skip
    y = DiffAugment3d(background=-1.0).apply(x, params)
    assert torch.equal(y, torch.full_like(x, -1.0))


# ----------------------------------------------------------------------------- identity and gradients


def test_p_zero_and_empty_policy_return_x():
    x = torch.randn(3, 1, 4, 4, 4)
    assert DiffAugment3d(p=0.0)(x) is x
    assert DiffAugment3d(policy=())(x) is x
    assert diff_augment(x, p=0.0) is x


def test_identity_params_are_exact():
    # background + (x - background) would round 1e-8 to 0 next to background -1.
    x = torch.tensor([1e-8, -0.3, 0.7, 1.0 - 2**-24]).reshape(1, 1, 1, 2, 2)
    y = DiffAugment3d(background=-1.0).apply(x, _params())
    assert torch.equal(y, x) and y is not x


def test_gradients_reach_x_and_a_generator():
    torch.manual_seed(1)
    gen = torch.nn.Linear(4, 3 * 4 * 5)
    z = torch.randn(2, 4)
    augment = DiffAugment3d(p=1.0, background=-1.0)
    params = augment.draw(2, (3, 4, 5), generator=torch.Generator().manual_seed(3))
    fake = gen(z).reshape(2, 1, 3, 4, 5)
    weights = torch.randn(2, 1, 3, 4, 5)
    (augment.apply(fake, params) * weights).sum().backward()
    # d/d fake of sum(w * aug(fake)) is the adjoint of the augmentation applied to w.
    # The augmentation's gradient from the plain-PyTorch reference, through autograd.
    ref = fake.detach().requires_grad_()
    out = diff_augment3d_reference(ref, params.shift, params.lo, params.hi, params.scale, -1.0)
    (g_ref,) = torch.autograd.grad((out * weights).sum(), ref)
    expected_w = g_ref.reshape(2, -1).T @ z  # the Linear's weight gradient, by the chain rule
    torch.testing.assert_close(gen.weight.grad, expected_w, rtol=1e-5, atol=1e-5)
    assert gen.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- draws


def test_same_seed_same_draw_and_other_seed_another():
    augment = DiffAugment3d(p=0.5)
    a = augment.draw(8, (16, 12, 10), generator=torch.Generator().manual_seed(7))
    b = augment.draw(8, (16, 12, 10), generator=torch.Generator().manual_seed(7))
    c = augment.draw(8, (16, 12, 10), generator=torch.Generator().manual_seed(8))
    for name in ("shift", "lo", "hi", "scale"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert any(not torch.equal(getattr(a, k), getattr(c, k)) for k in ("shift", "lo", "hi", "scale"))
    x = torch.randn(8, 1, 16, 12, 10)
    y1 = augment(x, generator=torch.Generator().manual_seed(7))
    y2 = augment(x, generator=torch.Generator().manual_seed(7))
    assert torch.equal(y1, y2)
    assert torch.equal(y1, augment.apply(x, a))


def test_global_rng_is_used_without_a_generator():
    augment = DiffAugment3d(p=1.0)
    torch.manual_seed(5)
    a = augment.draw(4, (8, 8, 8))
    torch.manual_seed(5)
    b = augment.draw(4, (8, 8, 8))
    assert torch.equal(a.shift, b.shift) and torch.equal(a.scale, b.scale)


def test_the_policy_does_not_change_the_other_draws():
    gen = torch.Generator()
    full = DiffAugment3d(p=1.0).draw(6, (9, 9, 9), generator=gen.manual_seed(2))
    only = DiffAugment3d(policy="translation", p=1.0).draw(6, (9, 9, 9), generator=gen.manual_seed(2))
    assert torch.equal(full.shift, only.shift)
    assert not only.lo.any() and not only.hi.any() and torch.equal(only.scale, torch.ones(6))


def test_batch_is_the_samples_one_by_one():
    """Applying a batch's params to the batch equals applying each sample's params to it alone."""
    augment = DiffAugment3d(p=1.0, background=-1.0)
    x = torch.randn(5, 2, 7, 6, 5)
    params = augment.draw(5, x.shape, generator=torch.Generator().manual_seed(11))
    together = augment.apply(x, params)
    alone = torch.cat([augment.apply(x[i : i + 1], params.select(i)) for i in range(5)])
    assert torch.equal(together, alone)


def test_real_and_fake_in_one_call_get_their_own_draws():
    augment = DiffAugment3d(p=1.0)
    params = augment.draw(16, (32, 32, 32), generator=torch.Generator().manual_seed(0))
    # 16 independent draws: the real half and the fake half do not share parameters.
    assert not torch.equal(params.shift[:8], params.shift[8:])
    assert not torch.equal(params.scale[:8], params.scale[8:])
    assert len({tuple(s) for s in params.shift.tolist()}) > 8


def test_drawn_values_respect_their_limits():
    n, sizes = 3000, (16, 24, 9)
    augment = DiffAugment3d(p=1 / 3, translation=0.125, cutout=0.5, intensity=(0.7, 1.0))
    params = augment.draw(n, (2, 1, *sizes), generator=torch.Generator().manual_seed(4))
    limits = torch.tensor([2, 3, 1])  # floor(size / 8 + 0.5)
    assert torch.equal(params.shift.abs().amax(0), limits)  # reached, never exceeded
    cut = (params.hi > params.lo).all(1)
    side = (params.hi - params.lo)[cut]
    assert side.min() >= 1 and torch.equal(side.amax(0), torch.tensor([8, 12, 4]))
    assert (params.lo[cut] >= 0).all() and (params.hi[cut] <= torch.tensor(sizes)).all()
    assert not params.lo[~cut].any() and not params.hi[~cut].any()
    scaled = params.scale != 1
    assert params.scale.dtype == torch.float32
    assert params.scale[scaled].min() >= 0.7 and params.scale[scaled].max() <= 1.0
    # Each element drawn with probability 1/3 per sample: within 5 standard deviations.
    sd = math.sqrt(n * (1 / 3) * (2 / 3))
    for count in (cut.sum().item(), scaled.sum().item()):
        assert abs(count - n / 3) < 5 * sd
    # A drawn shift is (0, 0, 0) with probability 1/5 * 1/7 * 1/3 (spans 2T + 1).
    moved = (params.shift != 0).any(1).sum().item()
    assert abs(moved - n / 3 * (1 - 1 / 105)) < 5 * sd
    # Every position of a small box is reachable: a 1-voxel side along W (of 9) takes every lo.
    thin = cut & ((params.hi - params.lo)[:, 2] == 1)
    assert set(params.lo[thin, 2].tolist()) == set(range(9))


def test_p_one_always_draws_every_element():
    params = DiffAugment3d(p=1.0, intensity=(0.5, 0.6)).draw(50, (8, 8, 8), generator=torch.Generator())
    assert ((params.hi - params.lo) >= 1).all()
    assert (params.scale <= 0.6).all()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": ("translation", "color")}, r"unknown policy \['color'\].*translation.*cutout.*intensity"),
        ({"policy": "cutout,cutout"}, "twice"),
        ({"p": 1.5}, r"p must be in \[0.0, 1.0\], got 1.5"),
        ({"p": -0.1}, "p must be in"),
        ({"translation": 2.0}, "translation must be in"),
        ({"cutout": 0.0}, r"cutout must be in \(0.0, 1.0\]"),
        ({"intensity": (1.0, 0.7)}, "low <= high"),
        ({"intensity": (-0.1, 1.0)}, r"intensity\[0\] must be in"),
        ({"intensity": 0.7}, r"\(low, high\) pair"),
        ({"p": float("nan")}, "finite"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffAugment3d(**kwargs)


def test_bad_calls_raise():
    augment = DiffAugment3d()
    with pytest.raises(ValueError, match="params are for 1 samples but x has 2"):
        augment.apply(torch.zeros(2, 1, 2, 2, 2), _params())
    with pytest.raises(ValueError, match="5-d"):
        augment(torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match="three sizes >= 1"):
        augment.draw(2, (4, 4))
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        augment.draw(-1, (4, 4, 4))


def test_policies_and_repr():
    assert POLICIES == ("translation", "cutout", "intensity")
    assert "p=0.3333" in repr(DiffAugment3d())
    assert DiffAugment3d(policy="intensity, cutout").policy == ("intensity", "cutout")


# ----------------------------------------------------------------------------- every backend, every device


def test_draw_and_apply_on_every_backend(backend_device):
    """A CPU generator's draw applied on the tensor's device and backend, without host syncs."""
    from tests.conftest import forbid_host_sync  # noqa: PLC0415

    backend, device = backend_device
    augment = DiffAugment3d(p=1.0, background=-1.0)
    x = torch.rand(4, 2, 6, 5, 7, dtype=torch.float64).mul(2).sub(1).to(device).requires_grad_()
    with use_backend(backend), forbid_host_sync(device):
        y = augment(x, generator=torch.Generator().manual_seed(9))
        (gx,) = torch.autograd.grad(y.square().sum(), x)
    params = augment.draw(4, x.shape, generator=torch.Generator().manual_seed(9))
    assert params.shift.device.type == "cpu"
    ref = x.detach().cpu().requires_grad_()
    y_ref = diff_augment3d_reference(ref, params.shift, params.lo, params.hi, params.scale, -1.0)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), ref)
    assert torch.equal(y.detach().cpu(), y_ref.detach())
    torch.testing.assert_close(gx.cpu(), g_ref, rtol=1e-12, atol=1e-12)
