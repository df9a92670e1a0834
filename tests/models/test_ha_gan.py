"""HA-GAN and alpha-HA-GAN (brainkern.models.ha_gan): shapes, exact slab-by-slab generation,
the halo, bad input, checkpointing, and parameter counts against King et al.'s networks."""

from __future__ import annotations

import pytest
import torch

from brainkern.data.subvolume import slab_starts
from brainkern.models import build_model
from brainkern.models.ha_gan import HAGenerator, check_ha_grid, low_resolution, slabs_at
from brainkern.nn.spectral_norm import spectral_norm_update

GRID = (64, 64, 64)  # the smallest grid: the low resolution (16^3) must suit King's SNDiscriminator
SMALL = {"shape": GRID, "latent_dim": 8, "width": 2}


def _model(name: str = "alpha-ha-gan", **kw):
    torch.manual_seed(0)
    extra = {"code_hidden": 16} if name == "alpha-ha-gan" else {}
    return build_model(name, **{**SMALL, **extra, **kw})


@pytest.fixture(scope="module")
def eval64():
    """An alpha-HA-GAN in float64 eval mode, codes, features and G^H on the whole feature volume."""
    torch.set_num_threads(1)
    model = _model().double().eval()
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = model.generator
    with torch.no_grad():
        h = g.features(z)
        whole = g.high_planes(h)
    return model, z, h, whole


def test_registry_family_loss_and_networks():
    ha, alpha = _model("ha-gan"), _model()
    assert (ha.family, ha.loss, alpha.family, alpha.loss) == ("ha", "standard", "alpha-ha", "standard")
    assert list(ha.networks()) == ["discriminator_high", "discriminator_low", "generator"]
    assert set(alpha.networks()) == set(ha.networks()) | {"encoder_low", "encoder_high", "code_discriminator"}
    assert not ha.conditional and ha.generator.sub_depth == 8 and ha.generator.halo == 2
    assert ha.config["sub_depth"] is None and build_model(**ha.config).generator.sub_depth == 8


