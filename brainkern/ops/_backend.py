"""Backend selection shared by every op in :mod:`brainkern.ops`.

Each op has four implementations: ``reference`` (plain PyTorch, in the op's own
module, always available), ``cpu`` (C++ in ``brainkern._C``), ``cuda`` (CUDA in
``brainkern._C``) and ``triton`` (Triton kernels; on the GPU, or on the CPU under
``TRITON_INTERPRET=1``). An op describes what each backend supports with an
:class:`OpDispatch`; this module chooses one per call:

- forced: ``with use_backend("triton"): ...`` or ``BRAINKERN_BACKEND=triton``
  (the context manager wins). If the forced backend cannot run the input, a
  :class:`BackendError` lists every backend and why it declined.
- automatic otherwise: the op's preference order for the input's device
  (by default ``cuda, triton, reference`` on a GPU and ``cpu, reference`` on the
  CPU), taking the first backend that is available and accepts the input.

The choice reads a context variable and the environment, which ``torch.compile``
must not trace (it would bake one answer into the graph). So each op runs its
dispatch inside a ``torch.library.custom_op``, opaque to the compiler, at run
time. Such an op takes a backend code (:data:`AUTO` to choose, else an index into
:data:`BACKENDS`) and returns, beside its tensors, the code of the backend that
ran; the op's backward passes that code on, so the backward runs on the
forward's backend (also on the autograd engine's own threads, which do not see
the caller's context). In a traced graph the returned code is an unbacked
symbolic int (:func:`fake_backend_code`): the compiled backward receives, at run
time, the code the compiled forward's op returned.

The compiled extension's ops (``torch.ops.brainkern.*``) get their fake (meta)
kernels, for tracing, from the op modules through :func:`extension_fake`; they
are registered when the extension is first loaded (:func:`backends` loads it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import torch

from brainkern import _ext

BACKENDS: tuple[str, ...] = ("reference", "cpu", "cuda", "triton")
ENV_VAR = "BRAINKERN_BACKEND"
# The backend code that asks an op to choose (any other code is an index into BACKENDS).
AUTO = -1

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("brainkern_backend", default=None)

# A check returns None when the backend can run the call, else the reason it declines.
Check = Callable[..., "str | None"]


class BackendError(RuntimeError):
    """No backend (or not the forced one) can run an op on the given input."""


def _validate(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown brainkern backend {name!r} from {source}; choose one of {BACKENDS}")
    return name


def interpreter_enabled() -> bool:
    """Whether Triton kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.cache
def _triton_import_status() -> bool | str:
    try:
        import triton  # noqa: F401, PLC0415
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    return True


def _triton_status() -> bool | str:
    status = _triton_import_status()
    if status is not True:
        return status
    if torch.cuda.is_available() or interpreter_enabled():
        return True
    return "no CUDA device and TRITON_INTERPRET=1 is not set (Triton's CPU interpreter)"


def backends() -> dict[str, bool | str]:
    """Each backend's availability here: ``{name: True | "reason it is not available"}``."""
    cpu = _ext.extension_status()
    if cpu is True and _pending_fakes:
        _register_extension_fakes()
    return {
        "reference": True,
        "cpu": cpu,
        "cuda": _ext.cuda_status(),
        "triton": _triton_status(),
    }


# --------------------------------------------------------------------------- tracing

# Fake kernels of the extension's ops, waiting for the extension to be loaded: torch
# registers a fake kernel only for an op that exists, and importing brainkern must not
# load the extension (see brainkern._ext).
_pending_fakes: dict[str, Callable] = {}


def extension_fake(name: str) -> Callable[[Callable], Callable]:
    """Declare ``fn`` the fake (meta) kernel of the extension's op ``torch.ops.brainkern.<name>``.

    The kernel is registered with :func:`torch.library.register_fake` once the
    extension is loaded (at once if it already is). It must give the outputs'
    shapes, dtypes and strides exactly as the C++ kernels do.
    """

    def declare(fn: Callable) -> Callable:
        _pending_fakes[name] = fn
        # Only an extension that is already loaded: declaring must not load it.
        if "brainkern._C" in sys.modules and _ext.extension_status() is True:
            _register_extension_fakes()
        return fn

    return declare


def _register_extension_fakes() -> None:
    while _pending_fakes:
        name, fn = _pending_fakes.popitem()
        if not hasattr(torch.ops.brainkern, name):
            continue  # an older build without this op: _ext.op() says so when it is called
        torch.library.register_fake(f"brainkern::{name}", fn)


def fake_backend_code(count: int = len(BACKENDS)) -> int | torch.SymInt:
    """The backend code a custom op returns while it is traced (inside its fake kernel).

    Which backend runs is decided at run time, so in a graph the code is an unbacked
    symbolic int in ``[0, count)``: the graph carries the forward's run-time code to
    the backward. Without a shape environment to make one in (a bare
    ``FakeTensorMode``, meta tensors) it is :data:`AUTO`: such a trace's backward
    chooses its backend for itself.
    """
    try:
        return torch.library.get_ctx().new_dynamic_size(min=0, max=count - 1)
    except RuntimeError:  # meta tensors (no fake context) or no shape environment
        return AUTO


