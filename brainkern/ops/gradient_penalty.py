"""WGAN-GP gradient penalty with fused interpolation and norm kernels.

The penalty of Gulrajani et al. (2017), as the 3D WGAN-GP models of Zhuang et
al. (2019, ICW-GAN: a conditional discriminator with the labels concatenated to
every layer) and Kwon et al. (2019, alpha-WGAN-GP: on the image discriminator and
on the code discriminator of the latent vectors) train with it::

    x_hat   = eps * real + (1 - eps) * fake           eps ~ U[0, 1), one per sample
    penalty = weight * mean_b (||grad_x D(x_hat)[b]||_2 - center)^2

with a one-sided variant (only norms above ``center``) and R1 (Mescheder et
al. 2018: ``||grad_x D(real)||^2`` on real data).

:func:`gradient_penalty` fuses the pieces around the discriminator:

1. the interpolation, one pass (and one pass for its backward when ``real`` or
   ``fake`` require grad);
2. the per-sample norm, the penalty and its backward
   (``d penalty / d grad = weight * f'(n) / n * grad / B``) as two kernels: a
   deterministic reduction and one elementwise pass;
3. the first backward through the discriminator runs inside
   :func:`~brainkern.ops.no_weight_gradients`, so :class:`brainkern.nn.Conv3d`
   layers skip their (unused) weight gradients there.

Each fused piece has the ``reference`` (plain PyTorch), ``cpu``, ``cuda`` and
``triton`` backends, chosen per call (:mod:`brainkern.ops._backend`).
On the device backends a call only queues work: ``weight`` and ``center`` reach
the kernels as scalar arguments, nothing is read back to the host and no tensor
is built from host data, so a training step never waits here
(``tests/test_host_sync.py``).
:func:`gradient_penalty_reference` is the plain ``torch.autograd.grad`` form and
the test oracle.

``torch.compile``: :func:`interpolate` and :func:`norm_penalty` (with their
backwards) are ``torch.library`` custom ops that choose their backend when they run
(see :mod:`brainkern.ops._backend`), so both trace with ``fullgraph=True``.
:func:`gradient_penalty` itself calls ``torch.autograd.grad`` and differentiates
the discriminator twice, which torch 2.13's compiled graphs do not support: the
penalty, and the discriminator it is given, run eagerly.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable

import torch

from brainkern import _ext
from brainkern.ops._backend import AUTO, BACKENDS, OpDispatch, extension_fake, fake_backend_code
from brainkern.ops.conv3d_gradfix import no_weight_gradients

__all__ = [
    "MODES",
    "gradient_penalty",
    "gradient_penalty_reference",
    "interpolate",
    "lazy_count",
    "norm_penalty",
    "set_lazy_count",
]

MODES: dict[str, int] = {"two-sided": 0, "one-sided": 1, "r1": 2}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ---------------------------------------------------------------------------
# validation


def _check_number(value: object, name: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"gradient_penalty: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"gradient_penalty: {name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"gradient_penalty: {name} must be >= {minimum}, got {value}")
    return value


def _check_every(every: object) -> int:
    if isinstance(every, bool) or not isinstance(every, numbers.Integral):
        raise TypeError(f"gradient_penalty: every must be an int >= 1, got {type(every).__name__}")
    if every < 1:
        raise ValueError(f"gradient_penalty: every must be >= 1, got {every}")
    return int(every)


def _check_batch(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"gradient_penalty: {name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"gradient_penalty: {name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(
            f"gradient_penalty: {name} must be batched, (B, ...) with at least 2 dimensions "
            f"((B, C, D, H, W) volumes or (B, L) latents), got shape {tuple(x.shape)}"
        )
    if x.shape[0] < 1:
        raise ValueError(
            f"gradient_penalty: {name} needs a batch of at least 1 sample, got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"gradient_penalty: {name} has no elements per sample, got shape {tuple(x.shape)}")
    return x


def _validate(real, fake, eps, weight, center, mode, every):
    if mode not in MODES:
        raise ValueError(f"gradient_penalty: mode must be one of {tuple(MODES)}, got {mode!r}")
    weight = _check_number(weight, "weight", minimum=0.0)
    center = _check_number(center, "center")
    every = _check_every(every)
    real = _check_batch(real, "real")
    if mode == "r1":
        if fake is not None:
            _check_batch(fake, "fake")
        return real, None, None, weight, center, every
    if fake is None:
        raise ValueError(f"gradient_penalty: fake is required for mode {mode!r} (only 'r1' ignores it)")
    fake = _check_batch(fake, "fake")
    if real.shape != fake.shape:
        raise ValueError(
            f"gradient_penalty: real and fake must have the same shape, got {tuple(real.shape)} "
            f"and {tuple(fake.shape)}"
        )
    if real.device != fake.device:
        raise ValueError(f"gradient_penalty: real is on {real.device} but fake is on {fake.device}")
    dtype = torch.promote_types(real.dtype, fake.dtype)
    real, fake = real.to(dtype), fake.to(dtype)
    B = real.shape[0]
    if eps is not None:
        if not isinstance(eps, torch.Tensor):
            raise TypeError(
                f"gradient_penalty: eps must be a tensor of shape ({B},), got {type(eps).__name__}"
            )
        if eps.numel() != B or eps.dim() not in (1, real.dim()) or (eps.dim() > 1 and eps.shape[0] != B):
            raise ValueError(
                f"gradient_penalty: eps must have shape ({B},) (or ({B}, 1, ..., 1)), one value per sample, "
                f"got {tuple(eps.shape)}"
            )
        if eps.device != real.device:
            raise ValueError(f"gradient_penalty: eps is on {eps.device} but real is on {real.device}")
        eps = eps.reshape(B).to(dtype)
    return real, fake, eps, weight, center, every


# ---------------------------------------------------------------------------
# lazy regularisation: calls counted per discriminator

_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lazy_key(discriminator: Callable) -> object:
    # A bound method is a new object at every attribute access; count its instance.
    owner = getattr(discriminator, "__self__", None)
    return discriminator if owner is None else owner


def _lazy_applies(discriminator: Callable, every: int) -> bool:
    """Counts this call; True on calls every, 2*every, ... of this discriminator."""
    if every == 1:
        return True
    key = _lazy_key(discriminator)
    try:
        count = _CALLS.get(key, 0) + 1
        _CALLS[key] = count
    except TypeError as exc:
        raise TypeError(
            "gradient_penalty: every > 1 counts calls per discriminator, which needs a discriminator that "
            f"can be weakly referenced (an nn.Module or a function), got {type(discriminator).__name__}"
        ) from exc
    return count % every == 0


def lazy_count(discriminator: Callable) -> int:
    """How many penalty calls ``gradient_penalty(..., every > 1)`` has counted for
    ``discriminator`` (0 when none): part of a training run's state, so that a resumed
    run computes the penalty on the same iterations as an uninterrupted one."""
    return int(_CALLS.get(_lazy_key(discriminator), 0))


def set_lazy_count(discriminator: Callable, count: int) -> None:
    """Restore what :func:`lazy_count` returned (e.g. from a checkpoint).

    Raises:
        ValueError: a negative count.
        TypeError: a discriminator that cannot be weakly referenced.
    """
    if int(count) < 0:
        raise ValueError(f"set_lazy_count: count must be >= 0, got {count}")
    _CALLS[_lazy_key(discriminator)] = int(count)


def _skipped(real: torch.Tensor) -> torch.Tensor:
    # A zero that .backward() accepts: a leaf that requires grad (nothing else receives gradient).
    return torch.zeros((), dtype=real.dtype, device=real.device, requires_grad=True)


def _draw_eps(real: torch.Tensor) -> torch.Tensor:
    return torch.rand(real.shape[0], dtype=real.dtype, device=real.device)


def _per_sample(eps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return eps.reshape(eps.shape[0], *([1] * (like.dim() - 1)))


# ---------------------------------------------------------------------------
# fused piece 1: the interpolation


def _interp_reference(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    e = _per_sample(eps, real)
    return e * real + (1 - e) * fake


def _fused_checks(*tensors: torch.Tensor) -> str | None:
    x = tensors[0]
    if x.dtype not in _FLOAT_DTYPES:
        return f"dtype {x.dtype} is not one of float16, bfloat16, float32, float64"
    return None


def _interp_check(real, fake, eps, eps_requires_grad) -> str | None:
    if eps_requires_grad:
        return "eps requires grad (only the reference differentiates with respect to eps)"
    return _fused_checks(real)


_MAX_TRITON_BATCH = 65535  # CUDA's limit on a grid's second dimension


def _triton_batch(x: torch.Tensor) -> str | None:
    if x.shape[0] > _MAX_TRITON_BATCH:
        return f"batch {x.shape[0]} exceeds the Triton grid limit {_MAX_TRITON_BATCH}"
    return None


def _interp_order(device: torch.device, *args) -> tuple[str, ...]:
    # Measured on a 2-core x86 CPU (benchmarks/RESULTS.md): ATen's vectorised
    # eps * real + (1 - eps) * fake beat the one-pass C++ kernel (2.2 ms against
    # 2.7 ms at 4 x 64^3), so the CPU takes the reference unless a backend is forced.
    if device.type == "cpu":
        return ("reference",)
    return ("cuda", "triton", "reference")


_INTERP_DISPATCH = OpDispatch(
    "gradient_penalty (interpolation)",
    checks={
        "cpu": _interp_check,
        "cuda": _interp_check,
        "triton": lambda real, fake, eps, eps_grad: (
            _triton_batch(real) or _interp_check(real, fake, eps, eps_grad)
        ),
    },
    order=_interp_order,
)


def _interp_kernel(backend: str, real, fake, eps) -> torch.Tensor:
    if backend == "reference":
        return _interp_reference(real, fake, eps).contiguous()
    if backend == "triton":
        from brainkern.kernels import gradient_penalty as tk  # noqa: PLC0415

        return tk.interp(real, fake, eps)
    return _ext.op("gradient_penalty_interp")(real, fake, eps)


def _interp_backward_kernel(backend: str, g, eps) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        e = _per_sample(eps, g)
        return g * e, g * (1 - e)
    if backend == "triton":
        from brainkern.kernels import gradient_penalty as tk  # noqa: PLC0415

        return tk.interp_backward(g, eps)
    return _ext.op("gradient_penalty_interp_backward")(g, eps)


def _interp_dtype(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.dtype:
    # The reference's type promotion; the kernels take one dtype, so it is theirs too.
    return torch.promote_types(torch.promote_types(eps.dtype, real.dtype), fake.dtype)


# The ops the compiler sees (opaque: the backend is chosen when the graph runs). Each
# returns the code of the backend that ran, which the backward passes on.
@torch.library.custom_op("brainkern::gradient_penalty_interpolate", mutates_args=())
def _interp_op(
    real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, eps_requires_grad: bool, backend: int
) -> tuple[torch.Tensor, int]:
    """x_hat = eps * real + (1 - eps) * fake (B, ...), contiguous, and the backend's code.

    ``eps_requires_grad`` is a dispatch input (the kernels decline then): the op
    itself runs below autograd, where ``eps.requires_grad`` says nothing.
    """
    name = _INTERP_DISPATCH.select_code(backend, real.device, real, fake, eps, eps_requires_grad)
    out = _interp_kernel(name, real.contiguous(), fake.contiguous(), eps.contiguous())
    return out, BACKENDS.index(name)


@_interp_op.register_fake
def _interp_fake(real, fake, eps, eps_requires_grad, backend):
    return real.new_empty(real.shape, dtype=_interp_dtype(real, fake, eps)), fake_backend_code()


@torch.library.custom_op("brainkern::gradient_penalty_interpolate_backward", mutates_args=())
def _interp_backward_op(
    g: torch.Tensor, eps: torch.Tensor, backend: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps * g, (1 - eps) * g), both (B, ...) contiguous, on the forward's backend (code)."""
    g, eps = g.contiguous(), eps.contiguous()
    name = _INTERP_DISPATCH.select(g.device, g, g, eps, False) if backend == AUTO else BACKENDS[backend]
    return _interp_backward_kernel(name, g, eps)


