"""Differentiable 3D augmentation of a batch: translation, cutout and intensity in one pass.

King et al. (2024) adapt DiffAugment (Zhao et al. 2020) to 3D MRI: every
discriminator input, real or generated, is translated, has a box cut out and has
its intensity scaled, and the generator's gradient flows back through all three.
This op applies one such draw, given per sample, relative to a ``background``
value (brain volumes in ``[-1, 1]`` have background ``-1``, in ``[0, 1]`` ``0``)::

    y[n, c, p] = background                                  if p - shift[n] is outside the volume
                                                              or p is inside the box [lo[n], hi[n])
    y[n, c, p] = scale[n] * x[n, c, p - shift[n]] + (1 - scale[n]) * background   otherwise

which is ``background + scale * keep * (x_shifted - background)`` written so that
``scale = 1`` returns ``x`` bit for bit (the translation's fill and the cutout are
``background`` exactly). The box is half-open per axis; ``hi <= lo`` on any axis
means no cutout. The arithmetic runs in float32 for float16, bfloat16 and float32
inputs and in float64 for float64, rounded once to the input's dtype; every
backend does the same operations in the same order (no fused multiply-add), so all
backends agree bit for bit with :func:`diff_augment3d_reference`.

The op is affine in ``x``; its gradient is the adjoint gather: the same op on the
incoming gradient with the shift negated, the box moved by ``-shift`` and
background 0, i.e. ``grad_x[q] = scale * keep(q + shift) * grad_y[q + shift]``.
The backward calls the op itself, so derivatives of any order work on every
backend (the gradient penalty differentiates through the augmentation). ``shift``,
``lo``, ``hi`` and ``scale`` get no gradient.

Backends (see :mod:`brainkern.ops._backend`): ``cpu`` (C++), ``cuda`` and
``triton`` make one pass that reads ``x`` once through its strides and writes a new
contiguous ``y``; ``reference`` gathers with advanced indexing and masks with
``torch.where``. On the CPU the automatic order is ``cpu``, then ``reference``; on
CUDA ``cuda``, ``triton``, ``reference``.

``torch.compile``: the op is the custom op ``brainkern::diff_augment3d_dispatch``,
which chooses its backend when it runs; the extension's
``torch.ops.brainkern.diff_augment3d`` has a C++ meta kernel.
"""

from __future__ import annotations

import torch

from brainkern import _ext
from brainkern.ops._backend import AUTO, BACKENDS, OpDispatch, fake_backend_code

__all__ = ["diff_augment3d", "diff_augment3d_reference"]

_OP = "diff_augment3d"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- validation