def test_every_network_output_shape(eval64):
    model, z, h, whole = eval64
    g = model.generator
    n = z.shape[0]
    with torch.no_grad():
        assert h.shape == (n, 4, 16, 16, 16)
        assert g.low(h).shape == (n, 1, 16, 16, 16)
        assert whole.shape == (n, 1, *GRID)
        slab, low = g.forward_train(z, torch.tensor([0, 13, 56]))
        assert slab.shape == (n, 1, 8, 64, 64) and low.shape == (n, 1, 16, 16, 16)
        assert model.generate(z).shape == (n, 1, *GRID)
        assert model.discriminator_high(slab, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)).shape == (
            n,
            1,
        )
        assert model.discriminator_low(low).shape == (n, 1)
        assert model.encoder_high(slab).shape == (n, 4, 2, 16, 16)
        feats = model.encoder_high.encode_volume(whole)
        assert feats.shape == (n, 4, 16, 16, 16)
        assert model.encoder_low(feats).shape == (n, 8)
        assert model.code_discriminator(z).shape == (n, 1)
    float_model = _model("ha-gan")
    samples = float_model.sample(3, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert samples.shape == (3, 1, *GRID) and float_model.generator.training


def test_slab_by_slab_generation_equals_the_whole_feature_volume(eval64):
    """In float64 eval mode the assembled volume is G^H on all the features at once (up to the
    convolution backend's size-dependent summation order: about 1e-17)."""
    model, z, _, whole = eval64
    with torch.no_grad():
        volume = model.generate(z)
    assert (volume - whole).abs().max().item() < 1e-14
    assert volume.abs().max() > 0.01  # not a trivially constant volume


def test_every_start_crops_the_whole_volume_restriction(eval64):
    model, _, h, whole = eval64
    g = model.generator
    with torch.no_grad():
        for start in range(0, 64 - 8 + 1):  # aligned and unaligned starts, both volume ends
            slab = g.high_slab(h, start)
            assert (slab - whole[:, :, start : start + 8]).abs().max() < 1e-14, start
        starts = torch.tensor([1, 30, 56])  # one per sample
        slab = g.high_slab(h, starts)
        assert (slab - slabs_at(whole, starts, 8)).abs().max() < 1e-14


def test_the_halo_is_the_smallest_exact_one(eval64):
    """One feature plane less of context changes the slabs by O(1): the halo is needed."""
    model, _, h, whole = eval64
    g = model.generator
    try:
        g.halo = 1
        with torch.no_grad():
            err = max((g.high_slab(h, s) - whole[:, :, s : s + 8]).abs().max().item() for s in (8, 24, 40))
    finally:
        g.halo = 2
    assert err > 1e-3


def test_the_slab_starts_cover_every_plane_once():
    for shape, depth in (((64, 64, 64), 8), ((128, 64, 64), 16), ((256, 64, 64), 32), ((64, 64, 64), 16)):
        _, d = check_ha_grid(shape, depth)
        cover = torch.zeros(shape[0], dtype=torch.int64)
        for s in slab_starts(shape[0], d):
            cover[s : s + d] += 1
        assert torch.equal(cover, torch.ones_like(cover)), (shape, depth)


def test_encode_volume_is_the_concatenation_of_every_slab(eval64):
    model, _, _, whole = eval64
    e = model.encoder_high
    with torch.no_grad():
        feats = e.encode_volume(whole)
        parts = torch.cat([e(whole[:, :, s : s + 8]) for s in range(0, 64, 8)], dim=2)
    assert (feats - parts).abs().max() < 1e-13


def test_low_resolution_is_four_by_four_average_pooling():
    x = torch.arange(64.0**3).view(1, 1, 64, 64, 64)
    low = low_resolution(x)
    assert low.shape == (1, 1, 16, 16, 16)
    assert low[0, 0, 1, 2, 3] == x[0, 0, 4:8, 8:12, 12:16].mean()


def test_bad_grids_depths_conditioning_and_inputs_are_refused():
    with pytest.raises(ValueError, match="multiple of 64"):
        build_model("ha-gan", shape=(32, 32, 32), latent_dim=8, width=2)
    with pytest.raises(ValueError, match="sub_depth = 6 must be a multiple of 4 that divides"):
        build_model("ha-gan", **SMALL, sub_depth=6)
    with pytest.raises(ValueError, match="sub_depth = 24 must be a multiple of 4 that divides"):
        build_model("ha-gan", **SMALL, sub_depth=24)
    with pytest.raises(ValueError, match="ha-gan is unconditional"):
        build_model("ha-gan", **SMALL, conditioning="projection")
    with pytest.raises(TypeError):
        build_model("alpha-ha-gan", **SMALL, num_classes=2)
    g = HAGenerator(GRID, 8, 2)
    h = g.features(torch.randn(2, 8))
    with pytest.raises(ValueError, match="unconditional"):
        g(torch.randn(2, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes of shape \(N, 8\)"):
        g.features(torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"slab start must lie in \[0, 56\]"):
        g.high_slab(h, 57)
    with pytest.raises(ValueError, match=r"slab starts must lie in \[0, 56\]"):
        g.high_slab(h, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="one start per sample"):
        g.high_slab(h, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="features of shape"):
        g.low(h[:, :, :8])
    d = _model("ha-gan").discriminator_high
    with pytest.raises(ValueError, match="one position per slab"):
        d(torch.zeros(2, 1, 8, 64, 64), torch.zeros(3))
    with pytest.raises(ValueError, match=r"slabs of shape \(N, 1, 8, 64, 64\)"):
        d(torch.zeros(2, 1, 16, 64, 64), torch.zeros(2))


def test_checkpointing_gives_the_same_forward_and_gradients():
    torch.manual_seed(0)
    z = torch.randn(2, 8, dtype=torch.float64)
    starts = torch.tensor([5, 40])
    results = []
    for checkpoint in (False, True):
        model = _model(checkpoint=checkpoint).double()
        for net in (model.discriminator_high, model.discriminator_low):
            spectral_norm_update(net, forwards=None)  # as the recipe does: recomputation reuses sigma
        slab, low = model.generator.forward_train(z, starts)
        pos = starts.double() / 56
        score = model.discriminator_high(slab, pos).sum() + model.discriminator_low(low).sum()
        feats = model.encoder_high.encode_volume(torch.cat([slab] * 8, dim=2))
        score = score + model.encoder_low(feats).sum()
        score.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((slab.detach(), low.detach(), grads, model.state_dict()))
    (s0, l0, g0, b0), (s1, l1, g1, b1) = results
    assert torch.allclose(s0, s1, atol=1e-13) and torch.allclose(l0, l1, atol=1e-13)
    assert g0.keys() == g1.keys() and len(g0) > 20
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-11, rtol=1e-9), k
    for k in b0:  # BatchNorm running statistics counted once, also when recomputed
        assert torch.allclose(b0[k].double(), b1[k].double(), atol=1e-13), k


def test_parameter_counts_at_64_match_king_et_al_networks():
    """At 64^3, width 32, latent 1000: G^A + G^H is King et al.'s SN-GAN generator (25,681,600,
    their Fig. S2), E^H + E^L is Kwon et al.'s encoder as brainkern builds it (19,140,488; Fig. S4
    lists 19,140,936 with biases before BatchNorm), D^L King's discriminator at 16^3.

    Counts (``describe()``): ha-gan generator 25,737,825 (G^L 56,225), discriminator_high
    2,264,161, discriminator_low 2,755,297; alpha-ha-gan adds encoder_high 133,280, encoder_low
    19,007,208 and code_discriminator 6,244,352 (Fig. S5's 6,244,353 counts one more).
    """
    torch.set_num_threads(1)
    alpha = build_model("alpha-ha-gan")
    counts = alpha.parameter_counts()
    g = alpha.generator
    g_low = sum(p.numel() for p in g.low_res.parameters())
    assert g_low == 2 * 64 * 32 * 27 // 2 + 2 * 32 + 32 * 27 + 1  # conv 64->32, BN, conv 32->1 + bias
    king = build_model("sn-gan", shape=GRID).parameter_counts()
    assert counts["generator"] - g_low == king["generator"] == 25_681_600
    kwon = build_model("alpha-wgan-gp", shape=GRID, width=32).parameter_counts()
    assert counts["encoder_high"] + counts["encoder_low"] == kwon["encoder"] == 19_140_488
    assert counts["discriminator_low"] == sum(
        p.numel() for p in build_model("sn-gan", shape=(16, 16, 16)).discriminator.parameters()
    )
    assert counts == {
        "discriminator_high": 2_264_161,
        "discriminator_low": 2_755_297,
        "generator": 25_737_825,
        "encoder_low": 19_007_208,
        "encoder_high": 133_280,
        "code_discriminator": 6_244_352,
    }
