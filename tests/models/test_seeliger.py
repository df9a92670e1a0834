"""Seeliger et al. (2018, seed 004): the ``seeliger-dcgan`` image prior and its latent sphere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from brainkern.models import GenerativeModel, build_model, model_names
from brainkern.models.seeliger import SeeligerDiscriminator, SeeligerModel, sphere

SMALL = {"latent_dim": 6, "width": 4, "d_width": 4}


def _small(side: int = 16, **extra) -> GenerativeModel:
    torch.manual_seed(0)
    return build_model("seeliger-dcgan", shape=(side, side), **{**SMALL, **extra})


def test_registered_as_a_standard_gan_with_its_own_prior():
    assert "seeliger-dcgan" in model_names("generative")
    m = _small()
    assert isinstance(m, SeeligerModel) and isinstance(m, GenerativeModel)
    assert (m.family, m.loss, m.channels, m.num_classes) == ("gan", "standard", 1, 0)
    assert list(m.networks()) == ["generator", "discriminator"]
    assert m.config == {
        "name": "seeliger-dcgan",
        "shape": [16, 16],
        "channels": 1,
        "latent_dim": 6,
        "width": 4,
        "d_width": 4,
        "input_noise": 0.15,
        "d_first_norm": True,
    }
    # the defaults are the paper's: 64x64 grey-scale, z of 50, 512 channels at 4x4, D from 32
    full = build_model("seeliger-dcgan").config
    assert (full["shape"], full["latent_dim"], full["width"], full["d_width"]) == ([64, 64], 50, 64, 32)


def test_rebuilt_from_its_config_with_the_same_class_weights_and_codes():
    # what load_run / brainkern.sample do: build_model(**config), then load the state dict
    m = _small()
    back = build_model(**m.config)
    assert type(back) is SeeligerModel
    back.load_state_dict(m.state_dict())
    z = back.sample_latent(5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(z.norm(dim=1), torch.ones(5))
    x1 = m.sample(5, generator=torch.Generator().manual_seed(3))
    x2 = back.sample(5, generator=torch.Generator().manual_seed(3), batch_size=2)
    assert x1.shape == (5, 1, 16, 16) and torch.equal(x1, x2)
    assert x1.abs().max() <= 1.0  # tanh


def test_parameter_counts_at_the_papers_size_by_hand():
    m = build_model("seeliger-dcgan")
    # G: 50*512*16 + 2*512 | 512*256*16 + 2*256 | 256*128*16 + 2*128 | 128*64*16 + 2*64 | 64*1*16 + 1
    g = 410_624 + 2_097_664 + 524_544 + 131_200 + 1_025
    # D: 1*32*9 + 2*32 | 32*64*16 + 2*64 | 64*128*16 + 2*128 | 128*256*16 + 2*256 | 256*8*8 + 1
    d = 352 + 32_896 + 131_328 + 524_800 + 16_385
    assert (g, d) == (3_165_057, 705_761)
    assert m.parameter_counts() == {"generator": g, "discriminator": d}


def test_the_generator_is_the_papers_layer_list():
    G = build_model("seeliger-dcgan").generator
    convs = [
        (c.in_channels, c.out_channels, c.kernel_size, c.stride)
        for c in G.modules()
        if isinstance(c, nn.ConvTranspose2d)
    ]
    # z -> 512 x 4 x 4 (the "linear" layer), then 256, 128, 64 and 1 channels, 4x4 stride 2
    assert convs == [
        (50, 512, (4, 4), (1, 1)),
        (512, 256, (4, 4), (2, 2)),
        (256, 128, (4, 4), (2, 2)),
        (128, 64, (4, 4), (2, 2)),
        (64, 1, (4, 4), (2, 2)),
    ]
    kinds = [type(c).__name__ for c in G.net]
    assert kinds == ["ConvTranspose2d", "BatchNorm2d", "ReLU"] * 4 + ["ConvTranspose2d", "Tanh"]
    G.eval()
    with torch.no_grad():
        x = G(sphere(torch.randn(2, 50)))
    assert x.shape == (2, 1, 64, 64) and x.abs().max() <= 1.0


def test_the_discriminator_is_the_papers_layer_list():
    D = build_model("seeliger-dcgan").discriminator
    convs = [
        (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding)
        for c in D.modules()
        if isinstance(c, nn.Conv2d)
    ]
    assert convs == [
        (1, 32, (3, 3), (1, 1), (1, 1)),
        (32, 64, (4, 4), (2, 2), (1, 1)),
        (64, 128, (4, 4), (2, 2), (1, 1)),
        (128, 256, (4, 4), (2, 2), (1, 1)),
    ]
    kinds = [type(c).__name__ for c in [*D.first, *D.body]]
    assert kinds == ["Conv2d", "BatchNorm2d", "ELU"] * 4
    assert (D.head.in_features, D.head.out_features) == (256 * 8 * 8, 1)
    assert D.input_noise == 0.15


@pytest.mark.parametrize("side", [16, 32, 64])
def test_shapes_and_features(side):
    m = _small(side)
    x = m.generate(m.sample_latent(3))
    assert x.shape == (3, 1, side, side)
    D = m.discriminator
    assert D(x).shape == (3, 1)
    assert D.features(x).shape == (3, 4, side, side)
    # in eval mode the logit is the rest of the network on exactly these features
    D.eval()
    with torch.no_grad():
        assert torch.equal(D(x), D.head(D.body(D.features(x)).flatten(1)))


def test_input_noise_in_training_mode_only():
    torch.manual_seed(0)
    D = SeeligerDiscriminator(16, width=4)
    seen: list[torch.Tensor] = []
    D.first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    D.train()
    a, b = D(x), D(x)
    assert not torch.equal(a, b)
    noise = seen[0] - x
    assert noise.std().item() == pytest.approx(0.15, rel=0.03)  # 16,384 draws: SE of the SD ~0.6%
    assert abs(noise.mean().item()) < 0.005
    D.eval()
    seen.clear()
    with torch.no_grad():
        c, d = D(x), D(x)
        f = D.features(x)
    assert torch.equal(c, d) and torch.equal(seen[0], x) and torch.equal(seen[-1], x)
    assert torch.equal(f, D.first(x))
    # no noise at all with input_noise=0, even while training
    quiet = SeeligerDiscriminator(16, width=4, input_noise=0.0)
    quiet.first.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    quiet(x)
    assert torch.equal(seen[-1], x)


def test_sample_latent_lies_on_the_sphere_image_of_the_cube():
    m = build_model("seeliger-dcgan")
    gen = torch.Generator().manual_seed(7)
    z = m.sample_latent(4000, generator=gen)
    assert z.dtype == torch.float32 and z.shape == (4000, 50)
    assert torch.allclose(z.norm(dim=1), torch.ones(4000), atol=1e-6)
    # by hand: uniform on [-1, 1]^50 (standard normal draws of the same generator through
    # 2 Phi(g) - 1 = erf(g / sqrt 2)), divided by its length
    g = torch.randn(4000, 50, generator=torch.Generator().manual_seed(7)).double()
    cube = torch.erf(g / 2**0.5)
    assert torch.allclose(z.double(), cube / cube.norm(dim=1, keepdim=True), atol=1e-6)
    # the cube's components are uniform: deciles of the unnormalised draws
    deciles = torch.quantile(cube.flatten(), torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    assert torch.allclose(deciles, torch.linspace(-0.8, 0.8, 9, dtype=torch.float64), atol=0.01)
    # the cube's shape shows in the largest component: E max|c_i| ~ 50/51 over |c| ~ sqrt(50/3),
    # about 0.242; normalised Gaussian codes (uniform on the sphere) give about 0.357
    top = z.abs().max(dim=1).values.mean().item()
    assert 0.23 < top < 0.255, top
    assert z.mean(0).abs().max() < 0.02  # symmetric components (SD of a mean ~ 0.14 / sqrt(4000))
    # deterministic with a seeded generator, different without
    again = m.sample_latent(4000, generator=torch.Generator().manual_seed(7))
    assert torch.equal(z, again)
    assert not torch.equal(m.sample_latent(3), m.sample_latent(3))
    # device keyword: the same codes (a CPU draw moved there); n = 0 is fine
    on_device = m.sample_latent(5, generator=torch.Generator().manual_seed(7), device="cpu")
    assert torch.equal(on_device, m.sample_latent(5, generator=torch.Generator().manual_seed(7)))
    assert m.sample_latent(0).shape == (0, 50)
    assert m.sample_latent(4, device="cpu").norm(dim=1).allclose(torch.ones(4))
    with pytest.raises(ValueError, match="n must be >= 0"):
        m.sample_latent(-1)


def test_sphere():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])
    assert torch.equal(sphere(z), torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]))
    batch = torch.randn(2, 3, 5)
    assert torch.allclose(sphere(batch).norm(dim=-1), torch.ones(2, 3))


def test_bad_inputs_are_refused_with_clear_messages():
    m = _small()
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 16, 16\), got \(2, 1, 32, 32\)"):
        m.discriminator(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expected images of shape"):
        m.discriminator.features(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match=r"expected z of shape \(N, 6\)"):
        m.generator(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="power of two"):
        build_model("seeliger-dcgan", shape=(48, 48))
    with pytest.raises(ValueError, match="square"):
        build_model("seeliger-dcgan", shape=(64, 32))
    with pytest.raises(ValueError, match="input_noise must be a finite number >= 0"):
        build_model("seeliger-dcgan", shape=(16, 16), input_noise=-0.1)
    with pytest.raises(ValueError, match="SeeligerDiscriminator: width must be >= 1"):
        build_model("seeliger-dcgan", shape=(16, 16), d_width=0)


@pytest.mark.parametrize(
    ("preset", "domain", "prior_images"), [("digits", "digits", 1437), ("natural", "natural", 3917)]
)
def test_presets_have_seeliger_et_als_settings(preset, domain, prior_images):
    from brainkern.train import config

    cfg = config.resolve(f"seeliger2018-prior-{preset}")
    model, data, train = cfg["model"], cfg["data"], cfg["train"]
    assert model == {"name": "seeliger-dcgan", "latent_dim": 50, "width": 64, "d_width": 32}
    assert data["cohort"] is None and data["images"]["domain"] == domain and data["images"]["size"] == 64
    assert data["flip"] is False and data["intensity"] is None
    assert data["images"]["stimuli"] == ([290, 70] if domain == "digits" else [1750, 50])
    assert data["images"]["mask"] is (domain == "natural")
    assert train["optimizer"] == "adam" and train["lr"] == 1e-4 and train["betas"] == [0.9, 0.999]
    assert train["grad_clip"] == 10 and train["feature_matching"] == 1.0 and train["loss"] is None
    assert (train["g_updates"], train["d_updates"], train["batch_size"]) == (1, 1, 64)
    # about 300 passes through the prior's images (the counts the presets' comments derive)
    assert 300 <= train["iters"] * train["batch_size"] / prior_images < 301


def test_d_first_norm_false_leaves_the_input_layer_unnormalised():
    m = _small(d_first_norm=False)
    first = m.discriminator.first
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in first)
    assert first[0].bias is not None  # no BatchNorm after it: the convolution keeps its bias
    assert isinstance(_small().discriminator.first[1], torch.nn.BatchNorm2d)
