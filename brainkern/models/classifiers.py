"""The registered classifiers of the augmentation experiments (Zhuang et al. 2019; King et al. 2024).

Zhuang, Schwing and Koyejo (2019) judge their synthetic fMRI maps by what they add to
two downstream classifiers trained on real (+ synthetic) maps and tested on real
ones:

- ``svm``: a linear SVM on the voxels inside a brain mask computed from the
  training maps (:class:`BrainMasker`, then standardisation, then ``LinearSVC``);
- ``dnn3d``: a 3D convolutional network shaped like their discriminator (the same
  number of convolution layers, LeakyReLU activations) without its label inputs
  (:class:`DNN3D`).

King et al. (2024) train a VGG-like 3D CNN as their schizophrenia "diagnosis
classifier" on real, augmented, mixed and synthetic sets:

- ``vgg3d``: three blocks of unpadded convolution, ReLU, BatchNorm and max pooling,
  then two dropout-regularised hidden linear layers (their Fig. S1;
  :class:`VGG3D`), trained with AdamW and kept at its minimum validation loss.

Both pick their hyper-parameters (the SVM's ``C``) or their weights (the network's
best epoch) on a validation split of real maps when ``fit`` is given one, as the
paper does. Volumes are ``(N, 1, D, H, W)`` maps; labels ``(N,)`` integers.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from brainkern.data.masks import foreground_mask
from brainkern.models.classifier import SklearnClassifier, TorchClassifier
from brainkern.models.registry import register_model

__all__ = ["DNN3D", "VGG3D", "BrainMasker", "dnn3d", "svm", "vgg3d"]  # noqa: F822  (BrainMasker: module __getattr__)


def __getattr__(name: str) -> Any:
    # scikit-learn takes about a second to import: BrainMasker (an sklearn transformer) is
    # made on first use, so importing brainkern.models does not pay for it. Pickles of it
    # resolve through here too.
    if name == "BrainMasker":
        return _brain_masker()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _brain_masker() -> type:
    """The ``BrainMasker`` class, made once."""
    if "BrainMasker" in globals():
        return globals()["BrainMasker"]
    from sklearn.base import BaseEstimator, TransformerMixin

    class BrainMasker(TransformerMixin, BaseEstimator):
        """Keeps the voxels of a brain mask fitted on the training rows (a scikit-learn transformer).

        ``fit`` computes the mask with :func:`brainkern.data.foreground_mask` from the
        rows it is given only (in a pipeline: the training fold), so held-out maps are
        cut with the training mask. Each map's background is its most frequent value,
        which survives per-map min-max scaling to [0, 1] where a zero test would not.

        Args:
            fraction: a voxel is kept when it differs from its map's background in at
                least this fraction of the training maps, in ``(0, 1]``.

        Attributes:
            mask_: ``(V,)`` bool, the kept voxels of a flattened volume.
        """

        def __init__(self, fraction: float = 0.5) -> None:
            self.fraction = fraction

        def fit(self, x: np.ndarray, y: Any = None) -> BrainMasker:
            """Fit the mask on ``x`` ``(N, V)`` flattened volumes.

            Raises:
                ValueError: a bad ``fraction`` or no voxel in the mask.
            """
            rows = np.asarray(x)
            self.mask_ = foreground_mask(rows.reshape(rows.shape[0], -1), self.fraction)
            self.n_features_in_ = self.mask_.size
            return self

        def transform(self, x: np.ndarray) -> np.ndarray:
            """``(N, V)`` -> ``(N, mask_.sum())`` masked voxels.

            Raises:
                ValueError: rows of another length than the training rows.
            """
            rows = np.asarray(x)
            rows = rows.reshape(rows.shape[0], -1)
            if rows.shape[1] != self.mask_.size:
                raise ValueError(
                    f"BrainMasker was fitted on rows of {self.mask_.size} voxels, got {rows.shape[1]}"
                )
            return rows[:, self.mask_]

    BrainMasker.__qualname__ = "BrainMasker"  # pickled by this module-level name
    globals()["BrainMasker"] = BrainMasker
    return BrainMasker


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


@register_model("svm", kind="classifier")
def svm(
    c: float | Sequence[float] = 1.0,
    mask_fraction: float = 0.5,
    max_iter: int = 10000,
    seed: int = 0,
) -> SklearnClassifier:
    """Linear SVM on brain-masked, standardised voxels (Zhuang et al. 2019).

    A pipeline of :class:`BrainMasker` (fitted on the training maps only),
    ``StandardScaler`` and ``LinearSVC``.

    Args:
        c: the SVM's ``C``, or a list of values; with several, ``fit`` needs
            ``validation`` and keeps the one with the best validation accuracy (the
            first listed on a tie), fitted on the training maps.
        mask_fraction: see :class:`BrainMasker`.
        max_iter: ``LinearSVC``'s iteration limit.
        seed: ``LinearSVC``'s ``random_state`` (its coordinate descent shuffles).

    Raises:
        ValueError: a non-positive or empty ``c``, a bad ``mask_fraction`` or ``max_iter``.
    """
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    values = list(c) if isinstance(c, (list, tuple)) else [c]
    if not values:
        raise ValueError("c must be a number or a non-empty list of numbers")
    values = [_positive_float(v, "c") for v in values]
    if not 0.0 < float(mask_fraction) <= 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    pipeline = make_pipeline(
        _brain_masker()(float(mask_fraction)),
        StandardScaler(),
        LinearSVC(C=values[0], max_iter=int(max_iter), random_state=int(seed)),
    )
    return SklearnClassifier(pipeline, grid={"linearsvc__C": values} if len(values) > 1 else None)


class DNN3D(nn.Module):
    """A 3D CNN classifier shaped like Zhuang et al.'s discriminator, without label inputs.

    Four blocks of ``Conv3d(k=3, stride=2, padding=1) -> BatchNorm3d -> LeakyReLU(0.2)``
    with ``width * (1, 2, 4, 8)`` channels (the discriminator's four convolution
    layers and activation), then global average pooling (so any grid works, and
    the head has few weights: the data sets are small), dropout and a linear layer.

    Args:
        num_classes: output width.
        width: channels of the first block.
        dropout: dropout probability before the linear layer.

    Shapes:
        ``(N, 1, D, H, W)`` -> ``(N, num_classes)`` logits.
    """

    def __init__(self, num_classes: int = 2, width: int = 8, dropout: float = 0.5) -> None:
        super().__init__()
        channels = [1] + [width * m for m in (1, 2, 4, 8)]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            # No conv bias: the BatchNorm's shift replaces it.
            blocks += [
                nn.Conv3d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(c_out),
                nn.LeakyReLU(0.2),
            ]
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"DNN3D expects volumes (N, 1, D, H, W), got shape {tuple(x.shape)}")
        return self.head(self.dropout(self.pool(self.features(x)).flatten(1)))


@register_model("dnn3d", kind="classifier")
def dnn3d(
    num_classes: int = 2,
    width: int = 8,
    dropout: float = 0.5,
    epochs: int = 30,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    patience: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> TorchClassifier:
    """3D CNN like Zhuang et al. (2019)'s discriminator, best epoch chosen on validation.

    A :class:`DNN3D` built under ``seed`` and trained by
    :class:`~brainkern.models.classifier.TorchClassifier` (Adam with L2
    ``weight_decay``, cross-entropy, seeded batches and dropout). With
    ``fit(..., validation=(x_val, y_val))`` it keeps the weights of the epoch with
    the best validation accuracy (ties: lower validation loss); ``patience`` stops
    early. ``num_classes`` must equal the number of classes in the training labels.

    Raises:
        ValueError: ``num_classes < 2``, ``width < 1``, ``dropout`` outside ``[0, 1)``,
            or bad training settings.
    """
    _check_head(num_classes, dropout)
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return _seeded_classifier(
        lambda: DNN3D(int(num_classes), int(width), float(dropout)),
        seed,
        lr,
        epochs=epochs,
        batch_size=batch_size,
        weight_decay=weight_decay,
        patience=patience,
        device=device,
    )


def _check_head(num_classes: int, dropout: float) -> None:
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _seeded_classifier(
    make: Callable[[], nn.Module], seed: int, lr: float, **settings: Any
) -> TorchClassifier:
    """A :class:`TorchClassifier` of the network ``make()`` builds under ``seed``."""
    # Forked so that building the network leaves the caller's global generator alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = make()
    return TorchClassifier(module, lr=_positive_float(lr, "lr"), seed=seed, **settings)


def vgg3d_features(shape: Sequence[int]) -> tuple[int, int, int]:
    """The grid after :class:`VGG3D`'s three blocks (each: a 3^3 convolution without
    padding, then pooling by 2, rounding down): ``(64, 64, 64) -> (6, 6, 6)``.

    Raises:
        ValueError: a grid that is not three sizes, or one that vanishes (every size
            must be at least 22).
    """
    sizes = [int(s) for s in shape]
    if len(sizes) != 3:
        raise ValueError(f"shape must be three sizes (D, H, W), got {tuple(shape)}")
    out = []
    for n in sizes:
        for _ in range(3):
            n = (n - 2) // 2
        out.append(n)
    if min(out) < 1:
        raise ValueError(
            f"VGG3D needs every grid size >= 22 (three unpadded 3^3 convolutions, each pooled by 2), "
            f"got shape {tuple(sizes)}"
        )
    return tuple(out)


class VGG3D(nn.Module):
    """King et al. (2024)'s diagnosis classifier (their Fig. S1), a VGG-like 3D CNN.

    Three blocks ``Conv3d(3^3, no padding) -> ReLU -> BatchNorm3d -> MaxPool3d(2)`` with
    ``(16, 64, 128)`` channels (times ``width``, at least 1), flattened, then
    ``Linear(256) -> Dropout -> ReLU -> Linear(128) -> Dropout -> ReLU -> Linear(out)``.
    At 64^3 the flattened features are ``128 * 6^3 = 27648``.

    The paper's network ends in one sigmoid unit (the probability of a patient).
    ``sigmoid_unit=True`` builds exactly that layer and returns the logits
    ``[0, z]`` for the two classes: their softmax is ``[1 - sigmoid(z), sigmoid(z)]``,
    so the cross-entropy brainkern trains with equals the paper's binary
    cross-entropy, and the network has the paper's 7,361,057 parameters at 64^3.
    Otherwise the last layer has ``num_classes`` units (129 more parameters for two
    classes).

    Args:
        num_classes: output classes (2 with ``sigmoid_unit``).
        shape: the input grid ``(D, H, W)``, every size >= 22 (it sets the first
            linear layer's width).
        width: multiplies the convolution channels (1: the paper's; smaller for
            small grids and CPUs).
        hidden: the two hidden linear layers' widths.
        dropout: dropout probability after each hidden linear layer (the paper
            gives none; 0.5 as in VGG16).
        sigmoid_unit: one output unit as the paper (see above).

    Shapes:
        ``(N, 1, D, H, W)`` -> ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 2,
        shape: Sequence[int] = (64, 64, 64),
        width: float = 1.0,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.5,
        sigmoid_unit: bool = False,
    ) -> None:
        super().__init__()
        if sigmoid_unit and num_classes != 2:
            raise ValueError(f"sigmoid_unit is the 2-class case, got num_classes={num_classes}")
        grid = vgg3d_features(shape)
        self.shape = tuple(int(s) for s in shape)
        channels = [1] + [max(1, round(c * width)) for c in (16, 64, 128)]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            blocks += [nn.Conv3d(c_in, c_out, 3), nn.ReLU(), nn.BatchNorm3d(c_out), nn.MaxPool3d(2)]
        self.features = nn.Sequential(*blocks)
        widths = [channels[-1] * grid[0] * grid[1] * grid[2], *(int(h) for h in hidden)]
        head: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
            head += [nn.Linear(n_in, n_out), nn.Dropout(dropout), nn.ReLU()]
        self.sigmoid_unit = bool(sigmoid_unit)
        head.append(nn.Linear(widths[-1], 1 if sigmoid_unit else int(num_classes)))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.shape:
            raise ValueError(
                f"VGG3D expects volumes (N, 1, {', '.join(map(str, self.shape))}), got shape {tuple(x.shape)}"
            )
        z = self.head(self.features(x))
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.sigmoid_unit else z