def _check_params(
    x: object, shift: object, lo: object, hi: object, scale: object, background: object
) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_OP}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{_OP}: x must be 5-d (N, C, D, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{_OP}: x must be a floating-point tensor, got {x.dtype}")
    n = x.shape[0]
    for name, t in (("shift", shift), ("lo", lo), ("hi", hi)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int64:
            raise TypeError(f"{_OP}: {name} must be int64, got {t.dtype}")
        if tuple(t.shape) != (n, 3):
            raise ValueError(f"{_OP}: {name} must have shape (N, 3) = ({n}, 3), got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{_OP}: {name} is on {t.device} but x is on {x.device}; put both on one device")
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{_OP}: scale must be a torch.Tensor, got {type(scale).__name__}")
    if not scale.is_floating_point():
        raise TypeError(f"{_OP}: scale must be a floating-point tensor, got {scale.dtype}")
    if tuple(scale.shape) != (n,):
        raise ValueError(f"{_OP}: scale must have shape (N,) = ({n},), got {tuple(scale.shape)}")
    if scale.device != x.device:
        raise ValueError(f"{_OP}: scale is on {scale.device} but x is on {x.device}; put both on one device")
    if scale.requires_grad:
        raise ValueError(f"{_OP}: scale requires grad, but the op gives no gradient for it; detach it")
    if isinstance(background, bool) or not isinstance(background, (int, float)):
        raise TypeError(f"{_OP}: background must be a float, got {type(background).__name__}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the op computes in: float64 for float64 inputs, float32 for every other float."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- reference


def diff_augment3d_reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: torch.Tensor,
    background: float = 0.0,
) -> torch.Tensor:
    """Plain-PyTorch :func:`diff_augment3d`: index gather, ``torch.where`` masks, scale.

    Args:
        x: ``(N, C, D, H, W)``, any floating dtype, any strides.
        shift: ``(N, 3)`` int64, voxels along ``(D, H, W)``; ``y[p] = x[p - shift]``.
        lo, hi: ``(N, 3)`` int64, the cutout box ``[lo, hi)`` per axis in output voxels.
        scale: ``(N,)`` floating, the intensity factor per sample.
        background: the value of the translation's fill and the cutout.

    Returns:
        ``(N, C, D, H, W)`` in ``x``'s dtype, differentiable (to any order) through autograd.

    Raises:
        TypeError, ValueError: as :func:`diff_augment3d`.
    """
    _check_params(x, shift, lo, hi, scale, background)
    n, _, d, h, w = x.shape
    acc = _acc_dtype(x.dtype)
    device = x.device
    axes = []
    for k, size in enumerate((d, h, w)):
        pos = torch.arange(size, device=device)  # output coordinate p along axis k
        src = pos[None, :] - shift[:, k : k + 1]  # (N, size) source coordinate p - shift
        valid = (src >= 0) & (src < size)
        inside = (pos[None, :] >= lo[:, k : k + 1]) & (pos[None, :] < hi[:, k : k + 1])
        axes.append((src.clamp(0, size - 1), valid, inside))
    (sd, vd, cd), (sh, vh, ch), (sw, vw, cw) = axes
    # Gather x[n, :, p - shift] for every output p (clamped; the mask drops what is outside).
    batch = torch.arange(n, device=device)[:, None, None, None]
    moved = x.movedim(1, -1)[batch, sd[:, :, None, None], sh[:, None, :, None], sw[:, None, None, :]]
    moved = moved.movedim(-1, 1).to(acc)  # (N, C, D, H, W)
    valid = vd[:, :, None, None] & vh[:, None, :, None] & vw[:, None, None, :]
    cut = cd[:, :, None, None] & ch[:, None, :, None] & cw[:, None, None, :]
    keep = (valid & ~cut)[:, None]  # (N, 1, D, H, W)
    s = scale.to(acc)[:, None, None, None, None]
    bg = torch.full((), background, dtype=acc, device=device)
    y = torch.where(keep, s * moved + (1 - s) * bg, bg)
    return y.to(x.dtype)


# --------------------------------------------------------------------------- dispatch


def _kernel_check(x, shift, lo, hi, scale, background) -> str | None:
    if x.dtype not in _KERNEL_DTYPES:
        return f"dtype {x.dtype} is not one of float16, bfloat16, float32, float64"
    return None


def _extension_check(x, shift, lo, hi, scale, background) -> str | None:
    if not hasattr(torch.ops.brainkern, _OP):
        return "brainkern._C was built without diff_augment3d; rebuild it (./dev setup)"
    return _kernel_check(x, shift, lo, hi, scale, background)


_DISPATCH = OpDispatch(
    _OP, checks={"cpu": _extension_check, "cuda": _extension_check, "triton": _kernel_check}
)


def _run(backend: str, x, shift, lo, hi, scale, background: float) -> torch.Tensor:
    """A fast backend's kernel (no autograd); a new contiguous tensor."""
    if backend in ("cpu", "cuda"):
        return _ext.op(_OP)(x, shift, lo, hi, scale, background)
    if backend == "triton":
        from brainkern.kernels import diff_augment3d as kernels  # noqa: PLC0415  (imports triton)

        return kernels.diff_augment3d(x, shift, lo, hi, scale, background)
    raise AssertionError(f"unknown backend {backend!r}")


@torch.library.custom_op("brainkern::diff_augment3d_dispatch", mutates_args=())
def _augment_op(
    x: torch.Tensor,
    shift: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: torch.Tensor,
    background: float,
    backend: int,
) -> tuple[torch.Tensor, int]:
    """The op on backend code ``backend`` (``AUTO`` chooses), and the code of the backend that ran."""
    name = _DISPATCH.select_code(backend, x.device, x, shift, lo, hi, scale, background)
    if name == "reference":
        y = diff_augment3d_reference(x, shift, lo, hi, scale, background).contiguous()
    else:
        y = _run(name, x, shift, lo, hi, scale, background)
    return y, BACKENDS.index(name)


@_augment_op.register_fake
def _augment_fake(x, shift, lo, hi, scale, background, backend):
    return x.new_empty(x.shape), fake_backend_code()


def _setup_context(ctx, inputs, output) -> None:
    _, shift, lo, hi, scale, _, _ = inputs
    ctx.save_for_backward(shift, lo, hi, scale)
    ctx.backend = output[1]


def _augment_backward(ctx, grad: torch.Tensor, _code):
    # The adjoint: gather the gradient back by -shift, the box seen from the source
    # side (moved by -shift), background 0. The same op, so it is differentiable again.
    shift, lo, hi, scale = ctx.saved_tensors
    gx = _augment_op(grad, -shift, lo - shift, hi - shift, scale, 0.0, ctx.backend)[0]
    return gx, None, None, None, None, None, None


_augment_op.register_autograd(_augment_backward, setup_context=_setup_context)


def diff_augment3d(
    x: torch.Tensor,
    shift: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    scale: torch.Tensor,
    background: float = 0.0,
) -> torch.Tensor:
    """Translate, cut out and scale each sample of a batch of volumes, in one pass.

    ``y[n, c, p] = background + scale[n] * keep[n](p) * (x[n, c, p - shift[n]] - background)``,
    where ``x`` outside the volume counts as ``background`` and ``keep[n](p)`` is 0
    inside the half-open box ``[lo[n], hi[n])`` (empty when ``hi <= lo`` on an axis).
    King et al. (2024)'s DiffAugment-3D; :class:`brainkern.augment.DiffAugment3d`
    draws the parameters.

    Args:
        x: ``(N, C, D, H, W)``, float16/bfloat16/float32/float64 on the fast backends
            (any floating dtype on the reference); any strides.
        shift: ``(N, 3)`` int64 on ``x``'s device, voxels along ``(D, H, W)``; may be negative.
        lo, hi: ``(N, 3)`` int64 on ``x``'s device, the cutout box in output voxels.
        scale: ``(N,)`` floating on ``x``'s device, no gradient.
        background: the fill value (``-1`` for data in ``[-1, 1]``, ``0`` for ``[0, 1]``).

    Returns:
        A new contiguous ``(N, C, D, H, W)`` tensor in ``x``'s dtype, the same bits on
        every backend; differentiable with respect to ``x`` to any order.

    Raises:
        TypeError: ``x`` is not a floating tensor, an index tensor is not int64, ``scale``
            is not floating, or ``background`` is not a number.
        ValueError: a shape is wrong, a tensor is on another device than ``x``, or
            ``scale`` requires grad.
        BackendError: a forced backend cannot run the input.
    """
    _check_params(x, shift, lo, hi, scale, background)
    return _augment_op(x, shift, lo, hi, scale, float(background), AUTO)[0]