def forced_backend() -> str | None:
    """The backend forced by :func:`use_backend` or ``BRAINKERN_BACKEND``, if any."""
    name = _forced.get()
    if name is not None:  # set by use_backend(); "auto" there overrides the environment
        return None if name == "auto" else name
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("", "auto"):
        return None
    return _validate(env, f"${ENV_VAR}")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force every brainkern op inside the block onto one backend.

    Args:
        name: one of ``"reference"``, ``"cpu"``, ``"cuda"``, ``"triton"``; ``None``
            or ``"auto"`` restores automatic choice (also over ``BRAINKERN_BACKEND``).

    Raises:
        ValueError: for an unknown name.
    """
    if name is not None and name != "auto":
        _validate(name, "use_backend()")
    token = _forced.set("auto" if name in (None, "auto") else name)
    try:
        yield
    finally:
        _forced.reset(token)


def _device_reason(backend: str, device: torch.device) -> str | None:
    if backend == "cpu" and device.type != "cpu":
        return f"the input is on {device}; this backend runs on the CPU only"
    if backend == "cuda" and device.type != "cuda":
        return f"the input is on {device}; this backend runs on CUDA devices only"
    if backend == "triton":
        if device.type == "cpu" and not interpreter_enabled():
            return "the input is on the CPU and TRITON_INTERPRET=1 is not set"
        if device.type not in ("cpu", "cuda"):
            return f"the input is on {device}; Triton runs on CUDA devices (or the CPU interpreter)"
    return None


def _default_order(device: torch.device) -> Sequence[str]:
    if device.type == "cuda":
        return ("cuda", "triton", "reference")
    if device.type == "cpu":
        return ("cpu", "reference")
    return ("reference",)


class OpDispatch:
    """What each backend of one op supports, and the choice of backend per call.

    Args:
        op: the public name of the op, used in error messages.
        checks: ``{backend: check}``; ``check(*args, **kwargs)`` returns ``None``
            when that backend can run the call, else a short reason. A backend
            without a check accepts every input its device allows; a backend
            missing from ``BACKENDS`` order is never chosen.
        order: ``order(device, *args, **kwargs)`` gives the automatic preference
            order; by default ``cuda, triton, reference`` on CUDA and
            ``cpu, reference`` on the CPU.
    """

    def __init__(
        self,
        op: str,
        checks: dict[str, Check] | None = None,
        order: Callable[..., Sequence[str]] | None = None,
    ) -> None:
        self.op = op
        self.checks = dict(checks or {})
        self.order = order

    def reason(self, backend: str, device: torch.device, *args, **kwargs) -> str | None:
        """Why ``backend`` cannot run this call, or ``None`` if it can."""
        status = backends()[backend]
        if status is not True:
            return f"unavailable: {status}"
        why = _device_reason(backend, device)
        if why is None and backend in self.checks:
            why = self.checks[backend](*args, **kwargs)
        return None if why is None else f"declined: {why}"

    def select(self, device: torch.device, *args, **kwargs) -> str:
        """The backend that runs this call (forced, or the first that fits).

        Raises:
            BackendError: the forced backend cannot run the call; the message lists
                every backend and its reason.
        """
        forced = forced_backend()
        if forced is not None:
            if self.reason(forced, device, *args, **kwargs) is None:
                return forced
            raise BackendError(self._report(f"backend {forced!r} was forced", device, *args, **kwargs))
        order = self.order(device, *args, **kwargs) if self.order else _default_order(device)
        for backend in order:
            if self.reason(backend, device, *args, **kwargs) is None:
                return backend
        raise BackendError(self._report("no backend fits", device, *args, **kwargs))

    def select_code(self, code: int, device: torch.device, *args, **kwargs) -> str:
        """:meth:`select` for :data:`AUTO`, else backend ``BACKENDS[code]`` as if it were forced.

        Raises:
            BackendError: that backend cannot run the call.
        """
        if code == AUTO:
            return self.select(device, *args, **kwargs)
        with use_backend(BACKENDS[code]):
            return self.select(device, *args, **kwargs)

    def _report(self, headline: str, device: torch.device, *args, **kwargs) -> str:
        lines = [f"brainkern.ops.{self.op}: {headline}, but it cannot run this input on {device}:"]
        for backend in BACKENDS:
            why = self.reason(backend, device, *args, **kwargs)
            lines.append(f"  {backend}: {'can run it' if why is None else why}")
        lines.append("Force another with brainkern.ops.use_backend(name) or BRAINKERN_BACKEND.")
        return "\n".join(lines)
