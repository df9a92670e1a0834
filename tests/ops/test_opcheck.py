"""``torch.library.opcheck`` on every op in the ``brainkern`` namespace, on each backend here.

Two kinds of op live there:

- the extension's C++ ops (``csrc/``), whose fake kernels give a traced graph their
  outputs' shapes, dtypes and strides (Python, declared in the op modules with
  ``extension_fake``; C++ meta kernels for the pixel shuffle);
- the custom ops of ``brainkern/ops/*.py``, which choose a backend when they run and
  which ``torch.compile`` sees instead of the dispatch.

opcheck runs an op for real and on fake tensors and compares the outputs' metadata,
checks the schema's claims (what is mutated, nothing aliased) against what the op
does, and runs the op and its backward under AOT autograd with dynamic shapes against
eager. It raises on the first failure; each call's result is asserted as well.

Every op registered in the namespace must have a case here
(``test_every_op_has_a_case``), so a new op cannot go unchecked. Shapes are tiny:
the Triton interpreter runs every kernel launch of opcheck's several runs.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F

from brainkern.ops import BACKENDS, backends, no_weight_gradients, use_backend
from brainkern.ops.resize_conv3d import (
    fold_resize_conv_weight,
    fold_resize_conv_weight_transposed,
    use_resize_conv_impl,
)
from tests.guards import poisoned_outputs

# The op modules (brainkern.ops.<name> as an attribute is often the function of that name).
ps = importlib.import_module("brainkern.ops.pixel_shuffle3d")
gp = importlib.import_module("brainkern.ops.gradient_penalty")
sn = importlib.import_module("brainkern.ops.spectral_norm")
cg = importlib.import_module("brainkern.ops.conv3d_gradfix")
rc = importlib.import_module("brainkern.ops.resize_conv3d")
mm = importlib.import_module("brainkern.ops.mmd")
da = importlib.import_module("brainkern.ops.diff_augment3d")

NAMESPACE = "brainkern"
# float64 for the custom ops: opcheck's AOT comparison of gradients is then exact.
F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)


def _opcheck(op, args, test_utils=None) -> None:
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    result = torch.library.opcheck(op, args, **kwargs)  # raises on a failed check
    assert set(result.values()) == {"SUCCESS"}, result


# A poisoned output is a view at an offset into a larger buffer, which opcheck's
# fake-tensor comparison rightly reports as metadata no fake kernel describes: that
# check runs unpoisoned, the others (which run the kernels) inside the margins.
_FAKE_CHECK = ("test_faketensor",)
_RUN_CHECKS = ("test_schema", "test_autograd_registration", "test_aot_dispatch_dynamic")
_TRITON_MODULES = (
    "pixel_shuffle3d",
    "gradient_penalty",
    "spectral_norm",
    "resize_conv3d",
    "mmd",
    "diff_augment3d",
)


def _opcheck_on(backend: str, op, args) -> None:
    if backend != "triton":
        _opcheck(op, args)
        return
    _opcheck(op, args, _FAKE_CHECK)
    with contextlib.ExitStack() as stack:
        for name in _TRITON_MODULES:
            stack.enter_context(poisoned_outputs(importlib.import_module(f"brainkern.kernels.{name}")))
        _opcheck(op, args, _RUN_CHECKS)


def _unit(n: int, dtype=F64) -> torch.Tensor:
    return F.normalize(torch.randn(n, dtype=dtype), dim=0)


def _on(backend: str) -> contextlib.AbstractContextManager:
    """Force ``backend`` (``"cudnn"``: resize_conv3d's implementation on ATen's convolutions)."""
    return use_resize_conv_impl("cudnn") if backend == "cudnn" else use_backend(backend)


def _code(backend: str) -> int:
    return BACKENDS.index(backend)


# --------------------------------------------------------------------------- custom ops
# Each case: (device, backend) -> the argument tuples to check the op with, under that
# backend. Inputs that require grad make opcheck compare gradients too.


def _shuffle_cases(device, backend):
    x = torch.randn(1, 8, 2, 3, 1, dtype=F64, device=device, requires_grad=True)
    return [(x, 2, -1), (x.detach()[:, :, :, :2], 2, _code(backend))]  # a strided input too


def _unshuffle_cases(device, backend):
    return [(torch.randn(1, 1, 4, 2, 6, dtype=F64, device=device, requires_grad=True), 2, -1)]


def _interp_cases(device, backend):
    real = torch.randn(3, 2, 5, dtype=F64, device=device, requires_grad=True)
    fake = torch.randn(3, 2, 5, dtype=F64, device=device, requires_grad=True)
    eps = torch.rand(3, dtype=F64, device=device)
    cases = [(real, fake, eps, False, -1)]
    if backend == "reference":  # only the reference differentiates with respect to eps
        cases.append((real, fake, eps.clone().requires_grad_(True), True, -1))
    return cases


def _interp_backward_cases(device, backend):
    g = torch.randn(3, 2, 5, dtype=F64, device=device, requires_grad=True)
    return [(g, torch.rand(3, dtype=F64, device=device), _code(backend))]


def _norm_cases(device, backend):
    grad = torch.randn(3, 2, 5, dtype=F64, device=device, requires_grad=True)
    return [(grad, 10.0, 1.0, mode, -1) for mode in gp.MODES.values()]


def _norm_backward_cases(device, backend):
    grad = torch.randn(3, 2, 5, dtype=F64, device=device, requires_grad=True)
    norms = torch.linalg.vector_norm(grad.detach().flatten(1), dim=1)
    dpen = torch.tensor(1.5, dtype=F64, device=device, requires_grad=True)
    return [(dpen, grad, norms, 10.0, 0.9, 1, _code(backend))]


def _spectral_norm_cases(device, backend):
    weights = [torch.randn(4, 6, dtype=F64, device=device), torch.randn(3, 5, dtype=F64, device=device)]
    us = [_unit(4).to(device), _unit(3).to(device)]
    vs = [_unit(6).to(device), _unit(5).to(device)]
    return [(weights, us, vs, 1e-12)]


def _resize_inputs(device):
    x = torch.randn(1, 2, 2, 3, 2, dtype=F64, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, 3, dtype=F64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=F64, device=device, requires_grad=True)
    return x, w, b


def _acts(backend):
    # leaky_relu (the 1-byte mask) and tanh (the saved output); one under the interpreter.
    return (2,) if backend == "triton" else (0, 2, 3)


def _resize_cases(device, backend):
    x, w, b = _resize_inputs(device)
    return [(x, w, None if act == 3 else b, act, 0.2) for act in _acts(backend)]


def _resize_backward_cases(device, backend):
    x, w, b = (t.detach() for t in _resize_inputs(device))
    cases = []
    for act in _acts(backend):
        y, mask, code = rc._resize_conv_op(x, w, b, act, 0.2)
        saved = None if act == 0 else (y if act == 3 else mask)
        for needs in ((True, True, True), (False, True, False)):
            cases.append((torch.randn_like(y), saved, x, w, act, 0.2, code, *needs))
    return cases


def _mmd_inputs(device):
    x3 = torch.randn(2, 3, 7, dtype=F64, device=device, requires_grad=True)
    y3 = torch.randn(2, 4, 7, dtype=F64, device=device, requires_grad=True)
    return x3, y3


def _linear_stats_cases(device, backend):
    return [_mmd_inputs(device)]


def _linear_stats_backward_cases(device, backend):
    x3, y3 = (t.detach() for t in _mmd_inputs(device))
    return [(x3, y3, torch.randn(2, 3, dtype=F64, device=device), _code(backend))]


def _gram_cases(device, backend):
    return [(*_mmd_inputs(device), "rbf")]


def _augment_params(device):
    shift = torch.tensor([[1, 0, -1], [0, -2, 0]], device=device)
    lo = torch.tensor([[0, 1, 0], [1, 0, 0]], device=device)
    hi = torch.tensor([[1, 3, 2], [0, 2, 2]], device=device)  # the second box is empty
    return shift, lo, hi, torch.tensor([0.75, 1.0], device=device)


def _diff_augment_cases(device, backend):
    x = torch.randn(2, 1, 2, 3, 2, dtype=F64, device=device, requires_grad=True)
    params = _augment_params(device)
    return [(x, *params, -1.0, -1), (x.detach()[:, :, :, :2], *params, 0.5, _code(backend))]


DISPATCHING = {
    "pixel_shuffle3d_dispatch": (ps._shuffle_op, _shuffle_cases),
    "pixel_unshuffle3d_dispatch": (ps._unshuffle_op, _unshuffle_cases),
    "gradient_penalty_interpolate": (gp._interp_op, _interp_cases),
    "gradient_penalty_interpolate_backward": (gp._interp_backward_op, _interp_backward_cases),
    "gradient_penalty_norm_penalty": (gp._norm_op, _norm_cases),
    "gradient_penalty_norm_penalty_backward": (gp._norm_backward_op, _norm_backward_cases),
    "spectral_norm_step_dispatch": (sn._step_op, _spectral_norm_cases),
    "resize_conv3d_dispatch": (rc._resize_conv_op, _resize_cases),
    "resize_conv3d_dispatch_backward": (rc._resize_conv_backward_op, _resize_backward_cases),
    "mmd_linear_stats_dispatch": (mm._linear_stats_op, _linear_stats_cases),
    "mmd_linear_stats_dispatch_backward": (mm._linear_stats_backward_op, _linear_stats_backward_cases),
    "mmd_gram_dispatch": (mm._gram_op, _gram_cases),
    "diff_augment3d_dispatch": (da._augment_op, _diff_augment_cases),
}
RESIZE_OPS = ("resize_conv3d_dispatch", "resize_conv3d_dispatch_backward")


@pytest.mark.parametrize("name", list(DISPATCHING))
def test_dispatching_op(backend_device, name):
    backend, device = backend_device
    op, cases = DISPATCHING[name]
    with _on(backend):
        for args in cases(device, backend):
            _opcheck_on(backend, op, args)


@pytest.mark.parametrize("name", RESIZE_OPS)
def test_resize_conv3d_op_on_cudnn(name):
    """resize_conv3d's fifth implementation (ATen's folded transposed convolution; oneDNN here)."""
    op, cases = DISPATCHING[name]
    with _on("cudnn"):
        for args in cases("cpu", "cudnn"):
            if name.endswith("backward"):  # the code of the implementation that ran
                assert args[6] == rc._IMPL_CODES.index("cudnn")
            _opcheck(op, args)


def _conv_inputs(channels_last: bool):
    x = torch.randn(2, 4, 5, 4, 3, dtype=F64)
    w = torch.randn(6, 2, 3, 2, 3, dtype=F64)  # groups=2
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last_3d), w.to(memory_format=torch.channels_last_3d)
    b = torch.randn(6, dtype=F64, requires_grad=True)
    return x.requires_grad_(True), w.requires_grad_(True), b


CONV = ([2, 1, 1], [1, 0, 1], [1, 1, 2], 2)  # stride, padding, dilation, groups


@pytest.mark.parametrize("channels_last", [False, True], ids=["ncdhw", "channels_last"])
def test_conv3d_gradfix_ops(channels_last):
    x, w, b = _conv_inputs(channels_last)
    _opcheck(cg._conv_op, (x, w, b, *CONV))
    _opcheck(cg._conv_op, (x, w, None, *CONV))
    grad_out = torch.randn_like(cg._conv_op(x.detach(), w.detach(), None, *CONV)).requires_grad_(True)
    for needs in ((True, True, True), (True, False, False), (False, True, True)):
        _opcheck(cg._conv_backward_op, (grad_out, x, w, *CONV, *needs))
    # Inside no_weight_gradients the op gives zeros for what it skips, in the strides
    # the fake kernel promises (the switch is read when the op runs).
    with no_weight_gradients():
        _opcheck(cg._conv_backward_op, (grad_out, x, w, *CONV, True, True, True))


# --------------------------------------------------------------------------- extension ops


def _resize_fwd_cases():
    x = torch.randn(1, 2, 2, 3, 2)
    w = torch.randn(3, 2, 3, 3, 3)
    b = torch.randn(3)
    xh = x.to(torch.bfloat16)  # half x takes float32 folded weights
    weights = (fold_resize_conv_weight_transposed(w), fold_resize_conv_weight(w))
    return [
        (xx, wf, bb, act, 0.2)
        for xx, bb in ((x, b), (xh, b.bfloat16()))
        for wf in weights
        for act in (0, 2, 3)
    ]


def _resize_bwd_cases():
    # Per dtype and weight form: everything asked for (the mask); the weight gradient alone
    # (the saved output; an empty grad_x); grad_x alone (no activation; an empty grad_weight,
    # whose dtype differs between the CPU and CUDA for half x).
    needs_per_act = {2: (True, True, True), 3: (False, True, False), 0: (True, False, False)}
    cases = []
    for x, wf, b, act, slope in _resize_fwd_cases():
        y, mask = torch.ops.brainkern.resize_conv3d_fwd(x, wf, b, act, slope)
        saved = None if act == 0 else (y if act == 3 else mask)
        cases.append((torch.randn_like(y), saved, x, wf, act, slope, *needs_per_act[act]))
    return cases


def _gp_norm_cases(dtype):
    grad = torch.randn(3, 2, 5).to(dtype)
    return [(grad, 10.0, 1.0, mode) for mode in gp.MODES.values()]


def _gp_norm_backward_cases(dtype):
    grad = torch.randn(3, 2, 5).to(dtype)
    _, norms = torch.ops.brainkern.gradient_penalty_norm(grad, 10.0, 1.0, 0)
    return [(torch.tensor(1.5, dtype=dtype), grad, norms, 10.0, 1.0, 0)]


def _extension_cases(name: str, dtype: torch.dtype) -> list[tuple]:
    real, fake, g = (torch.randn(3, 2, 5).to(dtype) for _ in range(3))
    eps = torch.rand(3).to(dtype)
    x3, y3 = torch.randn(2, 3, 7).to(dtype), torch.randn(2, 4, 7).to(dtype)
    cases = {
        "pixel_shuffle3d": lambda: [(torch.randn(1, 8, 2, 3, 2).to(dtype), 2)],
        "pixel_unshuffle3d": lambda: [(torch.randn(1, 1, 4, 2, 6).to(dtype), 2)],
        "gradient_penalty_interp": lambda: [(real, fake, eps)],
        "gradient_penalty_interp_backward": lambda: [(g, eps)],
        "gradient_penalty_norm": lambda: _gp_norm_cases(dtype),
        "gradient_penalty_norm_backward": lambda: _gp_norm_backward_cases(dtype),
        "mmd_linear_stats": lambda: [(x3, y3)],
        "mmd_linear_backward": lambda: [(x3, y3, torch.randn(2, 3, dtype=F64))],
        "mmd_gram": lambda: [(x3, y3)],
        "spectral_norm_step": lambda: [
            (
                [torch.randn(4, 6).to(dtype), torch.randn(3, 5).to(dtype)],
                [_unit(4, dtype), _unit(3, dtype)],
                [_unit(6, dtype), _unit(5, dtype)],
                1e-12,
            )
        ],
        "resize_conv3d_fwd": _resize_fwd_cases,
        "resize_conv3d_bwd": _resize_bwd_cases,
        "diff_augment3d": lambda: [(torch.randn(2, 1, 2, 3, 2).to(dtype), *_augment_params("cpu"), -1.0)],
    }
    return cases[name]()


EXTENSION_OPS = (
    "pixel_shuffle3d",
    "pixel_unshuffle3d",
    "gradient_penalty_interp",
    "gradient_penalty_interp_backward",
    "gradient_penalty_norm",
    "gradient_penalty_norm_backward",
    "mmd_linear_stats",
    "mmd_linear_backward",
    "mmd_gram",
    "spectral_norm_step",
    "resize_conv3d_fwd",
    "resize_conv3d_bwd",
    "diff_augment3d",
)
# The dtypes where the outputs' dtypes differ (the norms accumulate in float32 for half
# types, the Gram matrix and statistics are float64 for all); resize_conv3d picks its own.
_EXTENSION_DTYPES = {
    "spectral_norm_step": (torch.float32,),
    "resize_conv3d_fwd": (None,),
    "resize_conv3d_bwd": (None,),
}
_needs_extension = pytest.mark.skipif(backends()["cpu"] is not True, reason="brainkern._C is not built")


@_needs_extension
@pytest.mark.parametrize("name", EXTENSION_OPS)
def test_extension_op(name):
    op = getattr(torch.ops.brainkern, name).default
    for dtype in _EXTENSION_DTYPES.get(name, (torch.float32, torch.bfloat16)):
        for args in _extension_cases(name, dtype):
            _opcheck(op, args)


# --------------------------------------------------------------------------- coverage


def _namespace_ops() -> set[str]:
    backends()  # loads the extension, which registers its ops (and their fake kernels)
    prefix = f"{NAMESPACE}::"
    return {name[len(prefix) :] for name in torch._C._dispatch_get_all_op_names() if name.startswith(prefix)}


def test_every_op_has_a_case():
    checked = set(DISPATCHING) | {"conv3d_gradfix", "conv3d_gradfix_backward"}
    if backends()["cpu"] is True:
        checked |= set(EXTENSION_OPS)
    assert _namespace_ops() == checked


def test_every_op_has_a_fake_kernel():
    # A fake kernel (register_fake, or a C++ meta kernel) is what the compiler traces.
    missing = [
        name
        for name in sorted(_namespace_ops())
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", "Meta")
    ]
    assert not missing, f"ops without a fake (meta) kernel: {missing}"


def test_fake_kernels_describe_half_precision_outputs():
    """The fakes' dtypes where they are not the input's: spot checks beside opcheck."""
    if backends()["cpu"] is not True:
        pytest.skip("brainkern._C is not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        grad = torch.empty(3, 2, 5, dtype=torch.bfloat16)
        penalty, norms = torch.ops.brainkern.gradient_penalty_norm(grad, 10.0, 1.0, 0)
        stats = torch.ops.brainkern.mmd_linear_stats(torch.empty(2, 3, 7), torch.empty(2, 4, 7))
    assert (penalty.dtype, norms.dtype, norms.shape) == (torch.bfloat16, torch.float32, (3,))
    assert (stats.dtype, stats.shape) == (torch.float64, (2, 3))
