"""Spectral normalisation: one grouped power iteration for every layer of a network.

Spectral normalisation (Miyato et al. 2018, used for every discriminator of King
et al.'s SN-GAN family) divides a layer's weight by an estimate of its largest
singular value, kept up to date by one power iteration per training step. This
module reproduces :func:`torch.nn.utils.parametrizations.spectral_norm` step for
step. There, one iteration on a matrix ``W`` (out, in) with stored vectors
``u`` (out,), ``v`` (in,) computes

    u' = normalize(W v),    v' = normalize(W^T u'),    sigma = u' . (W v')

with ``normalize(x) = x / max(||x||, eps)`` (``F.normalize``): three matrix-vector
products, so three reads of ``W``, and about a dozen kernel launches per layer.

The fused step reads each ``W`` once. Per row ``i`` it forms ``d_i = W_i . v`` and,
while the row is still in cache, accumulates ``W^T d += d_i W_i``. Then, with
``n = max(||d||, eps)`` and ``t = ||W^T d|| / n = ||W^T u'||``:

    u' = d / n,    v' = (W^T d / n) / max(t, eps),    sigma = u' . (W v') = t^2 / max(t, eps)

The last identity holds because ``u' . (W v') = (W^T u') . v'`` and ``v'`` is
``W^T u'`` rescaled: so ``sigma = ||W^T u'||`` whenever that norm exceeds ``eps``,
and no second read of ``W`` is needed. All layers go through one call (three
kernel launches on the GPU: for any number of layers with Triton, per 24 layers
with CUDA), which is what :func:`brainkern.nn.spectral_norm_update` uses for a
whole discriminator.

The results are reproducible bit for bit: the GPU kernels use no atomics, and
every sum (the row dot products, ``W^T d`` across row blocks, the norms) runs in
float64, also for float32 weights, in an order fixed by the shapes alone (on
the CPU, by the shapes and the thread count), whether or not
``torch.use_deterministic_algorithms`` is on. No backend waits for the GPU: the
CUDA launcher passes its layer descriptors as kernel arguments, and the Triton
launcher caches its layout tables and uploads them from pinned memory.

:func:`spectral_normalize` then forms ``W / sigma`` with PyTorch's gradient:
``u'`` and ``v'`` are constants, so ``d sigma / dW = u' v'^T``.

``torch.compile``: the step is a ``torch.library`` custom op
(``brainkern::spectral_norm_step_dispatch``) that declares its in-place updates of
``us`` and ``vs`` and chooses its backend when it runs, so a spectrally normalised
layer's training forward (its power iteration included) traces with
``fullgraph=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from brainkern.ops._backend import OpDispatch, extension_fake

__all__ = ["spectral_norm_step", "spectral_norm_step_reference", "spectral_normalize"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _validate(
    weights: Sequence[torch.Tensor], us: Sequence[torch.Tensor], vs: Sequence[torch.Tensor]
) -> None:
    for name, seq in (("weights", weights), ("us", us), ("vs", vs)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(f"spectral_norm_step: {name} must be a list of tensors, got {type(seq).__name__}")
    if not (len(weights) == len(us) == len(vs)):
        raise ValueError(
            "spectral_norm_step: weights, us and vs must have one entry per layer, got "
            f"{len(weights)} weights, {len(us)} us and {len(vs)} vs"
        )
    if not weights:
        raise ValueError("spectral_norm_step: got no layers (empty lists)")
    device, dtype = weights[0].device, weights[0].dtype
    for i, (w, u, v) in enumerate(zip(weights, us, vs, strict=True)):
        for name, t in (("weight", w), ("u", u), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"spectral_norm_step: layer {i}: {name} must be a tensor, got {type(t).__name__}"
                )
        if w.dim() != 2:
            raise ValueError(
                f"spectral_norm_step: layer {i}: weight must be a 2D matrix (out, in) "
                f"(reshape a conv weight with .reshape(out, -1)), got shape {tuple(w.shape)}"
            )
        if not w.is_floating_point() or w.is_complex():
            raise TypeError(
                f"spectral_norm_step: layer {i}: weight must be real floating point, got {w.dtype}"
            )
        out_f, in_f = w.shape
        if out_f == 0 or in_f == 0:
            raise ValueError(f"spectral_norm_step: layer {i}: weight has an empty shape {tuple(w.shape)}")
        if u.shape != (out_f,):
            raise ValueError(
                f"spectral_norm_step: layer {i}: u must have shape ({out_f},) for a weight of shape "
                f"{tuple(w.shape)}, got {tuple(u.shape)}"
            )
        if v.shape != (in_f,):
            raise ValueError(
                f"spectral_norm_step: layer {i}: v must have shape ({in_f},) for a weight of shape "
                f"{tuple(w.shape)}, got {tuple(v.shape)}"
            )
        for name, t in (("weight", w), ("u", u), ("v", v)):
            if t.device != device:
                raise ValueError(
                    f"spectral_norm_step: layer {i}: {name} is on {t.device} but layer 0's weight is on "
                    f"{device}; every tensor of one call must be on the same device"
                )
            if t.dtype != dtype:
                raise TypeError(
                    f"spectral_norm_step: layer {i}: {name} has dtype {t.dtype} but layer 0's weight has "
                    f"{dtype}; every tensor of one call must have the same dtype"
                )


def spectral_norm_step_reference(
    weights: Sequence[torch.Tensor],
    us: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    eps: float = 1e-12,
) -> torch.Tensor:
    """Plain-PyTorch power iteration, layer by layer, as ``torch.nn.utils.parametrizations`` does it.

    Three matrix-vector products per layer: ``u = normalize(W v)``,
    ``v = normalize(W^T u)``, ``sigma = u . (W v)``. ``us`` and ``vs`` are updated in
    place. This is the test oracle and the fallback of :func:`spectral_norm_step`.

    Args:
        weights: L matrices, layer l of shape (out_l, in_l).
        us: L vectors (out_l,), updated in place.
        vs: L vectors (in_l,), updated in place.
        eps: floor of the norms, as in ``F.normalize``.

    Returns:
        sigmas (L,), the spectral norm estimates, in the weights' dtype.
    """
    _validate(weights, us, vs)
    sigmas = []
    with torch.no_grad():
        for w, u, v in zip(weights, us, vs, strict=True):
            F.normalize(torch.mv(w, v), dim=0, eps=eps, out=u)
            F.normalize(torch.mv(w.t(), u), dim=0, eps=eps, out=v)
            sigmas.append(torch.vdot(u, torch.mv(w, v)))
    return torch.stack(sigmas)


def _kernel_check(weights, us, vs, eps) -> str | None:
    dtype = weights[0].dtype
    if dtype not in _KERNEL_DTYPES:
        return f"weights of dtype {dtype} (supported: float32, float64)"
    return None


def _triton_check(weights, us, vs, eps) -> str | None:
    why = _kernel_check(weights, us, vs, eps)
    if why is not None:
        return why
    if len(weights) > 1:
        from brainkern.kernels.spectral_norm import base_offsets_ok  # noqa: PLC0415

        return base_offsets_ok(weights, us, vs)
    return None


_DISPATCH = OpDispatch(
    "spectral_norm_step",
    checks={"cpu": _kernel_check, "cuda": _kernel_check, "triton": _triton_check},
)


def _rows_unit_stride(t: torch.Tensor) -> torch.Tensor:
    # Kernels walk rows with a row stride and unit column stride.
    return t if t.stride(1) == 1 and t.stride(0) >= t.shape[1] else t.contiguous()


def spectral_norm_step(
    weights: Sequence[torch.Tensor],
    us: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    eps: float = 1e-12,
) -> torch.Tensor:
    """One power iteration for every layer in one call; updates ``us`` and ``vs`` in place.

    Reproduces one step of :func:`torch.nn.utils.parametrizations.spectral_norm`
    (Miyato et al. 2018) for each layer, reading each weight once (see the module
    docstring for the identity ``sigma = ||W^T d|| / ||d||``). On CUDA all layers
    share three kernel launches; on the CPU one parallel pass. Sums run in float64
    in a fixed order: repeated calls give bit-identical results.

    Args:
        weights: L matrices ``W_l`` of shape (out_l, in_l); a conv weight reshaped
            with ``w.reshape(out, -1)``. float32 or float64 for the fast backends
            (float16 and bfloat16 run on the reference, in their own precision).
            Gradients are not tracked.
        us: L vectors (out_l,), same dtype and device; overwritten with ``normalize(W v)``.
        vs: L vectors (in_l,); overwritten with ``normalize(W^T u)``.
        eps: norm floor, as ``F.normalize``'s.

    Returns:
        sigmas (L,): ``u_l . (W_l v_l)`` with the updated vectors, in the weights' dtype.

    Raises:
        TypeError: non-list arguments, non-float weights, mixed dtypes (naming the layer).
        ValueError: lists of different lengths, non-2D weights, u/v of the wrong
            length, tensors on different devices (naming the layer index).
        brainkern.ops.BackendError: a forced backend cannot run the input.
    """
    _validate(weights, us, vs)
    # Gradients are not tracked: the op sees detached weights (no autograd node to trip over).
    return _step_op([w.detach() for w in weights], list(us), list(vs), float(eps))


# The op the compiler sees: opaque, so the backend is chosen when the graph runs; it
# updates us and vs in place (declared, so a compiled graph functionalises it).
@torch.library.custom_op("brainkern::spectral_norm_step_dispatch", mutates_args=("us", "vs"))
def _step_op(
    weights: list[torch.Tensor], us: list[torch.Tensor], vs: list[torch.Tensor], eps: float
) -> torch.Tensor:
    """One power iteration per layer on the chosen backend; sigmas (L,), us and vs updated."""
    backend = _DISPATCH.select(weights[0].device, weights, us, vs, eps)
    if backend == "reference":
        return spectral_norm_step_reference(weights, us, vs, eps)
    ws = [_rows_unit_stride(w) for w in weights]
    us_k = [u if u.is_contiguous() else u.contiguous() for u in us]
    vs_k = [v if v.is_contiguous() else v.contiguous() for v in vs]
    if backend in ("cpu", "cuda"):
        from brainkern._ext import op  # noqa: PLC0415

        sigmas = op("spectral_norm_step")(ws, us_k, vs_k, eps)
    else:
        from brainkern.kernels.spectral_norm import spectral_norm_step_triton  # noqa: PLC0415

        sigmas = spectral_norm_step_triton(ws, us_k, vs_k, eps)
    for dst, src in zip(us + vs, us_k + vs_k, strict=True):
        if dst is not src:
            dst.copy_(src)
    return sigmas


@extension_fake("spectral_norm_step")
@_step_op.register_fake
def _step_fake(weights, us, vs, eps):
    # Both ops (this one and the extension's) update us and vs in place and return the
    # sigmas (L,) in the weights' dtype.
    return weights[0].new_empty((len(weights),))


class _SpectralNormalize(torch.autograd.Function):
    """``W / sigma`` with ``sigma = u . (W v)`` for constant ``u``, ``v``, without re-reading ``W``.

    The forward takes ``sigma`` already computed (by :func:`spectral_norm_step`);
    the backward is PyTorch's gradient of ``W / (u . W v)``:
    ``g / sigma - (sum(g * W) / sigma^2) u v^T``, written with differentiable
    torch ops in which ``sigma`` is re-attached to ``W`` through
    :class:`_AttachSigma`, so double backward (gradient penalties) is exact.
    """

    @staticmethod
    def forward(ctx, weight, sigma, u, v):
        ctx.save_for_backward(weight, sigma, u, v)
        return weight / sigma

    @staticmethod
    def backward(ctx, grad):
        weight, sigma, u, v = ctx.saved_tensors
        sig = _AttachSigma.apply(weight, sigma, u, v)
        outer = torch.outer(u, v).reshape(weight.shape)
        grad_w = grad / sig - ((grad * weight).sum() / (sig * sig)) * outer
        return grad_w, None, None, None


class _AttachSigma(torch.autograd.Function):
    """``sigma`` as a function of ``W`` (value given, gradient ``u v^T``, which is constant in ``W``)."""

    @staticmethod
    def forward(ctx, weight, sigma, u, v):
        ctx.save_for_backward(u, v)
        ctx.weight_shape = weight.shape
        return sigma.clone()

    @staticmethod
    def backward(ctx, grad):
        u, v = ctx.saved_tensors
        return grad * torch.outer(u, v).reshape(ctx.weight_shape), None, None, None


def spectral_normalize(
    weight: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``weight / sigma`` with the gradient of PyTorch's spectral norm parametrization.

    ``sigma`` must equal ``u . (W v)`` (``W = weight.reshape(out, -1)``), as returned by
    :func:`spectral_norm_step` for the updated ``u``, ``v``; it is not recomputed
    (no extra read of ``weight``). Gradients treat ``u`` and ``v`` as constants, so
    ``d sigma / d weight = u v^T`` exactly as in
    :func:`torch.nn.utils.parametrizations.spectral_norm`; the backward is itself
    differentiable (double backward works, e.g. for a gradient penalty).

    Args:
        weight: (out, ...) any shape whose first dimension is out.
        sigma: () the estimate for this weight (a 0-d tensor, no gradient needed).
        u: (out,) and v: (in,) with ``in = weight[0].numel()``; pass clones if the
            caller will update them in place before the backward runs.

    Returns:
        The normalised weight, shape of ``weight``.

    Raises:
        ValueError: ``u``/``v``/``sigma`` shapes do not fit ``weight``.
    """
    out_f = weight.shape[0]
    in_f = weight[0].numel() if weight.dim() > 1 else 1
    if u.shape != (out_f,) or v.shape != (in_f,) or sigma.numel() != 1:
        raise ValueError(
            f"spectral_normalize: for a weight of shape {tuple(weight.shape)} expected u ({out_f},), "
            f"v ({in_f},) and a scalar sigma, got u {tuple(u.shape)}, v {tuple(v.shape)}, "
            f"sigma {tuple(sigma.shape)}"
        )
    sigma = sigma.detach().reshape(()).to(weight.dtype)
    return _SpectralNormalize.apply(weight, sigma, u.detach().to(weight.dtype), v.detach().to(weight.dtype))