@register_model("vgg3d", kind="classifier")
def vgg3d(
    num_classes: int = 2,
    shape: Sequence[int] = (64, 64, 64),
    width: float = 1.0,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.5,
    sigmoid_unit: bool = False,
    epochs: int = 100,
    batch_size: int = 12,
    lr: float = 5e-6,
    weight_decay: float = 0.01,
    optimizer: str = "adamw",
    select: str = "loss",
    patience: int | None = None,
    seed: int = 0,
    device: str = "auto",
) -> TorchClassifier:
    """King et al. (2024)'s VGG-like 3D CNN diagnosis classifier, kept at its minimum validation loss.

    A :class:`VGG3D` built under ``seed`` and trained by
    :class:`~brainkern.models.classifier.TorchClassifier` with the paper's settings
    by default: AdamW, learning rate 5e-6, weight decay 0.01, batch 12, trained past
    convergence (``epochs``: the paper gives no count) with the weights of the epoch
    at the lowest validation loss restored (``fit(..., validation=...)``).

    Raises:
        ValueError: ``num_classes < 2``, a grid under 22, ``width`` or ``hidden`` not
            positive, ``dropout`` outside ``[0, 1)``, or bad training settings.
    """
    _check_head(num_classes, dropout)
    _positive_float(width, "width")
    if len(hidden) != 2 or min(int(h) for h in hidden) < 1:
        raise ValueError(f"hidden must be two positive widths, got {hidden!r}")
    return _seeded_classifier(
        lambda: VGG3D(int(num_classes), shape, float(width), hidden, float(dropout), bool(sigmoid_unit)),
        seed,
        lr,
        epochs=epochs,
        batch_size=batch_size,
        weight_decay=weight_decay,
        patience=patience,
        device=device,
        optimizer=optimizer,
        select=select,
    )
