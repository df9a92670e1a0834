import pytest
import torch

from brainkern.data import augment as A


def _x(n=4, shape=(8, 6, 5)):
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 1, *shape, generator=g) + 0.5


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


TRANSFORMS = [
    A.RandomFlipLR(0.5),
    A.RandomIntensityScale(0.7, 1.0),
    A.GaussianNoise(0.01),
    A.RandomTranslate(0.25),
    A.Cutout(0.5),
    A.classic(p=0.5, noise_variance=0.001),
]


@pytest.mark.parametrize("t", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_seeded_determinism_and_shapes(t):
    x = _x()
    before = x.clone()
    a = t(x, generator=_gen(7))
    b = t(x, generator=_gen(7))
    assert a.shape == x.shape and a.dtype == x.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # input untouched
    c = t(x, generator=_gen(8))
    assert not torch.equal(a, c)
    single = t(x[0], generator=_gen(7))  # (C, D, H, W) in, same out
    assert single.shape == x[0].shape


def test_flip_lr():
    x = _x()
    torch.testing.assert_close(A.flip_lr(x, p=1.0), x.flip(2))
    torch.testing.assert_close(A.flip_lr(x, p=0.0), x)
    out = A.flip_lr(x, p=0.5, generator=_gen(1))
    for i in range(4):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(1))


def test_intensity_scale_range():
    x = _x(n=64)
    out = A.scale_intensity(x, 0.7, 1.0, generator=_gen(2))
    ratio = (out / x).flatten(1)
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values)  # one factor per sample
    assert ratio.min() >= 0.7 - 1e-6 and ratio.max() <= 1.0 + 1e-6
    assert ratio.max() - ratio.min() > 0.15  # the range is actually used


def test_noise_variance():
    x = torch.zeros(2, 1, 32, 32, 32)
    out = A.add_noise(x, variance=0.04, generator=_gen(3))
    assert out.var().item() == pytest.approx(0.04, rel=0.03)
    assert out.mean().abs().item() < 0.005


def test_translate_moves_content():
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, 8, 8, 8] = 1.0
    out = A.translate(x, max_fraction=0.25, generator=_gen(4), fill=0.0)
    assert out.sum() == 1.0
    pos = torch.nonzero(out[0, 0])[0]
    assert (pos - 8).abs().max() <= 4
    outs = [A.translate(x, 0.25, generator=_gen(s), fill=0.0) for s in range(10)]
    assert len({tuple(torch.nonzero(o[0, 0])[0].tolist()) for o in outs}) > 3


def test_cutout_fills_one_box():
    x = _x(n=3, shape=(10, 10, 10))
    out = A.cutout(x, max_fraction=0.5, generator=_gen(5), fill=-7.0)
    for i in range(3):
        hole = out[i, 0] == -7.0
        idx = torch.nonzero(hole)
        lo, hi = idx.min(0).values, idx.max(0).values
        extent = hi - lo + 1
        assert int(hole.sum()) == int(extent.prod())  # a box
        assert extent.max() <= 5
        keep = ~hole
        assert torch.equal(out[i, 0][keep], x[i, 0][keep])


def test_bad_arguments():
    with pytest.raises(ValueError, match="probability"):
        A.RandomFlipLR(p=1.5)
    with pytest.raises(ValueError, match="shape"):
        A.flip_lr(torch.zeros(5, 5, 5))
    with pytest.raises(ValueError, match="variance"):
        A.GaussianNoise(-1.0)
