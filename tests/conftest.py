"""Shared test helpers: which backends can run here, tolerances, seeded inputs.

Every op test runs each backend that can run on this machine against the
op's reference: ``reference`` and ``cpu`` always (``cpu`` is skipped, not
passed, when the extension is missing), ``triton`` under ``TRITON_INTERPRET=1``,
``cuda`` on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from brainkern.ops import backends

_STATUS = backends()


def _param(name: str, device: str):
    status = _STATUS[name]
    marks = [] if status is True else [pytest.mark.skip(reason=f"{name}: {status}")]
    if name == "triton" and device == "cpu":
        from brainkern.ops._backend import interpreter_enabled

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