@_interp_backward_op.register_fake
def _interp_backward_fake(g, eps, backend):
    return g.new_empty(g.shape), g.new_empty(g.shape)


def _sample_sums(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _interp_setup(ctx, inputs, output) -> None:
    real, fake, eps, _, _ = inputs
    ctx.backend = output[1]
    # real - fake only for a gradient with respect to eps (the reference's case).
    ctx.save_for_backward(eps, *((real, fake) if ctx.needs_input_grad[2] else ()))


def _interp_backward(ctx, g, _code):
    eps, *pair = ctx.saved_tensors
    need_real, need_fake, need_eps = ctx.needs_input_grad[:3]
    grad_real = grad_fake = grad_eps = None
    if need_real and need_fake:
        grad_real, grad_fake = _interp_backward_op(g, eps, ctx.backend)
    elif need_real:
        grad_real = g * _per_sample(eps, g)  # a single broadcast pass already
    elif need_fake:
        grad_fake = g * _per_sample(1 - eps, g)
    if need_eps:
        real, fake = pair
        grad_eps = _sample_sums(g * (real - fake)).to(eps.dtype)
    return grad_real, grad_fake, grad_eps, None, None


def _interp_backward_setup(ctx, inputs, output) -> None:
    g, eps, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(g, eps)


def _interp_backward_backward(ctx, gg_real, gg_fake):
    # The interpolation's backward is linear in g: its own backward is the interpolation.
    g, eps = ctx.saved_tensors
    grad_g = grad_eps = None
    if ctx.needs_input_grad[0]:
        grad_g = _interp_op(gg_real, gg_fake, eps, False, ctx.backend)[0]
    if ctx.needs_input_grad[1]:
        grad_eps = _sample_sums((gg_real - gg_fake) * g).to(eps.dtype)
    return grad_g, grad_eps, None


_interp_op.register_autograd(_interp_backward, setup_context=_interp_setup)
_interp_backward_op.register_autograd(_interp_backward_backward, setup_context=_interp_backward_setup)


def interpolate(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``eps[b] * real[b] + (1 - eps[b]) * fake[b]``: the fused interpolation of the penalty.

    Args:
        real, fake: (B, ...) of one floating dtype and device.
        eps: (B,) of the same dtype.

    Returns:
        (B, ...), contiguous; differentiable w.r.t. ``real`` and ``fake`` (to any order)
        and, through the reference backend, w.r.t. ``eps``.
    """
    return _interp_op(real, fake, eps, eps.requires_grad, AUTO)[0]


# ---------------------------------------------------------------------------
# fused piece 2: per-sample norm, penalty, and its backward


def _terms_reference(norms: torch.Tensor, center: float, mode: int) -> torch.Tensor:
    if mode == MODES["r1"]:
        return norms.square()
    d = norms - center
    if mode == MODES["one-sided"]:
        d = d.clamp(min=0)  # clamp propagates NaN
    return d.square()


def _norm_penalty_reference(grad: torch.Tensor, weight: float, center: float, mode: int) -> torch.Tensor:
    norms = torch.linalg.vector_norm(grad.flatten(1), dim=1)
    return weight * _terms_reference(norms, center, mode).mean()


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    # The kernels accumulate (and return the norms) in float64 for float64, else float32.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _norm_kernel(backend: str, grad, weight, center, mode) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        norms = torch.linalg.vector_norm(grad.flatten(1), dim=1, dtype=_acc_dtype(grad))
        return (weight * _terms_reference(norms, center, mode).mean()).to(grad.dtype), norms
    if backend == "triton":
        from brainkern.kernels import gradient_penalty as tk  # noqa: PLC0415

        return tk.norm(grad, weight, center, mode)
    return _ext.op("gradient_penalty_norm")(grad, weight, center, mode)


def _norm_backward_kernel(backend: str, dpen, grad, norms, weight, center, mode) -> torch.Tensor:
    if backend == "reference":
        k, _ = _slopes(norms, center, mode)
        coef = dpen.to(norms.dtype) * (weight / grad.shape[0]) * k
        return (_per_sample(coef, grad) * grad.to(norms.dtype)).to(grad.dtype)
    if backend == "triton":
        from brainkern.kernels import gradient_penalty as tk  # noqa: PLC0415

        return tk.norm_backward(dpen, grad, norms, weight, center, mode)
    return _ext.op("gradient_penalty_norm_backward")(dpen, grad, norms, weight, center, mode)


_NORM_DISPATCH = OpDispatch(
    "gradient_penalty (gradient norm)",
    checks={
        "cpu": _fused_checks,
        "cuda": _fused_checks,
        "triton": lambda grad: _triton_batch(grad) or _fused_checks(grad),
    },
)


def _slopes(n: torch.Tensor, center: float, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k(n) = f'(n) / n and k'(n) / n, both 0 where n == 0 (f is not smooth there)."""
    if mode == MODES["r1"]:
        zero = torch.zeros_like(n)
        return zero + 2, zero
    safe = torch.where(n == 0, torch.ones_like(n), n)
    d = n - center
    if mode == MODES["one-sided"]:
        active = (d > 0).to(n.dtype)
        d = d * active
    else:
        active = torch.ones_like(n)
    k = torch.where(n == 0, torch.zeros_like(n), 2 * d / safe)
    # k(n) = 2 - 2c/n on the active side, so k'(n) = 2c / n^2 there; divided by n once more.
    kp_over_n = torch.where(n == 0, torch.zeros_like(n), 2 * center * active / safe**3)
    return k, kp_over_n


@torch.library.custom_op("brainkern::gradient_penalty_norm_penalty", mutates_args=())
def _norm_op(
    grad: torch.Tensor, weight: float, center: float, mode: int, backend: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """grad (B, ...) -> (weight * mean_b f(||grad[b]||_2), shape (); the norms (B,); the backend's code).

    The norms are float64 for float64 gradients, float32 otherwise (the kernels' accumulator).
    """
    name = _NORM_DISPATCH.select_code(backend, grad.device, grad)
    penalty, norms = _norm_kernel(name, grad.contiguous(), weight, center, mode)
    return penalty, norms, BACKENDS.index(name)


@_norm_op.register_fake
def _norm_fake(grad, weight, center, mode, backend):
    norms = grad.new_empty((grad.shape[0],), dtype=_acc_dtype(grad))
    return grad.new_empty(()), norms, fake_backend_code()


@torch.library.custom_op("brainkern::gradient_penalty_norm_penalty_backward", mutates_args=())
def _norm_backward_op(
    dpen: torch.Tensor,
    grad: torch.Tensor,
    norms: torch.Tensor,
    weight: float,
    center: float,
    mode: int,
    backend: int,
) -> torch.Tensor:
    """dgrad = dpen * weight / B * k(n_b) * grad[b] (B, ...), contiguous, in one pass."""
    g = grad.contiguous()
    name = _NORM_DISPATCH.select(g.device, g) if backend == AUTO else BACKENDS[backend]
    d = dpen.reshape(()).to(g.dtype).contiguous()
    return _norm_backward_kernel(name, d, g, norms.contiguous(), weight, center, mode)


@_norm_backward_op.register_fake
def _norm_backward_fake(dpen, grad, norms, weight, center, mode, backend):
    return grad.new_empty(grad.shape)


def _norm_setup(ctx, inputs, output) -> None:
    grad, weight, center, mode, _ = inputs
    _, norms, backend = output
    ctx.save_for_backward(grad, norms)
    ctx.conf = (weight, center, mode, backend)
    ctx.mark_non_differentiable(norms)


def _norm_backward(ctx, dpen, _dnorms, _code):
    grad, norms = ctx.saved_tensors
    return _norm_backward_op(dpen, grad, norms, *ctx.conf), None, None, None, None


def _norm_backward_setup(ctx, inputs, output) -> None:
    dpen, grad, _, weight, center, mode, _ = inputs
    ctx.save_for_backward(dpen, grad)
    ctx.conf = (weight, center, mode)


def _norm_backward_backward(ctx, G):
    # Differentiable torch ops: the penalty is differentiable twice (gradgradcheck holds).
    dpen, g = ctx.saved_tensors
    weight, center, mode = ctx.conf
    B = g.shape[0]
    gf, Gf = g.flatten(1), G.flatten(1)
    n = torch.linalg.vector_norm(gf, dim=1)
    k, kp_over_n = _slopes(n, center, mode)
    gG = (gf * Gf).sum(1)
    d_dpen = d_g = None
    if ctx.needs_input_grad[0]:
        d_dpen = ((weight / B) * (k * gG).sum()).to(dpen.dtype).reshape(dpen.shape)
    if ctx.needs_input_grad[1]:
        s = dpen.reshape(()) * (weight / B)
        d_g = (s * (k[:, None] * Gf + (kp_over_n * gG)[:, None] * gf)).reshape(g.shape)
    return d_dpen, d_g, None, None, None, None, None


_norm_op.register_autograd(_norm_backward, setup_context=_norm_setup)
_norm_backward_op.register_autograd(_norm_backward_backward, setup_context=_norm_backward_setup)


def norm_penalty(
    grad: torch.Tensor, weight: float = 10.0, center: float = 1.0, mode: str = "two-sided"
) -> torch.Tensor:
    """``weight * mean_b f(||grad[b]||_2)``: the fused norm and penalty of :func:`gradient_penalty`.

    Args:
        grad: (B, ...) gradient of the discriminator w.r.t. its input.
        weight, center, mode: as :func:`gradient_penalty`.

    Returns:
        0-d tensor of ``grad``'s dtype (accumulated in float32, float64 for float64),
        differentiable twice w.r.t. ``grad`` (``gradgradcheck`` holds).
    """
    if mode not in MODES:
        raise ValueError(f"norm_penalty: mode must be one of {tuple(MODES)}, got {mode!r}")
    weight = _check_number(weight, "weight", minimum=0.0)
    center = _check_number(center, "center")
    grad = _check_batch(grad, "grad")
    return _norm_op(grad, weight, center, MODES[mode], AUTO)[0]


# ---------------------------------------------------------------------------
# fake kernels of the extension's ops (shapes, dtypes and strides as the C++ returns them)


@extension_fake("gradient_penalty_interp")
def _extension_interp_fake(real, fake, eps):
    return torch.empty_like(real)


@extension_fake("gradient_penalty_interp_backward")
def _extension_interp_backward_fake(grad, eps):
    return torch.empty_like(grad), torch.empty_like(grad)


@extension_fake("gradient_penalty_norm")
def _extension_norm_fake(grad, weight, center, mode):
    return grad.new_empty(()), grad.new_empty((grad.shape[0],), dtype=_acc_dtype(grad))


@extension_fake("gradient_penalty_norm_backward")
def _extension_norm_backward_fake(dpen, grad, norms, weight, center, mode):
    return torch.empty_like(grad)


# ---------------------------------------------------------------------------
# the penalty


def _penalty_input(real, fake, eps, mode, *, fused: bool) -> torch.Tensor:
    if mode == "r1":
        return real if real.requires_grad else real.detach().requires_grad_(True)
    if eps is None:
        eps = _draw_eps(real)
    x = interpolate(real, fake, eps) if fused else _interp_reference(real, fake, eps)
    return x if x.requires_grad else x.requires_grad_(True)


def _input_gradient(discriminator, x, disc_kwargs) -> torch.Tensor:
    out = discriminator(x, **disc_kwargs)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"gradient_penalty: the discriminator must return a tensor, got {type(out).__name__}")
    if not out.requires_grad:
        raise ValueError(
            "gradient_penalty: the discriminator's output does not require grad (was it run under "
            "torch.no_grad(), or does it ignore its input?)"
        )
    (grad,) = torch.autograd.grad(
        out, x, grad_outputs=torch.ones_like(out), create_graph=True, allow_unused=True
    )
    if grad is None:
        raise ValueError("gradient_penalty: the discriminator's output does not depend on its input")
    return grad


def gradient_penalty(
    discriminator: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor | None,
    *,
    weight: float = 10.0,
    center: float = 1.0,
    mode: str = "two-sided",
    eps: torch.Tensor | None = None,
    every: int = 1,
    **disc_kwargs,
) -> torch.Tensor:
    """The WGAN-GP gradient penalty, with fused kernels around the discriminator.

    ``weight * mean_b (||grad_x D(x_hat)[b]||_2 - center)^2`` with
    ``x_hat = eps * real + (1 - eps) * fake`` (Gulrajani et al. 2017), as
    ICW-GAN (Zhuang et al. 2019) and alpha-WGAN-GP (Kwon et al. 2019; also on the
    code discriminator of latent vectors) train with it. ``penalty.backward()``
    gives exact gradients for every discriminator parameter (and for ``real`` /
    ``fake`` when they require grad), as ``torch.autograd.grad(create_graph=True)``.

    Args:
        discriminator: a module or function ``D(x, **disc_kwargs) -> Tensor``;
            any output shape (all outputs are summed before differentiating).
        real, fake: (B, C, D, H, W) volumes or (B, L) latents, any (B, ...) with
            B >= 1, same shape and device; mixed dtypes are promoted. ``fake`` is
            ignored (may be ``None``) for ``mode="r1"``.
        weight: lambda, >= 0 (10 in WGAN-GP).
        center: the target norm (1 in WGAN-GP).
        mode: ``"two-sided"`` ``(n - center)^2``; ``"one-sided"``
            ``max(0, n - center)^2``; ``"r1"``: ``n^2`` at the real samples, no
            interpolation, ``center`` unused. R1 is usually written with
            ``gamma / 2``: pass ``weight=gamma / 2`` yourself.
        eps: (B,) interpolation weights; drawn with ``torch.rand`` on ``real``'s
            device in ``real``'s dtype (honouring the global seed) when ``None``.
        every: lazy regularisation (Karras et al. 2020): the penalty is computed on
            calls ``every, 2*every, ...`` *of this discriminator* (calls of this
            function and of :func:`gradient_penalty_reference` are counted together,
            per module), scaled by ``every``; other calls return a zero that
            supports ``.backward()`` and do not run the discriminator.
        **disc_kwargs: passed to the discriminator (class labels of a conditional
            one). They cannot be named like the arguments above.

    Returns:
        0-d tensor (``real``'s dtype, or the promoted dtype of real and fake). A
        NaN gradient norm gives a NaN penalty (never hidden).

    Raises:
        TypeError: a non-tensor input or output, non-numeric ``weight`` /
            ``center`` / ``every``.
        ValueError: mismatched shapes or devices, batch < 1, unbatched input, a bad
            ``eps`` shape, an unknown ``mode``, ``weight < 0``, ``every < 1``, a
            discriminator output that does not depend on its input.
    """
    real, fake, eps, weight, center, every = _validate(real, fake, eps, weight, center, mode, every)
    if not _lazy_applies(discriminator, every):
        return _skipped(real)
    x = _penalty_input(real, fake, eps, mode, fused=True)
    with no_weight_gradients():
        grad = _input_gradient(discriminator, x, disc_kwargs)
    return norm_penalty(grad, weight * every, center, mode)


def gradient_penalty_reference(
    discriminator: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor | None,
    *,
    weight: float = 10.0,
    center: float = 1.0,
    mode: str = "two-sided",
    eps: torch.Tensor | None = None,
    every: int = 1,
    **disc_kwargs,
) -> torch.Tensor:
    """The plain ``torch.autograd.grad(create_graph=True)`` form of :func:`gradient_penalty`.

    Same arguments, validation, lazy counting and result; no fused kernel and no
    :func:`~brainkern.ops.no_weight_gradients`. The test oracle.
    """
    real, fake, eps, weight, center, every = _validate(real, fake, eps, weight, center, mode, every)
    if not _lazy_applies(discriminator, every):
        return _skipped(real)
    x = _penalty_input(real, fake, eps, mode, fused=False)
    grad = _input_gradient(discriminator, x, disc_kwargs)
    if mode == "r1":
        return (weight * every) * grad.flatten(1).square().sum(1).mean()
    return _norm_penalty_reference(grad, weight * every, center, MODES[mode])
