"""Kwon et al. (2019) model family and the model registry."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import brainkern.models._checkpoint as ckpt
import brainkern.nn
from brainkern.models import GenerativeModel, build_model, model_names
from brainkern.models.kwon import CodeDiscriminator, Discriminator, Encoder, Generator
from brainkern.ops import gradient_penalty

KWON = ["alpha-gan", "alpha-wgan-gp", "vae-gan", "wgan-gp"]
SMALL = {"latent_dim": 8, "width": 4}


def _small(name: str, shape=(16, 16, 16), **extra) -> GenerativeModel:
    cfg = dict(SMALL, shape=shape, **extra)
    if name.startswith("alpha"):
        cfg.setdefault("code_hidden", 16)
    return build_model(name, **cfg)


# ---------------------------------------------------------------------------
# registry and construction


def test_registry_names_sorted_and_complete():
    names = model_names()
    assert names == sorted(names)
    assert set(KWON) <= set(names)


def test_import_is_cheap():
    code = (
        "import sys, brainkern.models; "
        "print(sorted(m for m in ('matplotlib', 'nilearn', 'nibabel', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 32, 16)], ids=["cube", "non-cubic"])
@pytest.mark.parametrize("name", KWON)
def test_build_and_shapes(name, shape):
    m = _small(name, shape)
    n, L = 3, SMALL["latent_dim"]
    assert m.name == name and m.shape == shape and m.latent_dim == L
    expected = {
        "alpha-wgan-gp": ("alpha", "wgan-gp"),
        "alpha-gan": ("alpha", "standard"),
        "wgan-gp": ("gan", "wgan-gp"),
        "vae-gan": ("vae-gan", "standard"),
    }[name]
    assert (m.family, m.loss) == expected
    order = {
        "alpha": ["encoder", "generator", "discriminator", "code_discriminator"],
        "gan": ["generator", "discriminator"],
        "vae-gan": ["encoder", "generator", "discriminator"],
    }[m.family]
    assert list(m.networks()) == order
    assert ("encoder" in m) == (m.family != "gan")
    assert ("code_discriminator" in m) == (m.family == "alpha")
    assert not m.conditional and m.num_classes == 0

    z = m.sample_latent(n)
    assert z.shape == (n, L) and z.dtype == torch.float32
    x = m.generate(z)
    assert x.shape == (n, 1, *shape)
    assert x.abs().max() <= 1.0
    assert m.discriminator(x).shape == (n, 1)
    if "encoder" in m:
        code = m.encoder(x)
        if m.family == "vae-gan":
            mu, logvar = code
            assert mu.shape == logvar.shape == (n, L)
        else:
            assert code.shape == (n, L)
    if "code_discriminator" in m:
        assert m.code_discriminator(z).shape == (n, 1)
    feats = m.discriminator.features(x)
    assert [f.shape[1] for f in feats] == [4, 8, 16, 32]
    assert feats[-1].shape[2:] == tuple(s // 16 for s in shape)


def test_generator_output_saturates_within_tanh_range():
    g = Generator((16, 16, 16), 8, width=4)
    with torch.no_grad():
        g.blocks[-1][0].weight.mul_(1e3)
    x = g(torch.randn(2, 8))
    assert x.abs().max() <= 1.0
    assert x.abs().max() > 0.99  # the scaled last layer does reach the tanh's tails


def test_variational_encoder():
    enc = Encoder((16, 32, 16), latent_dim=5, width=4, variational=True)
    mu, logvar = enc(torch.randn(2, 1, 16, 32, 16))
    assert mu.shape == logvar.shape == (2, 5)
    assert enc.head.out_channels == 10
    assert Encoder((16, 16, 16), latent_dim=5, width=4)(torch.randn(2, 1, 16, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("bad", [24, (16, 8, 16), (16, 16, 0), (32, 40, 32)])
@pytest.mark.parametrize("name", ["alpha-wgan-gp", "wgan-gp"])
def test_bad_grid(name, bad):
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model(name, shape=bad, **SMALL)


@pytest.mark.parametrize("cls", [Discriminator, Generator])
def test_bad_grid_networks(cls):
    args = (8,) if cls is Generator else ()
    with pytest.raises(ValueError, match=r"side H = 24 .*multiple of 16"):
        cls((16, 24, 16), *args)
    with pytest.raises(TypeError, match="3 ints"):
        cls((16, 16), *args)


def test_unknown_model_and_keyword():
    with pytest.raises(ValueError, match="alpha-wgan-gp") as err:
        build_model("alpha-wgan")
    assert all(name in str(err.value) for name in KWON)
    with pytest.raises(TypeError, match="'code_size'") as err:
        build_model("alpha-wgan-gp", code_size=10)
    assert "code_hidden" in str(err.value) and "latent_dim" in str(err.value)
    with pytest.raises(TypeError, match="'code_hidden'"):
        build_model("wgan-gp", code_hidden=10)  # only the alpha models have a code discriminator


def test_bad_inputs_at_call_time():
    m = _small("alpha-wgan-gp")
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16, 16\)"):
        m.discriminator(torch.randn(2, 1, 16, 16, 32))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        m.generator(torch.randn(2, 9))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        m.code_discriminator(torch.randn(2, 8, 1))
    with pytest.raises(ValueError, match="batch_size"):
        m.sample(2, batch_size=0)


def test_config_rebuilds_same_model():
    torch.manual_seed(3)
    a = _small("alpha-wgan-gp", (16, 32, 16), negative_slope=0.1)
    cfg = json.loads(json.dumps(a.config))  # JSON-able, and survives the round trip
    assert cfg == a.config
    assert cfg["name"] == "alpha-wgan-gp" and cfg["shape"] == [16, 32, 16]
    assert set(cfg) == {
        "name",
        "shape",
        "latent_dim",
        "width",
        "checkpoint",
        "gradfix",
        "negative_slope",
        "code_hidden",
    }
    torch.manual_seed(3)
    b = build_model(**cfg)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key
    assert b.discriminator.blocks[0][1].negative_slope == 0.1
    torch.manual_seed(4)
    c = build_model(**cfg)
    assert not torch.equal(c.generator.blocks[0][0].weight, a.generator.blocks[0][0].weight)


def _conv(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k + (c_out if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # weight and bias; running statistics are buffers


def _conv_stack_count(w: int, out: int) -> int:
    # 1 -> w (bias, no norm); w -> 2w -> 4w -> 8w (no bias, BatchNorm); 8w -> out over 4^3 with bias.
    return (
        _conv(1, w, 64, True)
        + _conv(w, 2 * w, 64, False)
        + _bn(2 * w)
        + _conv(2 * w, 4 * w, 64, False)
        + _bn(4 * w)
        + _conv(4 * w, 8 * w, 64, False)
        + _bn(8 * w)
        + _conv(8 * w, out, 64, True)
    )


@pytest.fixture(scope="module")
def paper_models():
    return {name: build_model(name) for name in ("alpha-wgan-gp", "vae-gan")}


def test_paper_parameter_counts(paper_models):
    w, L, hidden = 64, 1000, 4096
    generator = (
        L * 8 * w * 4 * 4 * 4  # linear to (8w, 4, 4, 4), no bias
        + _bn(8 * w)
        + _conv(8 * w, 4 * w, 27, False)
        + _bn(4 * w)
        + _conv(4 * w, 2 * w, 27, False)
        + _bn(2 * w)
        + _conv(2 * w, w, 27, False)
        + _bn(w)
        + _conv(w, 1, 27, True)
    )
    code = (L * hidden + hidden) + _bn(hidden) + (hidden * hidden + hidden) + _bn(hidden) + (hidden + 1)
    expected = {
        "encoder": _conv_stack_count(w, L),
        "generator": generator,
        "discriminator": _conv_stack_count(w, 1),
        "code_discriminator": code,
    }
    # The figures by hand too, so a slip in the helpers above cannot hide.
    assert expected["generator"] == 37_416_513
    assert expected["discriminator"] == 11_048_769
    m = paper_models["alpha-wgan-gp"]
    assert m.config["shape"] == [64, 64, 64] and m.latent_dim == 1000
    assert m.parameter_counts() == expected
    text = m.describe()
    for key, value in expected.items():
        assert f"{value:,}" in text and key in text
    assert f"{sum(expected.values()):,}" in text.splitlines()[-1]
    assert text.splitlines()[-1].startswith("total")

    v = paper_models["vae-gan"]
    assert v.parameter_counts() == {
        "encoder": _conv_stack_count(w, 2 * L),
        "generator": generator,
        "discriminator": expected["discriminator"],
    }


# ---------------------------------------------------------------------------
# sampling


def test_sample_deterministic_cpu_float32_and_restores_mode():
    m = _small("wgan-gp")
    m.train()
    a = m.sample(5, generator=torch.Generator().manual_seed(7), batch_size=2)
    b = m.sample(5, generator=torch.Generator().manual_seed(7), batch_size=2)
    assert a.shape == (5, 1, 16, 16, 16) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert not a.requires_grad
    assert torch.equal(a, b)
    assert m.generator.training
    c = m.sample(5, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)

    one = m.sample(5, generator=torch.Generator().manual_seed(7), batch_size=5)
    torch.testing.assert_close(a, one, rtol=1e-5, atol=1e-6)
    # Eval mode for real: with batch statistics the first batch of 2 would differ.
    m.generator.eval()
    z = m.sample_latent(5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(m.generate(z), one, rtol=1e-5, atol=1e-6)
    assert not m.generator.training
    m.sample(1)
    assert not m.generator.training

    assert m.sample(0).shape == (0, 1, 16, 16, 16)


def test_sample_restores_mode_on_error(monkeypatch):
    m = _small("wgan-gp")
    m.train()

    def boom(z, labels=None):
        assert not m.generator.training and not torch.is_grad_enabled()
        raise RuntimeError("boom")

    monkeypatch.setattr(m, "generate", boom)
    with pytest.raises(RuntimeError, match="boom"):
        m.sample(3)
    assert m.generator.training


def test_sample_latent_reproducible():
    m = _small("alpha-gan")
    a = m.sample_latent(4, generator=torch.Generator().manual_seed(1), device="cpu")
    b = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# gradient checkpointing


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    # None where a parameter gets no gradient (the critic's last bias, in a penalty).
    return {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()}


def _stats(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: b.clone() for k, b in module.named_buffers()}


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        if a[key] is None or b[key] is None:
            assert a[key] is b[key], key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12, msg=key)


def _pair(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    net = net.double().train()
    twin = copy.deepcopy(net)
    twin.checkpoint = True
    return net, twin


def _run(net: nn.Module, inp: torch.Tensor, weight: torch.Tensor):
    inp = inp.clone().requires_grad_(True)
    out = net(inp)
    (out * weight).sum().backward()
    return out.detach(), inp.grad, _grads(net), _stats(net)


@pytest.fixture
def checkpoint_calls(monkeypatch) -> list[int]:
    """Counts the blocks that really went through ``torch.utils.checkpoint``."""
    calls: list[int] = []
    real = ckpt.checkpoint

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "checkpoint", spy)
    return calls


@pytest.mark.parametrize("which", ["generator", "discriminator", "encoder"])
def test_checkpoint_matches_plain(which, checkpoint_calls):
    shape, L = (16, 32, 16), 8
    net = {
        "generator": lambda: Generator(shape, L, width=4),
        "discriminator": lambda: Discriminator(shape, width=4),
        "encoder": lambda: Encoder(shape, L, width=4),
    }[which]()
    plain, ckpted = _pair(net)
    inp = torch.randn(3, L) if which == "generator" else torch.randn(3, 1, *shape)
    inp = inp.double()
    out_shape = plain(inp).shape
    plain.load_state_dict(ckpted.state_dict())  # undo the stats update of the shape probe
    weight = torch.randn(out_shape, dtype=torch.float64)

    before = _stats(plain)
    ref = _run(plain, inp, weight)
    assert checkpoint_calls == []
    got = _run(ckpted, inp, weight)
    assert len(checkpoint_calls) == (5 if which == "generator" else 4)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)  # outputs
    torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-12)  # input gradient
    _assert_same(got[2], ref[2])  # every parameter gradient
    _assert_same(got[3], ref[3])  # running statistics and num_batches_tracked
    assert not torch.equal(ref[3]["blocks.1.1.running_mean"], before["blocks.1.1.running_mean"])
    assert int(ref[3]["blocks.1.1.num_batches_tracked"]) == 1


def test_checkpoint_stats_test_can_fail(monkeypatch):
    """Without the frozen statistics during recomputation, the stats comparison above fails."""
    plain, ckpted = _pair(Discriminator((16, 16, 16), width=4))
    inp = torch.randn(3, 1, 16, 16, 16, dtype=torch.float64)
    weight = torch.randn(3, 1, dtype=torch.float64)
    ref = _run(plain, inp, weight)[3]
    monkeypatch.setattr(ckpt, "FrozenBatchNormStats", lambda norms: ckpt.contextlib.nullcontext())
    got = _run(ckpted, inp, weight)[3]
    assert int(got["blocks.1.1.num_batches_tracked"]) == 2
    assert not torch.allclose(got["blocks.1.1.running_mean"], ref["blocks.1.1.running_mean"])


def test_checkpoint_inactive_in_eval_and_no_grad(monkeypatch):
    calls = []
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **k: calls.append(1))
    d = Discriminator((16, 16, 16), width=4, checkpoint=True)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        d(x)
    d.eval()
    d(x)
    assert calls == []


def _penalty_run(d: nn.Module, real, fake, eps):
    d.zero_grad(set_to_none=True)
    penalty = gradient_penalty(d, real, fake, eps=eps)
    penalty.backward()
    return penalty.detach(), _grads(d), _stats(d)


def _gp_inputs(shape=(16, 16, 16), n=3):
    real = torch.rand(n, 1, *shape, dtype=torch.float64) * 2 - 1
    fake = torch.rand(n, 1, *shape, dtype=torch.float64) * 2 - 1
    eps = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)[:n]
    return real, fake, eps


def test_checkpoint_gradient_penalty_matches_plain(checkpoint_calls):
    plain, ckpted = _pair(Discriminator((16, 16, 16), width=4))
    real, fake, eps = _gp_inputs()
    ref = _penalty_run(plain, real, fake, eps)
    got = _penalty_run(ckpted, real, fake, eps)
    assert len(checkpoint_calls) == 4
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
    assert ref[0] > 0
    _assert_same(got[1], ref[1])
    # The penalty reaches every weight; not the last bias (a constant shift of D), and
    # the last BatchNorm's shift only through LeakyReLU's mask (zero second derivative).
    assert [k for k, g in ref[1].items() if g is None] == ["head.bias"]
    assert all(g.abs().sum() > 0 for k, g in ref[1].items() if k.endswith("weight"))
    _assert_same(got[2], ref[2])
    assert int(ref[2]["blocks.1.1.num_batches_tracked"]) == 1


@pytest.mark.parametrize("checkpoint", [False, True])
def test_gradfix_same_penalty_gradients(checkpoint):
    torch.manual_seed(5)
    base = Discriminator((16, 32, 16), width=4, checkpoint=checkpoint).double()
    fixed = Discriminator((16, 32, 16), width=4, checkpoint=checkpoint, gradfix=True).double()
    fixed.load_state_dict(base.state_dict())
    convs = [m for m in fixed.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 5 and all(isinstance(m, brainkern.nn.Conv3d) for m in convs)
    assert not any(isinstance(m, brainkern.nn.Conv3d) for m in base.modules())
    real, fake, eps = _gp_inputs((16, 32, 16))
    ref = _penalty_run(base, real, fake, eps)
    got = _penalty_run(fixed, real, fake, eps)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
    _assert_same(got[1], ref[1])
    _assert_same(got[2], ref[2])


def test_registered_flags_reach_networks():
    m = _small("alpha-wgan-gp", checkpoint=True, gradfix=True)
    assert m.generator.checkpoint and m.discriminator.checkpoint and m.encoder.checkpoint
    assert m.discriminator.gradfix
    assert isinstance(m.discriminator.head, brainkern.nn.Conv3d)
    # The code discriminator and the encoder never sit inside the image penalty.
    assert not m.encoder.gradfix
    assert isinstance(m.code_discriminator, CodeDiscriminator)


def test_code_discriminator_layers_are_the_authors():
    """Kwon et al.'s code: Linear, BatchNorm1d, LeakyReLU(0.2) twice, then Linear(h, 1)."""
    c = CodeDiscriminator(latent_dim=6, hidden=10)
    layers = list(c.layers)
    assert [type(m) for m in layers] == [
        nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Linear
    ]  # fmt: skip
    sizes = [(m.in_features, m.out_features, m.bias is not None) for m in layers if isinstance(m, nn.Linear)]
    assert sizes == [(6, 10, True), (10, 10, True), (10, 1, True)]
    assert [m.num_features for m in layers if isinstance(m, nn.BatchNorm1d)] == [10, 10]
    assert [m.negative_slope for m in layers if isinstance(m, nn.LeakyReLU)] == [0.2, 0.2]
    # The default hidden width is the authors' notebook's 4096.
    assert CodeDiscriminator(latent_dim=3).hidden == 4096


def test_a_code_discriminator_of_the_old_layout_does_not_load():
    m = _small("alpha-wgan-gp")
    state = m.state_dict()
    # The earlier layout: Linear, LeakyReLU, Linear, BatchNorm1d, LeakyReLU, Linear (indices 0..5).
    h, L = m.code_discriminator.hidden, m.latent_dim
    old = {k: v for k, v in state.items() if not k.startswith("code_discriminator.")}
    old.update(
        {
            "code_discriminator.layers.0.weight": torch.zeros(h, L),
            "code_discriminator.layers.0.bias": torch.zeros(h),
            "code_discriminator.layers.2.weight": torch.zeros(h, h),
            "code_discriminator.layers.2.bias": torch.zeros(h),
            **{f"code_discriminator.layers.3.{k}": v for k, v in nn.BatchNorm1d(h).state_dict().items()},
            "code_discriminator.layers.5.weight": torch.zeros(1, h),
            "code_discriminator.layers.5.bias": torch.zeros(1),
        }
    )
    with pytest.raises(
        RuntimeError, match="code_discriminator: this state dict has the code discriminator layout"
    ):
        m.load_state_dict(old)
    m.load_state_dict(state)  # the current layout loads
