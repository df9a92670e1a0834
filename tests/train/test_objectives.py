"""The adversarial losses against their textbook formulas."""

import math

import pytest
import torch

from brainkern.train.objectives import (
    discriminator_loss,
    generator_loss,
    kl_standard_normal,
    l1_reconstruction,
    mse_reconstruction,
    reconstruction_loss,
)


@pytest.fixture
def outputs():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(5, 1, generator=g, dtype=torch.float64)
    fakes = [torch.randn(5, 1, generator=g, dtype=torch.float64) for _ in range(2)]
    return real, fakes


def test_wgan_matches_kwon_eq1(outputs):
    real, (rec, rand) = outputs
    # Kwon et al. eq. 1 without the penalty: E[D(G(z_e))] + E[D(G(z_r))] - 2 E[D(x)].
    expected = rec.mean() + rand.mean() - 2 * real.mean()
    assert torch.allclose(discriminator_loss("wgan-gp", real, [rec, rand]), expected)
    assert torch.allclose(generator_loss("wgan-gp", [rec, rand]), -(rec.mean() + rand.mean()))


def test_standard_is_binary_cross_entropy(outputs):
    real, fakes = outputs
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = sum(bce(real, torch.ones_like(real)) + bce(f, torch.zeros_like(f)) for f in fakes)
    assert torch.allclose(discriminator_loss("standard", real, fakes), expected, atol=1e-12)
    expected_g = sum(bce(f, torch.ones_like(f)) for f in fakes)
    assert torch.allclose(generator_loss("standard", fakes), expected_g, atol=1e-12)


def test_standard_is_finite_for_large_logits():
    big = torch.tensor([[1e4], [-1e4]])
    assert math.isfinite(float(discriminator_loss("standard", big, [-big])))
    assert math.isfinite(float(generator_loss("standard", [big])))


def test_hinge(outputs):
    real, fakes = outputs
    expected = sum(torch.relu(1 - real).mean() + torch.relu(1 + f).mean() for f in fakes)
    assert torch.allclose(discriminator_loss("hinge", real, fakes), expected)
    assert torch.allclose(generator_loss("hinge", fakes), -sum(f.mean() for f in fakes))


def test_l1_and_kl():
    x, y = torch.zeros(2, 1, 2, 2, 2), torch.full((2, 1, 2, 2, 2), 0.5)
    assert float(l1_reconstruction(x, y)) == pytest.approx(0.5)
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    assert float(kl_standard_normal(mu, logvar)) == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension.
    assert float(kl_standard_normal(torch.ones(3, 4), logvar)) == pytest.approx(2.0)


def test_kl_reductions_and_mse_against_their_formulas():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g).double()
    # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1) / 2 - log s, per dimension.
    var = logvar.exp()
    per_dim = (mu**2 + var - 1) / 2 - torch.log(var.sqrt())
    total = kl_standard_normal(mu, logvar, "sum")
    torch.testing.assert_close(total, per_dim.sum() / 3)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), total)  # "sum" stays the default
    # "mean" (Kwon et al.'s VAE-GAN code): over batch and latent dimensions, the sum / L.
    torch.testing.assert_close(kl_standard_normal(mu, logvar, "mean"), total / 5)
    torch.testing.assert_close(kl_standard_normal(mu, logvar, "mean"), per_dim.mean())
    x, y = torch.randn(2, 1, 2, 3, 2, generator=g).double(), torch.randn(2, 1, 2, 3, 2, generator=g).double()
    explicit = sum(float(a - b) ** 2 for a, b in zip(x.flatten(), y.flatten(), strict=True)) / x.numel()
    assert float(mse_reconstruction(x, y)) == pytest.approx(explicit, rel=1e-12)
    assert float(reconstruction_loss("mse", x, y)) == pytest.approx(explicit, rel=1e-12)
    assert float(reconstruction_loss("l1", x, y)) == float(l1_reconstruction(x, y))
    with pytest.raises(ValueError, match="unknown KL reduction 'max'"):
        kl_standard_normal(mu, logvar, "max")
    with pytest.raises(ValueError, match="unknown reconstruction loss 'l2'"):
        reconstruction_loss("l2", x, y)


def test_errors(outputs):
    real, fakes = outputs
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        discriminator_loss("lsgan", real, fakes)
    with pytest.raises(ValueError, match="at least one fake"):
        discriminator_loss("hinge", real, [])
    with pytest.raises(ValueError, match="at least one fake"):
        generator_loss("standard", [])


def test_float64_losses_stay_float64_and_half_ones_widen():
    from brainkern.train.objectives import discriminator_loss, generator_loss, l1_reconstruction

    d = torch.randn(4, 1, dtype=torch.float64)
    for loss in ("wgan-gp", "standard", "hinge"):
        assert discriminator_loss(loss, d, [d]).dtype == torch.float64
        assert generator_loss(loss, [d]).dtype == torch.float64
    assert generator_loss("standard", [d.bfloat16()]).dtype == torch.float32
    assert l1_reconstruction(d, d * 2).dtype == torch.float64
