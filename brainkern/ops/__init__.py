"""Differentiable functional ops with a plain-PyTorch reference and fast backends.

See :mod:`brainkern.ops._backend` for how a backend is chosen per call.
"""

from brainkern.ops._backend import BACKENDS, BackendError, backends, forced_backend, use_backend
from brainkern.ops.conv3d_gradfix import conv3d_gradfix, no_weight_gradients
from brainkern.ops.diff_augment3d import diff_augment3d, diff_augment3d_reference
from brainkern.ops.gradient_penalty import gradient_penalty, gradient_penalty_reference
from brainkern.ops.mmd import mmd2, mmd2_batched, mmd2_batched_reference, mmd2_reference
from brainkern.ops.pixel_shuffle3d import (
    pixel_shuffle3d,
    pixel_shuffle3d_reference,
    pixel_unshuffle3d,
    pixel_unshuffle3d_reference,
)
from brainkern.ops.resize_conv3d import (
    fold_resize_conv_weight,
    fold_resize_conv_weight_transposed,
    resize_conv3d,
    resize_conv3d_impl_order,
    resize_conv3d_reference,
    use_resize_conv_impl,
)
from brainkern.ops.spectral_norm import spectral_norm_step, spectral_norm_step_reference, spectral_normalize

__all__ = [
    "BACKENDS",
    "BackendError",
    "backends",
    "conv3d_gradfix",
    "diff_augment3d",
    "diff_augment3d_reference",
    "fold_resize_conv_weight",
    "fold_resize_conv_weight_transposed",
    "forced_backend",
    "gradient_penalty",
    "gradient_penalty_reference",
    "mmd2",
    "mmd2_batched",
    "mmd2_batched_reference",
    "mmd2_reference",
    "no_weight_gradients",
    "pixel_shuffle3d",
    "pixel_shuffle3d_reference",
    "pixel_unshuffle3d",
    "pixel_unshuffle3d_reference",
    "resize_conv3d",
    "resize_conv3d_impl_order",
    "resize_conv3d_reference",
    "spectral_norm_step",
    "spectral_norm_step_reference",
    "spectral_normalize",
    "use_backend",
    "use_resize_conv_impl",
]
