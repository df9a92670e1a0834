"""Shared test helpers: which backends can run here, tolerances, seeded inputs.

Every op test runs each backend that can run on this machine against the
op's reference: ``reference`` and ``cpu`` always (``cpu`` is skipped, not
passed, when the extension is missing), ``triton`` under ``TRITON_INTERPRET=1``,
``cuda`` on a GPU.

Around every test (autouse fixtures):

- one intra-op thread (``torch.set_num_threads(1)``), restored afterwards; tests
  marked ``@pytest.mark.threads`` keep the default. The tensors here are tiny, so
  more threads only add contention: a ``gradgradcheck`` took 56.7 s with the
  default threads on a loaded 2-core machine and 1.5 s with one.
- under Triton's interpreter, its integer-overflow sanitiser is off (see
  :func:`_drop_unreported_overflow_checks`): with the interpreter's ``debug=False`` it
  computes checks whose outcome it then discards, and that work was about 60% of every
  interpreted launch.
- on a GPU, for tests whose ``backend_device`` is on CUDA: every brainkern op the
  test calls by name runs under ``torch.cuda.set_sync_debug_mode("error")``, so an
  op that makes the host wait for the device fails the test. Only the op calls
  are guarded; the test's own inputs (``torch.tensor(..., device="cuda")``) and
  comparisons (``.cpu()``, ``assert_close``) synchronise freely. See
  :func:`forbid_host_sync` for guarding more (a backward pass) by hand, and mark
  a test ``@pytest.mark.allow_host_sync`` when it checks a path that must read
  the device (a NaN check that raises).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator

import pytest
import torch

import brainkern.ops as bo
from brainkern.ops import backends
from brainkern.ops._backend import interpreter_enabled

_STATUS = backends()


def _drop_unreported_overflow_checks() -> bool:
    """Turn off the interpreter's overflow sanitiser where it reports nothing; True if done.

    Triton 3.x's interpreter runs with ``InterpreterOptions(debug=False,
    sanitize_overflow=True)``: every 32-bit integer add, sub and mul is redone in int64 and
    range-checked, and the result goes to ``device_assert``, which returns without looking
    when ``debug`` is False. The checks cost about 60% of an interpreted launch (a
    resize_conv3d forward: 0.80 s with them, 0.33 s without) and can never fail a test.
    With ``debug`` on (where they would report), the options are left alone.
    ``tests/test_gpu_script.py`` checks that an overflowing kernel passes with the
    sanitiser on and ``debug`` off (so nothing is lost here), and fails with both on.
    """
    if not interpreter_enabled():
        return False
    try:
        from triton.runtime import interpreter  # noqa: PLC0415
    except ImportError:
        return False
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or getattr(options, "debug", True) or not getattr(options, "sanitize_overflow", False):
        return False
    builder.options = dataclasses.replace(options, sanitize_overflow=False)
    return True


_drop_unreported_overflow_checks()


def _param(name: str, device: str):
    status = _STATUS[name]
    marks = [] if status is True else [pytest.mark.skip(reason=f"{name}: {status}")]
    if name == "triton" and device == "cpu":
        if not interpreter_enabled():
            marks = [pytest.mark.skip(reason="triton on the CPU needs TRITON_INTERPRET=1")]
    if device == "cuda" and not torch.cuda.is_available():
        marks = [pytest.mark.skip(reason="no CUDA device")]
    return pytest.param((name, device), marks=marks, id=f"{name}-{device}")


# (backend, device) pairs every op test sweeps.
BACKEND_DEVICES = [
    _param("reference", "cpu"),
    _param("cpu", "cpu"),
    _param("triton", "cpu"),
    _param("cuda", "cuda"),
    _param("triton", "cuda"),
]


@pytest.fixture(params=BACKEND_DEVICES)
def backend_device(request) -> tuple[str, str]:
    """A ``(backend, device)`` pair that can run on this machine."""
    return request.param


# Absolute and relative tolerances per dtype against a float64 reference.
# float32: a few ulps of accumulated sums over at most ~10^3 terms;
# half types: tests compare against 2x eager PyTorch's own error instead where
# the op accumulates, and use these bounds for pure data movement (exact).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-2, 1.6e-2),
    torch.float16: (1e-3, 1e-3),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# torch's thread count when the session started: a module-scoped fixture that trains
# (the engine applies train.threads) must not leave its count to later tests.
_DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _one_thread(request) -> Iterator[None]:
    marked = request.node.get_closest_marker("threads") is not None
    before = torch.get_num_threads()
    torch.set_num_threads(_DEFAULT_THREADS if marked else 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- host syncs on CUDA


@contextlib.contextmanager
def forbid_host_sync(device: torch.device | str = "cuda", mode: str = "error") -> Iterator[None]:
    """Inside the block, a CUDA call that makes the host wait for the device raises.

    What raises (``RuntimeError: called a synchronizing CUDA operation``): reading
    a value (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``), a blocking copy
    from or to host memory (``torch.tensor(..., device="cuda")``, ``.to("cuda")``),
    data-dependent shapes (``nonzero``, boolean masks) and stream synchronisation.
    ``torch.cuda.synchronize()`` does not raise. ``mode="warn"`` warns instead.
    Nothing happens on the CPU or without a CUDA device. Blocks nest; the previous
    mode is restored on exit.

    Example::

        with forbid_host_sync(device):
            loss.backward()  # the op's backward kernels, guarded too
    """
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


# Ops whose documented contract reads the device, with why; their calls warn
# ("called a synchronizing CUDA operation" in the warnings summary) instead of
# failing. mmd2 raises ValueError on NaN or infinite inputs by reading a few sums
# per test; it is an evaluation metric, not part of a training step.
SYNCS_BY_DESIGN = {
    "mmd2": "reads its sums to reject NaN/inf inputs",
    "mmd2_batched": "reads its sums to reject NaN/inf inputs",
}


@functools.cache
def _guarded_ops() -> dict[int, tuple[Callable, str]]:
    """``{id(op): (op, sync debug mode)}`` for brainkern's public ops.

    The ops are the functions of ``brainkern.ops`` less the references and the
    dispatch machinery (``use_backend``, ``backends``, ...).
    """
    ops = {}
    for name in bo.__all__:
        fn = getattr(bo, name)
        if not inspect.isfunction(fn) or name.endswith("_reference") or fn.__module__ == bo._backend.__name__:
            continue
        ops[id(fn)] = (fn, "warn" if name in SYNCS_BY_DESIGN else "error")
    return ops


def _guarded(fn: Callable, mode: str) -> Callable:
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with forbid_host_sync("cuda", mode):
            return fn(*args, **kwargs)

    return call


def _runs_on_cuda(item) -> bool:
    callspec = getattr(item, "callspec", None)
    pair = callspec.params.get("backend_device") if callspec is not None else None
    return pair is not None and pair[1] == "cuda"


@pytest.fixture(autouse=True)
def _cuda_ops_never_sync(request, monkeypatch) -> Iterator[None]:
    # Test modules import the ops by name (``from brainkern.ops import mmd2``) or
    # use the package (``bo.mmd2``); the names in both places are replaced for
    # this test by wrappers that guard the call. Tests that run nothing on CUDA,
    # and every test on a machine without a GPU, are left untouched.
    if (
        not torch.cuda.is_available()
        or not _runs_on_cuda(request.node)
        or request.node.get_closest_marker("allow_host_sync") is not None
    ):
        yield
        return
    guard_ops_in(monkeypatch, [request.module, bo])
    yield


def guard_ops_in(monkeypatch, holders) -> list[str]:
    """Replace, for one test, each brainkern op named in ``holders`` (modules) by a guarded call.

    Returns the names replaced (a name bound to an op under another name counts too).
    """
    ops = _guarded_ops()
    replaced = []
    for holder in holders:
        for name, value in list(vars(holder).items()):
            fn, mode = ops.get(id(value), (None, None))
            if fn is not None and fn is value:
                monkeypatch.setattr(holder, name, _guarded(value, mode))
                replaced.append(name)
    return replaced
