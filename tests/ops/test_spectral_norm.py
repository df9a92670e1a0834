"""spectral_norm_step and spectral_normalize: every backend against the reference and torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from brainkern.ops import (
    BackendError,
    spectral_norm_step,
    spectral_norm_step_reference,
    spectral_normalize,
    use_backend,
)
from brainkern.ops._backend import interpreter_enabled
from tests.guards import poisoned_outputs

# float32: sigma and the vectors are sums of up to ~10^3 products, normalised; the
# fast backends accumulate in double, but the float32 reference (torch.mv) does not.
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-6, rtol=2e-5)}
# Against a float64 reference the fast backends' float32 results differ only by their
# final rounding (half an ulp, 2^-24 relative); twice that leaves room for the
# float64 sums' own ~1e-16 differences pushing a value across a rounding boundary.
F32_VS_F64 = dict(atol=0.0, rtol=2.0**-23)

CASES = {
    "7x5": [(7, 5)],
    "1x17": [(1, 17)],
    "64x81": [(64, 27 * 3)],
    "mixed5": [(7, 5), (1, 17), (64, 81), (33, 1), (20, 130)],
    # More layers than one CUDA launch group (24), odd widths past a 16-byte pack.
    "30layers": [(1 + (3 * i) % 11, 1 + (7 * i) % 19) for i in range(30)],
}


def _make(shapes, dtype, device, strided=False):
    ws, us, vs = [], [], []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f + (3 if strided else 0), dtype=dtype, device=device)
        ws.append(w[:, :in_f] if strided else w)
        us.append(F.normalize(torch.randn(out_f, dtype=dtype, device=device), dim=0))
        vs.append(F.normalize(torch.randn(in_f, dtype=dtype, device=device), dim=0))
    return ws, us, vs


def _clone(xs):
    return [x.clone() for x in xs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_reference(backend_device, case, dtype):
    backend, device = backend_device
    ws, us, vs = _make(CASES[case], dtype, device, strided=case == "mixed5")
    us_ref, vs_ref = _clone(us), _clone(vs)
    with use_backend(backend):
        sigma = spectral_norm_step(ws, us, vs)
    ref = spectral_norm_step_reference(ws, us_ref, vs_ref)
    assert sigma.shape == (len(ws),) and sigma.dtype == dtype
    torch.testing.assert_close(sigma, ref, **TOL[dtype])
    for got, want in zip(us + vs, us_ref + vs_ref, strict=True):
        torch.testing.assert_close(got, want, **TOL[dtype])
    # The fused identity: sigma = u . (W v) with the updated vectors.
    for w, u, v, s in zip(ws, us, vs, sigma, strict=True):
        torch.testing.assert_close(s, torch.vdot(u, w @ v), **TOL[dtype])


def test_reference_is_torch_parametrization_step():
    w = torch.randn(9, 4, 2, dtype=torch.float64)
    module = torch.nn.Linear(8, 9).double()
    module.weight.data.copy_(w.reshape(9, 8))
    torch.nn.utils.parametrizations.spectral_norm(module)
    sn = module.parametrizations.weight[0]
    u, v = sn._u.clone(), sn._v.clone()
    out = module.weight  # training mode: one power iteration
    sigma = spectral_norm_step_reference([w.reshape(9, 8)], [u], [v])
    torch.testing.assert_close(u, sn._u, atol=0, rtol=0)
    torch.testing.assert_close(v, sn._v, atol=0, rtol=0)
    torch.testing.assert_close(out, w.reshape(9, 8) / sigma[0], atol=0, rtol=0)


def test_sigma_converges_to_matrix_norm(backend_device):
    backend, device = backend_device
    # Spectral gap 5 : 2, so the error shrinks by (2/5)^2 per step.
    q1, _ = torch.linalg.qr(torch.randn(11, 11, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    s = torch.tensor([5.0, 2.0, 1.5, 1.0, 0.5, 0.1], dtype=torch.float64)
    w1 = (q1[:, :6] * s) @ q2.T
    w2 = torch.randn(3, 40, dtype=torch.float64)
    ws = [w1.to(device), w2.to(device)]
    us = [F.normalize(torch.randn(w.shape[0], dtype=torch.float64), dim=0).to(device) for w in ws]
    vs = [F.normalize(torch.randn(w.shape[1], dtype=torch.float64), dim=0).to(device) for w in ws]
    with use_backend(backend):
        for _ in range(60):
            sigma = spectral_norm_step(ws, us, vs)
    want = torch.stack([torch.linalg.matrix_norm(w, 2) for w in ws])
    torch.testing.assert_close(sigma, want, atol=1e-8, rtol=1e-8)


def test_zero_weight_gives_zero_like_torch(backend_device):
    backend, device = backend_device
    ws, us, vs = _make([(4, 6), (3, 5)], torch.float64, device)
    ws[0].zero_()
    us_ref, vs_ref = _clone(us), _clone(vs)
    with use_backend(backend):
        sigma = spectral_norm_step(ws, us, vs)
    ref = spectral_norm_step_reference(ws, us_ref, vs_ref)
    assert sigma[0].item() == 0.0 and ref[0].item() == 0.0
    assert not us[0].any() and not vs[0].any()
    torch.testing.assert_close(sigma, ref, **TOL[torch.float64])


def test_non_contiguous_vectors_are_updated_in_place(backend_device):
    backend, device = backend_device
    w = torch.randn(5, 7, dtype=torch.float64, device=device)
    ubuf = torch.randn(10, dtype=torch.float64, device=device)
    vbuf = torch.randn(14, dtype=torch.float64, device=device)
    u, v = ubuf[::2], vbuf[1::2]
    u_ref, v_ref = u.clone(), v.clone()
    with use_backend(backend):
        sigma = spectral_norm_step([w], [u], [v])
    ref = spectral_norm_step_reference([w], [u_ref], [v_ref])
    torch.testing.assert_close(sigma, ref, **TOL[torch.float64])
    torch.testing.assert_close(ubuf[::2], u_ref, **TOL[torch.float64])
    torch.testing.assert_close(vbuf[1::2], v_ref, **TOL[torch.float64])


def test_bad_inputs_name_the_layer():
    ws, us, vs = _make([(4, 6), (3, 5), (2, 2)], torch.float32, "cpu")
    with pytest.raises(ValueError, match="3 weights, 2 us and 3 vs"):
        spectral_norm_step(ws, us[:2], vs)
    with pytest.raises(ValueError, match="no layers"):
        spectral_norm_step([], [], [])
    with pytest.raises(ValueError, match=r"layer 1: u must have shape \(3,\)"):
        spectral_norm_step(ws, [us[0], torch.zeros(4), us[2]], vs)
    with pytest.raises(ValueError, match=r"layer 2: v must have shape \(2,\)"):
        spectral_norm_step(ws, us, [vs[0], vs[1], torch.zeros(3)])
    with pytest.raises(ValueError, match="layer 1: weight must be a 2D matrix"):
        spectral_norm_step([ws[0], torch.zeros(3, 5, 1), ws[2]], us, vs)
    with pytest.raises(TypeError, match="layer 2: v has dtype torch.float64"):
        spectral_norm_step(ws, us, [vs[0], vs[1], vs[2].double()])
    with pytest.raises(ValueError, match="layer 1: weight is on meta"):
        spectral_norm_step([ws[0], ws[1].to("meta"), ws[2]], us, vs)
    with pytest.raises(TypeError, match="list of tensors"):
        spectral_norm_step(ws[0], us, vs)


def test_forced_backend_declines_half_precision():
    ws, us, vs = _make([(4, 6)], torch.float16, "cpu")
    with use_backend("cpu"), pytest.raises(BackendError, match="float16"):
        spectral_norm_step(ws, us, vs)


def _sigma_of(w, u, v):
    return torch.vdot(u, w.reshape(w.shape[0], -1) @ v)


def test_spectral_normalize_gradients_match_torch():
    w = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    u = F.normalize(torch.randn(5, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(12, dtype=torch.float64), dim=0)
    sigma = spectral_norm_step([w.detach().reshape(5, 12)], [u], [v])[0]
    g = torch.randn_like(w)
    (grad,) = torch.autograd.grad(spectral_normalize(w, sigma, u, v), w, g)
    (want,) = torch.autograd.grad(w / _sigma_of(w, u, v), w, g)
    torch.testing.assert_close(grad, want, **TOL[torch.float64])


def test_spectral_normalize_gradcheck_and_gradgradcheck():
    u = F.normalize(torch.randn(4, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(6, dtype=torch.float64), dim=0)

    def fn(w):
        # sigma is recomputed for each perturbed w so that numerical and analytical
        # derivatives describe the same function w / (u . W v).
        return spectral_normalize(w, _sigma_of(w, u, v).detach(), u, v)

    w = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (w,))
    assert torch.autograd.gradgradcheck(fn, (w,))


def test_spectral_normalize_rejects_mismatched_vectors():
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"expected u \(4,\), v \(6,\)"):
        spectral_normalize(w, torch.tensor(1.0), torch.zeros(5), torch.zeros(6))


# ----------------------------------------------------------------------------- determinism and precision


def _fast_backends(backend_device):
    backend, device = backend_device
    if backend == "reference":
        pytest.skip("the reference is plain torch (float32 sums in float32, torch's own ordering)")
    return backend, device


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_repeated_calls_are_bit_identical(backend_device, dtype):
    """No atomics: the same inputs give the same bits, with or without deterministic mode."""
    backend, device = _fast_backends(backend_device)
    ws, us, vs = _make(CASES["mixed5"] + [(40, 300)], dtype, device)
    results = []
    for deterministic in (False, True, False):
        u_run, v_run = _clone(us), _clone(vs)
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            with use_backend(backend):
                sigma = spectral_norm_step(ws, u_run, v_run)
        finally:
            torch.use_deterministic_algorithms(previous)
        results.append([sigma, *u_run, *v_run])
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            assert torch.equal(got, want)


def test_float32_matches_float64_reference_to_rounding(backend_device):
    """float32 weights are summed in float64: only the final rounding differs from float64."""
    backend, device = _fast_backends(backend_device)
    # Wide rows (10^3 to 4x10^3 terms): torch's float32 path is off by 1e-7 to 3e-3
    # relative here (small components of v), 10^2 to 10^5 times this tolerance.
    ws, us, vs = _make([(40, 1000), (9, 4096), (3, 7)], torch.float32, device)
    ws64, us64, vs64 = ([x.double() for x in xs] for xs in (ws, us, vs))
    with use_backend(backend):
        sigma = spectral_norm_step(ws, us, vs)
    ref = spectral_norm_step_reference(ws64, us64, vs64)
    torch.testing.assert_close(sigma.double(), ref, **F32_VS_F64)
    for got, want in zip(us + vs, us64 + vs64, strict=True):
        torch.testing.assert_close(got.double(), want, **F32_VS_F64)


# ----------------------------------------------------------------------------- Triton kernels, small blocks

triton_only = pytest.mark.skipif(
    not interpreter_enabled(), reason="triton on the CPU needs TRITON_INTERPRET=1"
)


@pytest.fixture
def kmod():
    import brainkern.kernels.spectral_norm as kmod  # noqa: PLC0415

    return kmod


@pytest.fixture
def small_blocks(kmod, monkeypatch):
    """Block sizes that make every loop of every kernel run several times on tiny shapes."""
    monkeypatch.setattr(kmod, "_BLOCK_R", 2)  # rows per main program
    monkeypatch.setattr(kmod, "_BLOCK_C", 4)  # columns per main tile
    monkeypatch.setattr(kmod, "_BLOCK_B", 2)  # partial rows per reduce tile
    monkeypatch.setattr(kmod, "_BLOCK_G", 4)  # columns per reduce/finalize program
    monkeypatch.setattr(kmod, "_BLOCK_F", 2)  # tile of the finalize loops
    kmod.layout_cache_clear()
    yield kmod
    kmod.layout_cache_clear()


# (9, 13): 5 row blocks (3 reduce tiles, 3 tiles of block sums), 4 column tiles per
# pass, 4 chunks (2 tiles of chunk sums), 5 tiles of u. Then a single row, a single
# column, and enough layers for many programs of every kernel.
SMALL_BLOCK_SHAPES = [(9, 13), (1, 3), (6, 1), (2, 9), (11, 4)] * 3


@triton_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_triton_small_blocks_match_reference_and_stay_in_bounds(small_blocks, dtype):
    kmod = small_blocks
    shapes = SMALL_BLOCK_SHAPES
    n_blk, n_chk = -(-shapes[0][0] // kmod._BLOCK_R), -(-shapes[0][1] // kmod._BLOCK_G)
    assert n_blk > kmod._BLOCK_B and n_blk > kmod._BLOCK_F and n_chk > kmod._BLOCK_F
    assert shapes[0][1] > kmod._BLOCK_C and shapes[0][0] > kmod._BLOCK_F
    ws, us0, vs0 = _make(shapes, dtype, "cpu", strided=True)
    us_ref, vs_ref = _clone(us0), _clone(vs0)
    with poisoned_outputs(kmod) as guard:
        # u and v are written in place: give them poisoned margins too.
        us = [guard.allocate(tuple(u.shape), dtype, "cpu").copy_(u) for u in us0]
        vs = [guard.allocate(tuple(v.shape), dtype, "cpu").copy_(v) for v in vs0]
        with use_backend("triton"):
            sigma = spectral_norm_step(ws, us, vs)
    assert guard.count >= 6 + 2 * len(shapes)  # five workspaces, sigma, every u and v
    ref = spectral_norm_step_reference(ws, us_ref, vs_ref)
    torch.testing.assert_close(sigma, ref, **TOL[dtype])
    for got, want in zip(us + vs, us_ref + vs_ref, strict=True):
        torch.testing.assert_close(got, want, **TOL[dtype])


@triton_only
def test_triton_small_blocks_gradient_matches_torch(small_blocks):
    """``W / sigma`` from the Triton step has torch's parametrization gradient."""
    w = torch.randn(9, 2, 7, dtype=torch.float64, requires_grad=True)
    u = F.normalize(torch.randn(9, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(14, dtype=torch.float64), dim=0)
    u_ref, v_ref = u.clone(), v.clone()
    with use_backend("triton"):
        sigma = spectral_norm_step([w.detach().reshape(9, 14)], [u], [v])[0]
    spectral_norm_step_reference([w.detach().reshape(9, 14)], [u_ref], [v_ref])
    g = torch.randn_like(w)
    (grad,) = torch.autograd.grad(spectral_normalize(w, sigma, u, v), w, g)
    (want,) = torch.autograd.grad(w / _sigma_of(w, u_ref, v_ref), w, g)
    torch.testing.assert_close(grad, want, **TOL[torch.float64])


def test_vector_width_needs_aligned_rows_and_vectors(kmod):
    w = torch.randn(4, 16)
    v = torch.randn(16)
    assert kmod._vector_width([w], [v]) == 4
    assert kmod._vector_width([w.double()], [v.double()]) == 2
    assert kmod._vector_width([w[:, 1:]], [v[1:]]) == 1  # 4-byte shifted start
    assert kmod._vector_width([torch.randn(4, 18)[:, :16]], [v]) == 1  # row stride 18
    assert kmod._vector_width([w[:, :14]], [v[:14]]) == 1  # width 14


@triton_only
def test_triton_layout_cache_hits_for_repeated_calls(kmod):
    kmod.layout_cache_clear()
    ws, us, vs = _make([(5, 7), (3, 4)], torch.float32, "cpu")
    with use_backend("triton"):
        for _ in range(3):
            spectral_norm_step(ws, us, vs)
            spectral_norm_step(ws[:1], us[:1], vs[:1])
    info = kmod.layout_cache_info()
    assert (info.misses, info.hits) == (2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_step_never_synchronises(backend, kmod):
    """Neither a layout-cache miss nor a hit makes the host wait for the GPU."""
    ws, us, vs = _make([(64, 4096), (1, 8192), (7, 5)], torch.float32, "cuda")
    with use_backend(backend):
        spectral_norm_step(ws, us, vs)  # compiles the kernels
        kmod.layout_cache_clear()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):
                spectral_norm_step(ws, us, vs)
        finally:
            torch.cuda.set_sync_debug_mode("default")


# ----------------------------------------------------------------------------- Triton, compiled for sm_90

# Compiles kernels of brainkern.kernels.spectral_norm ahead of time for sm_90 (no GPU
# needed) and prints each one's REG/STACK/LOCAL usage as JSON. It runs in a child
# process without TRITON_INTERPRET, which changes how Triton builds kernel IR.
_AOT_CHILD = r"""
import json, re, subprocess, sys, tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import brainkern.kernels.spectral_norm as kmod

bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
usage = {}
for name, (kernel, signature, constexprs, num_warps) in json.loads(sys.argv[1]).items():
    jit = getattr(kmod, kernel)
    # Pointers 16-byte aligned, as torch allocates them and as a launch specialises on.
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    src = ASTSource(fn=jit, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        out = subprocess.run([str(bin_dir / "cuobjdump"), "-res-usage", str(cubin)],
                             capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    usage[name] = dict(zip(("REG", "STACK", "LOCAL"), map(int, found.groups())))
print(json.dumps(usage))
"""


def _triton_cuobjdump() -> bool:
    try:
        import triton  # noqa: PLC0415
    except ImportError:
        return False
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


@pytest.mark.skipif(not _triton_cuobjdump(), reason="triton's NVIDIA tools are missing")
def test_triton_kernels_compile_for_sm90_without_spills(kmod):
    builds = {}
    for dtype, vec in (("fp32", 4), ("fp64", 2)):
        ptr, f64, i64 = f"*{dtype}", "*fp64", "*i64"
        fwd_sig = dict(w_base=ptr, v_base=ptr, d_work=f64, partials=f64, d_sq=f64, meta=i64, blocks=i64)
        fwd_sig |= dict(BLOCK_R="constexpr", BLOCK_C="constexpr", VEC="constexpr")
        fin_sig = dict(u_base=ptr, v_base=ptr, d_work=f64, g_work=f64, d_sq=f64, g_sq=f64, meta=i64)
        fin_sig |= dict(chunks=i64, sigma=ptr, EPS="constexpr", BLOCK_G="constexpr", BLOCK_F="constexpr")
        for v in (1, vec):
            consts = dict(BLOCK_R=kmod._BLOCK_R, BLOCK_C=kmod._BLOCK_C, VEC=v)
            builds[f"fwd {dtype} VEC={v}"] = ("_spectral_norm_fwd_kernel", fwd_sig, consts, kmod._NUM_WARPS)
        consts = dict(EPS=1e-12, BLOCK_G=kmod._BLOCK_G, BLOCK_F=kmod._BLOCK_F)
        builds[f"finalize {dtype}"] = ("_spectral_norm_finalize_kernel", fin_sig, consts, 4)
    reduce_sig = dict(partials="*fp64", g_work="*fp64", g_sq="*fp64", meta="*i64", chunks="*i64")
    reduce_sig |= dict(BLOCK_B="constexpr", BLOCK_G="constexpr")
    consts = dict(BLOCK_B=kmod._BLOCK_B, BLOCK_G=kmod._BLOCK_G)
    builds["reduce"] = ("_spectral_norm_reduce_kernel", reduce_sig, consts, 4)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, "-c", _AOT_CHILD, json.dumps(builds)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    usage = json.loads(child.stdout.strip().splitlines()[-1])
    spilled = {name: u for name, u in usage.items() if u["STACK"] or u["LOCAL"]}
    assert not spilled, f"spills (stack/local memory) when compiled for sm_90: {usage}"
