"""Zhuang et al. (2019, seed 000): ICW-GAN, the conditional VAE and the per-class GMMs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from brainkern.models import build_model
from brainkern.models.zhuang import (
    ConditionalGenerator,
    GMMGenerator,
    ICWDiscriminator,
    padded_grid,
)
from brainkern.ops import gradient_penalty

ODD = (12, 14, 10)  # padded to 16^3: margins (2, 2), (1, 1), (3, 3)
SMALL = {"latent_dim": 8, "width": 4, "num_classes": 3}


def _small(name: str, shape=ODD, **extra):
    return build_model(name, shape=shape, **{**SMALL, **extra})


# ---------------------------------------------------------------------------
# shapes, ranges, parameter counts, rebuilding


@pytest.mark.parametrize("shape", [ODD, (9, 16, 7), (53, 63, 46)], ids=["12x14x10", "9x16x7", "paper"])
def test_padded_grid_is_the_next_multiple_of_eight(shape):
    grid = padded_grid(shape)
    assert all(p % 8 == 0 and s <= p < s + 8 for s, p in zip(shape, grid, strict=True))
    if shape == (53, 63, 46):
        assert grid == (56, 64, 48)


@pytest.mark.parametrize("shape", [ODD, (9, 16, 7)], ids=["12x14x10", "9x16x7"])
@pytest.mark.parametrize("name", ["icw-gan", "cvae"])
def test_networks_shapes_and_range(name, shape):
    torch.manual_seed(0)
    m = _small(name, shape)
    assert m.conditional and m.num_classes == 3 and m.shape == shape and m.latent_dim == 8
    assert (m.family, m.loss) == {"icw-gan": ("gan", "wgan-gp"), "cvae": ("cvae", "elbo")}[name]
    assert (
        list(m.networks())
        == {"icw-gan": ["generator", "discriminator"], "cvae": ["encoder", "generator"]}[name]
    )
    y = torch.tensor([0, 1, 2, 1, 0])
    m.train()
    x = m.generate(m.sample_latent(5), y).detach()
    assert x.shape == (5, 1, *shape) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0  # a sigmoid: [0, 1] maps
    assert float(x.std()) > 0
    s = m.sample(4, labels=torch.arange(4) % 3, generator=torch.Generator().manual_seed(1))
    assert s.shape == (4, 1, *shape) and 0.0 <= float(s.min()) and float(s.max()) <= 1.0
    if name == "icw-gan":
        assert m.discriminator(x, y).shape == (5, 1)
    else:
        mu, logvar = m.encoder(x, y)
        assert mu.shape == logvar.shape == (5, 8)


def test_parameter_counts_follow_the_architecture():
    # 12x14x10 -> padded 16^3, start 2^3; w = 4, latent 8, 3 classes.
    m = _small("icw-gan")
    L, C, w = 8, 3, 4
    k = 64  # 4^3 kernel
    label = sum((C + 1) * n**3 for n in (2, 4, 8))
    gen = (L + C) * 4 * w * 8 + 2 * 4 * w  # projection (no bias) + BatchNorm
    gen += (4 * w + 1) * 2 * w * k + 2 * 2 * w + (2 * w + 1) * w * k + 2 * w + (w + 1) * k + 1
    assert m.parameter_counts()["generator"] == gen + label
    label_d = sum((C + 1) * n**3 for n in (16, 8, 4, 2))
    disc = (1 + 1) * w * k + w + (w + 1) * 2 * w * k + 2 * w + (2 * w + 1) * 4 * w * k + 4 * w
    disc += (4 * w + 1) * 8 + 1  # the head covers the 2^3 grid
    assert m.parameter_counts()["discriminator"] == disc + label_d
    # The paper's grid and latent at the default width: tens of millions at most.
    big = build_model("icw-gan", shape=(53, 63, 46), num_classes=36)
    assert 1e6 < sum(big.parameter_counts().values()) < 5e7
    c = _small("cvae")
    enc = (1 + C) * w * k + w + w * 2 * w * k + 2 * 2 * w + 2 * w * 4 * w * k + 2 * 4 * w
    enc += (4 * w * 8 + 1) * 2 * L
    assert c.parameter_counts()["encoder"] == enc
    # The CVAE's decoder: the label enters with the code only (no label channels).
    dec = (L + C) * 4 * w * 8 + 2 * 4 * w
    dec += 4 * w * 2 * w * k + 2 * 2 * w + 2 * w * w * k + 2 * w + w * k + 1
    assert c.parameter_counts()["generator"] == dec


@pytest.mark.parametrize("name", ["icw-gan", "cvae", "gmm"])
def test_build_model_config_rebuilds(name):
    extra = {"n_components": 3, "latent_dim": None, "width": None} if name == "gmm" else {}
    cfg = {**SMALL, **extra}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    m = build_model(name, shape=ODD, **cfg)
    again = build_model(**m.config)
    assert again.config == m.config and again.shape == ODD and again.num_classes == 3
    again.load_state_dict(m.state_dict())  # same layout
    assert m.config["num_classes"] == 3


@pytest.mark.parametrize("name", ["icw-gan", "cvae", "gmm"])
def test_labels_are_required_and_checked(name):
    m = _small(name) if name != "gmm" else build_model("gmm", shape=ODD, num_classes=3, n_components=3)
    with pytest.raises(ValueError, match="conditional .*give labels"):
        m.sample(2)
    with pytest.raises(ValueError, match="labels must lie in 0 .. 2"):
        m.sample(2, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="3 labels for 2 volumes"):
        m.sample(2, labels=torch.tensor([0, 1, 2]))
    if name != "gmm":
        with pytest.raises(ValueError, match=r"expected labels of shape \(2,\)"):
            m.generator(m.sample_latent(2), torch.tensor([0]))
        with pytest.raises(TypeError, match="integer classes"):
            m.generator(m.sample_latent(2), torch.tensor([0.0, 1.0]))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_model("icw-gan", shape=ODD, num_classes=0)
    with pytest.raises(ValueError, match="grid sides must be >= 1"):
        build_model("cvae", shape=(0, 4, 4))
    with pytest.raises(ValueError, match="norm must be one of"):
        build_model("icw-gan", shape=ODD, critic_norm="batch")
    with pytest.raises(ValueError, match="covariance must be one of"):
        build_model("gmm", shape=ODD, covariance="full-ish")
    m = _small("icw-gan")
    with pytest.raises(ValueError, match=r"expected volumes of shape \(N, 1, 12, 14, 10\)"):
        m.discriminator(torch.zeros(2, 1, 16, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"expected codes of shape \(N, 8\)"):
        m.generator(torch.zeros(2, 9), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------
# the label reaches every layer (Zhuang et al. Fig. 1)


def _layer_inputs(layers: list[nn.Module], run) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [
        layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach())) for layer in layers
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(layers)
    return seen


def test_icw_generator_sees_the_label_at_every_layer():
    torch.manual_seed(0)
    g = ConditionalGenerator(ODD, latent_dim=8, num_classes=3, width=4).eval()
    layers = [g.project, *g.blocks]
    z = torch.randn(2, 8)
    z2 = torch.randn(2, 8)

    def inputs(z, y):
        return _layer_inputs(layers, lambda: g(z, torch.tensor(y)))

    a, b, c = inputs(z, [0, 0]), inputs(z, [1, 2]), inputs(z2, [0, 0])
    # Layer 1: the one-hot label is the last C channels of the (code, label) input.
    assert torch.equal(a[0][:, 8:, 0, 0, 0], torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    assert torch.equal(b[0][:, 8:, 0, 0, 0], torch.tensor([[0.0, 1, 0], [0.0, 0, 1]]))
    for i in range(1, 4):
        # Layers 2-4: the last channel is the label's own volume: the same for the same
        # label whatever the code, different for another label, on that layer's grid.
        assert a[i].shape[2:] == tuple(2 * 2 ** (i - 1) for _ in range(3))
        assert torch.equal(a[i][:, -1], c[i][:, -1])
        assert not torch.allclose(a[i][:, -1], b[i][:, -1])
        assert not torch.allclose(a[i][:, :-1], c[i][:, :-1])  # the rest carries the code
    out_a, out_b = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 2]))
    assert not torch.allclose(out_a, out_b)


def test_icw_critic_sees_the_label_at_every_layer():
    torch.manual_seed(0)
    d = ICWDiscriminator(ODD, num_classes=3, width=4)
    layers = [*d.blocks, d.head]
    x, x2 = torch.rand(2, 1, *ODD), torch.rand(2, 1, *ODD)

    def inputs(x, y):
        return _layer_inputs(layers, lambda: d(x, torch.tensor(y)))

    a, b, c = inputs(x, [0, 0]), inputs(x, [1, 2]), inputs(x2, [0, 0])
    for i, grid in enumerate([16, 8, 4, 2]):
        assert a[i].shape[2:] == (grid,) * 3
        assert torch.equal(a[i][:, -1], c[i][:, -1])
        assert not torch.allclose(a[i][:, -1], b[i][:, -1])
    # The volume sits zero-padded in the middle of the 16^3 grid (margins 2, 1, 3 before).
    assert torch.equal(a[0][:, :1, 2:14, 1:15, 3:13], x)
    assert float(a[0][:, :1].abs().sum()) == pytest.approx(float(x.sum()))
    assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([1, 2])))


def test_cvae_label_reaches_encoder_and_decoder():
    torch.manual_seed(0)
    m = _small("cvae").eval()
    x, z = torch.rand(2, 1, *ODD), torch.randn(2, 8)
    a, b = torch.tensor([0, 0]), torch.tensor([1, 2])
    assert not torch.allclose(m.encoder(x, a)[0], m.encoder(x, b)[0])
    assert not torch.allclose(m.generator(z, a), m.generator(z, b))
    (seen,) = _layer_inputs([m.encoder.blocks], lambda: m.encoder(x, b))
    assert seen.shape == (2, 1 + 3, 16, 16, 16)
    assert torch.equal(seen[1, 1:], torch.tensor([0.0, 0, 1])[:, None, None, None].expand(3, 16, 16, 16))


def test_critic_has_no_batch_statistics_and_takes_a_conditional_penalty():
    torch.manual_seed(0)
    for norm in ("none", "layer"):
        m = _small("icw-gan", critic_norm=norm)
        mods = list(m.discriminator.modules())
        assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in mods)
        assert any(isinstance(mod, nn.GroupNorm) for mod in mods) == (norm == "layer")
        real, fake = torch.rand(3, 1, *ODD), torch.rand(3, 1, *ODD)
        y = torch.tensor([0, 1, 2])
        # One sample's critic value does not depend on the others of the batch.
        alone = m.discriminator(real[:1], y[:1])
        torch.testing.assert_close(alone, m.discriminator(real, y)[:1])
        gp = gradient_penalty(m.discriminator, real, fake, labels=y)
        assert gp.dim() == 0 and math.isfinite(float(gp.detach())) and float(gp.detach()) > 0
        gp.backward()
        # Every convolution weight gets a gradient (biases and label volumes only shift a
        # piecewise-linear critic's pre-activations: their penalty gradient is zero).
        convs = [mod for mod in mods if isinstance(mod, nn.Conv3d)]
        assert len(convs) == 4
        assert all(c.weight.grad is not None and float(c.weight.grad.abs().sum()) > 0 for c in convs)


def test_gradfix_and_checkpoint_keep_the_outputs():
    torch.manual_seed(0)
    plain = _small("icw-gan")
    other = _small("icw-gan", checkpoint=True, gradfix=True)
    other.load_state_dict(plain.state_dict())
    z, y, x = torch.randn(2, 8), torch.tensor([0, 2]), torch.rand(2, 1, *ODD)
    torch.testing.assert_close(plain.generate(z, y), other.generate(z, y))
    torch.testing.assert_close(plain.discriminator(x, y), other.discriminator(x, y))


# ---------------------------------------------------------------------------
# the Gaussian mixtures

GRID = (8, 9, 7)


def _separated(n_per_class: int = 12, seed: int = 0):
    """Three classes of volumes inside a box mask, each a distinct blob plus noise; zero outside."""
    rng = np.random.default_rng(seed)
    inside = np.zeros(GRID, dtype=bool)
    inside[2:6, 2:7, 1:6] = True
    patterns = []
    for c in range(3):
        p = np.zeros(GRID)
        p[2 + c : 4 + c, 2:7, 1:6] = 1.0
        patterns.append(p * inside)
    x, y = [], []
    for c in range(3):
        for _ in range(n_per_class):
            v = patterns[c] + 0.05 * rng.standard_normal(GRID)
            x.append(np.where(inside, v, 0.0))
            y.append(c)
    return np.stack(x)[:, None].astype(np.float32), np.asarray(y), np.stack(patterns), inside


def _fitted(**kwargs):
    x, y, patterns, inside = _separated()
    m = build_model("gmm", shape=GRID, num_classes=3, **{"n_components": 5, "n_mixture": 2, **kwargs})
    nll = m.generator.fit(torch.from_numpy(x), torch.from_numpy(y))
    return m, nll, x, y, patterns, inside


def test_gmm_is_buffers_only_and_sized_at_build_time():
    m = build_model("gmm", shape=GRID, num_classes=3, n_components=5, n_mixture=2)
    assert (m.family, m.loss, m.latent_dim) == ("em", "em", 6)
    assert list(m.parameters()) == [] and m.parameter_counts() == {"generator": 0}
    V = math.prod(GRID)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "generator.mask": GRID,
        "generator.mean": (V,),
        "generator.components": (5, V),
        "generator.weights": (3, 2),
        "generator.means": (3, 2, 5),
        "generator.cholesky": (3, 2, 5, 5),
        "generator.data_range": (2,),
        "generator.fitted": (),
    }


def test_gmm_unfitted_is_a_clear_error():
    m = build_model("gmm", shape=GRID, num_classes=3, n_components=5)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.sample(2, labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("covariance", ["full", "tied", "diag", "spherical"])
def test_gmm_samples_obey_their_labels(covariance):
    m, nll, x, y, patterns, inside = _fitted(covariance=covariance)
    assert math.isfinite(nll)
    labels = torch.arange(30) % 3
    s = m.sample(30, labels=labels, generator=torch.Generator().manual_seed(0)).numpy()[:, 0]
    class_means = np.stack([x[y == c, 0].mean(0) for c in range(3)])
    dist = ((s[:, None] - class_means[None]) ** 2).reshape(30, 3, -1).sum(-1)
    assert np.array_equal(dist.argmin(1), labels.numpy())
    # On the grid, clamped to the training range; outside the mask the training mean (0 here).
    assert s.shape == (30, *GRID)
    assert s.min() >= x.min() and s.max() <= x.max()
    mask = m.generator.mask.numpy()
    assert mask.sum() > 0 and not mask[~inside].any()
    assert np.all(s[:, ~mask] == x[:, 0].mean(0)[~mask])


def test_gmm_samples_are_reproducible_and_survive_a_state_dict_round_trip():
    m, *_ = _fitted()
    labels = torch.tensor([0, 1, 2, 2])
    a = m.sample(4, labels=labels, generator=torch.Generator().manual_seed(3))
    b = m.sample(4, labels=labels, generator=torch.Generator().manual_seed(3))
    c = m.sample(4, labels=labels, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    fresh = build_model(**m.config)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.sample(4, labels=labels, generator=torch.Generator().manual_seed(3)), a)
    # The fit itself is seeded: refitting gives the same buffers.
    again, *_ = _fitted()
    for (k, u), v in zip(m.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(u, v), k


def test_gmm_component_choice_follows_the_weights():
    g = GMMGenerator(GRID, num_classes=1, n_components=2, n_mixture=2)
    g.weights.copy_(torch.tensor([[0.25, 0.75]]))
    g.means.copy_(torch.tensor([[[-5.0, 0.0], [5.0, 0.0]]]))
    g.cholesky.zero_()  # no spread: each draw is its component's mean
    g.components[0, 0] = 1.0  # voxel 0 reads the first PCA score
    g.data_range.copy_(torch.tensor([-10.0, 10.0]))
    g.fitted.fill_(True)
    z = torch.zeros(4, 3)
    z[:, 0] = torch.tensor([-3.0, -0.7, -0.6, 3.0])  # Phi: 0.001, 0.242, 0.274, 0.999
    out = g(z, torch.zeros(4, dtype=torch.long)).flatten(1)[:, 0]
    assert out.tolist() == [-5.0, -5.0, 5.0, 5.0]


def test_gmm_fit_refuses_too_few_volumes():
    x, y, *_ = _separated(n_per_class=2)
    m = build_model("gmm", shape=GRID, num_classes=3, n_components=6, n_mixture=2)
    with pytest.raises(ValueError, match="n_components=6 PCA axes need at least 7 training volumes, got 6"):
        m.generator.fit(x, y)
    m = build_model("gmm", shape=GRID, num_classes=3, n_components=2, n_mixture=3)
    with pytest.raises(ValueError, match=r"class\(es\) \[0, 1, 2\] have \[2, 2, 2\] .* n_mixture=3"):
        m.generator.fit(x, y)
    m = build_model("gmm", shape=GRID, num_classes=4, n_components=2, n_mixture=1)
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] have \[0\]"):
        m.generator.fit(x, y)
    with pytest.raises(ValueError, match="expected volumes"):
        m.generator.fit(x[:, :, :4], y)
