"""The feature network behind Seeliger et al.'s (2018, seed 004) image-space loss.

Seeliger et al. compare a reconstruction with the image shown in the scanner not only
pixel by pixel but through the early feature maps of a classifier trained on the stimulus
domain ("Feature matching networks"): an AlexNet variant with one input channel and 5x5
kernels in conv1, trained on 64x64 grey-scale ImageNet for natural images, and on
handwritten characters for their BRAINS set. The losses (:mod:`brainkern.reconstruct.loss`)
use the maps of conv1 and conv2 *before* their nonlinearity (section 2.3).

:class:`FeatureNet` is a small network of that shape for ``(N, 1, S, S)`` images in
[-1, 1] (``S`` divisible by 8, at least 32). Its widths are brainkern's: Seeliger et al.
say neither the widths nor how the 224x224 AlexNet was shrunk to 64x64; these are
small enough to train in about a minute on 1500 images on a laptop CPU:

- conv1: 5x5, 1 -> 32 channels, stride 1, padding 2, ReLU, 2x2 max-pool (AlexNet's conv1
  has stride 4 on 224x224 images; at 64x64 a stride of 1 keeps the edge detectors dense);
- conv2: 5x5, 32 -> 64, ReLU, 2x2 max-pool;
- conv3, conv4, conv5: 3x3, 96, 96, 64 channels, ReLU, then 2x2 max-pool;
- head: dropout 0.5, linear to 256, ReLU, dropout 0.5, linear to ``n_classes``
  (AlexNet's two 4096-wide layers, shrunk).

No local response normalisation (Seeliger et al. take the maps before it anyway).

:func:`train_feature_net` trains one on a labelled stimulus set (digit classes, or the
source photograph of each natural-image crop) with :class:`brainkern.models.TorchClassifier`
and returns it frozen; :func:`feature_vector` flattens the two maps for feature-space
correlation in identification.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainkern.data.augment import RandomTranslate
from brainkern.models.classifier import TorchClassifier

__all__ = [
    "FEATURE_LAYERS",
    "FeatureNet",
    "feature_vector",
    "load_feature_net",
    "save_feature_net",
    "train_feature_net",
]

FORMAT = "brainkern-featurenet-1"
FEATURE_LAYERS = ("conv1", "conv2")  # the maps Seeliger et al. match (section 2.3)
_KERNELS = (5, 5, 3, 3, 3)


class FeatureNet(nn.Module):
    """A small AlexNet-like classifier: ``(N, 1, S, S)`` in [-1, 1] -> ``(N, n_classes)`` logits.

    See the module docstring for the layers. :meth:`features` gives the conv1 and conv2
    maps before their ReLU, the maps Seeliger et al. (2018) match.

    Args:
        n_classes: number of output classes (>= 2).
        side: the image side ``S``, divisible by 8 and >= 32 (64 in Seeliger et al.).
        widths: output channels of conv1 .. conv5.
        hidden: width of the hidden linear layer.
        dropout: dropout probability in the head.

    Raises:
        ValueError: a bad side, fewer than 2 classes, or not five positive widths.
    """

    def __init__(
        self,
        n_classes: int,
        *,
        side: int = 64,
        widths: Sequence[int] = (32, 64, 96, 96, 64),
        hidden: int = 256,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if int(side) < 32 or int(side) % 8:
            raise ValueError(f"FeatureNet: side must be >= 32 and divisible by 8, got {side}")
        if int(n_classes) < 2:
            raise ValueError(f"FeatureNet: n_classes must be >= 2, got {n_classes}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1 or int(hidden) < 1:
            raise ValueError(
                f"FeatureNet: widths must be 5 positive ints and hidden >= 1, got {widths}, {hidden}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"FeatureNet: dropout must be in [0, 1), got {dropout}")
        self.n_classes, self.side, self.widths = int(n_classes), int(side), widths
        self.hidden, self.dropout = int(hidden), float(dropout)
        chans = (1, *widths)
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], k, padding=k // 2) for i, k in enumerate(_KERNELS)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(self.dropout),
            nn.Linear(widths[-1] * (self.side // 8) ** 2, self.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.n_classes),
        )

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (what :func:`save_feature_net` stores)."""
        return {
            "n_classes": self.n_classes,
            "side": self.side,
            "widths": list(self.widths),
            "hidden": self.hidden,
            "dropout": self.dropout,
        }

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != (self.side, self.side):
            raise ValueError(
                f"FeatureNet expects (N, 1, {self.side}, {self.side}) images, got {tuple(x.shape)}"
            )

    def _trunk(self, x: Tensor, stop: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the convolutions; return the last output and the pre-ReLU maps of conv1 .. conv``stop``."""
        self._check(x)
        maps: dict[str, Tensor] = {}
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if stop is not None:
                maps[f"conv{i + 1}"] = x
                if i + 1 == stop:
                    break
            x = F.relu(x)
            if i in (0, 1, 4):  # pool after conv1, conv2 and conv5
                x = F.max_pool2d(x, 2)
        return x, maps

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 1, S, S)`` images -> ``(N, n_classes)`` logits."""
        return self.head(self._trunk(x)[0])

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """The pre-nonlinearity maps Seeliger et al. match: ``{"conv1": (N, w1, S, S),
        "conv2": (N, w2, S/2, S/2)}`` (may be negative: taken before the ReLU)."""
        return self._trunk(x, stop=len(FEATURE_LAYERS))[1]

    def describe(self) -> str:
        """One line: input, classes, widths, parameter count."""
        n = sum(p.numel() for p in self.parameters())
        w = "-".join(str(c) for c in self.widths)
        return (
            f"FeatureNet: {self.side}x{self.side} grey -> {self.n_classes} classes; conv {w} "
            f"(5x5, 5x5, 3x3 x3), fc {self.hidden}; {n / 1e6:.2f} M parameters"
        )


def _images(images: np.ndarray | Tensor) -> Tensor:
    """``(N, S, S)`` array/tensor or ``(N, 1, S, S)`` tensor -> ``(N, 1, S, S)`` float32 tensor."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
        raise ValueError(f"expected (N, S, S) or (N, 1, S, S) square grey images, got shape {tuple(x.shape)}")
    return x.detach().to(torch.float32)


class _Shift:
    """Training-batch transform: a random whole-pixel shift of at most ``shift`` pixels per axis
    (the uncovered border filled with each image's minimum), ticking a progress bar per batch."""

    def __init__(self, shift: int, side: int, bar: Any) -> None:
        # RandomTranslate takes (N, C, D, H, W) and a fraction of each side: floor((shift + 0.5) / S * S)
        # is exactly ``shift`` pixels in-plane and 0 along the added depth axis of size 1.
        self.translate = RandomTranslate((shift + 0.5) / side) if shift > 0 else None
        self.bar = bar

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if self.translate is not None:
            x = self.translate(x.unsqueeze(2), generator).squeeze(2)
        if self.bar is not None:
            self.bar.update(1)
        return x


def train_feature_net(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Sequence[int],
    n_classes: int,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    augment: bool = True,
    shift: int = 4,
    val_fraction: float = 0.1,
    widths: Sequence[int] = (32, 64, 96, 96, 64),
    progress: bool = True,
    device: str = "cpu",
) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a :class:`FeatureNet` to classify the stimuli; return it frozen, with its history.

    Adam on the cross-entropy (Seeliger et al. trained their AlexNet as a classifier; the
    optimiser and settings here are brainkern's). A stratified ``val_fraction`` of the images
    (scikit-learn's ``train_test_split``, seeded) is held out; after every epoch the network is
    scored on it and the weights of the epoch with the lowest validation cross-entropy are kept
    (:class:`~brainkern.models.TorchClassifier`'s model selection; the loss rather than the
    accuracy because a small validation set ties or flips accuracies by one image). With ``augment``, each
    training batch is shifted by a random whole number of pixels, at most ``shift`` along
    each axis, per image (the border filled with the image's minimum: the background of
    digits). The same inputs and seed give the same network (initial weights, split,
    batch order, shifts and dropout all seeded).

    Args:
        images: ``(N, S, S)`` float32 array in [-1, 1], or ``(N, 1, S, S)`` tensor.
        labels: ``(N,)`` ints in ``[0, n_classes)``; every class needs 2 images or more
            when ``val_fraction > 0`` (one for each side of the split).
        n_classes: the number of classes (the network's outputs).
        epochs: passes over the training images.
        val_fraction: held-out fraction in ``[0, 1)``; 0 trains on everything (no selection).
        widths: conv1 .. conv5 channels of the network.
        progress: show a tqdm bar (one step per mini-batch).
        device: where to train (``"cpu"``, ``"cuda"``, ``"auto"``).

    Returns:
        ``(net, history)``: the network in eval mode with ``requires_grad_(False)``, on
        ``device``; ``history`` holds ``train_loss``, ``val_accuracy`` and ``val_loss`` (lists,
        one per epoch; the last two empty without validation), ``best_epoch``, ``seconds``,
        ``n_train``, ``n_val``, ``epochs`` and ``chance`` (the validation accuracy of always
        answering the most frequent validation class; 1 / n_classes without validation).

    Raises:
        ValueError: images and labels of different lengths, labels outside ``[0, n_classes)``,
            a class with too few images, or a bad ``val_fraction`` / ``epochs`` / ``shift``.
    """
    x = _images(images)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} images; give one label per image")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got {y.min()} .. {y.max()}; check n_classes")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if int(epochs) < 1 or int(shift) < 0:
        raise ValueError(f"epochs must be >= 1 and shift >= 0, got {epochs} and {shift}")
    counts = np.bincount(y, minlength=n_classes)
    need = 2 if val_fraction > 0 else 1
    if counts.min() < need:
        short = np.flatnonzero(counts < need).tolist()
        raise ValueError(
            f"classes {short[:10]} have fewer than {need} images; drop them and renumber the labels, "
            "or lower n_classes" + (" (or set val_fraction=0)" if need == 2 else "")
        )
    idx = np.arange(x.shape[0])
    if val_fraction > 0:
        from sklearn.model_selection import train_test_split  # noqa: PLC0415

        train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=y, random_state=seed)
        missing = np.setdiff1d(np.arange(n_classes), y[train_idx])
        if missing.size:
            raise ValueError(
                f"the split left classes {missing.tolist()[:10]} out of training; lower val_fraction"
            )
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    else:
        train_idx, val_idx = idx, idx[:0]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FeatureNet(n_classes, side=x.shape[-1], widths=widths)
    clf = TorchClassifier(
        net, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, select="loss"
    )
    validation = (x[val_idx], y[val_idx]) if val_idx.size else None
    n_batches = math.ceil(train_idx.size / batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=n_batches * int(epochs), desc="feature net", unit="batch")
    start = time.perf_counter()
    try:
        clf.fit(
            x[train_idx],
            y[train_idx],
            validation=validation,
            transform=_Shift(shift if augment else 0, x.shape[-1], bar),
        )
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    net = clf.module.eval().requires_grad_(False)
    chance = float(np.bincount(y[val_idx]).max() / val_idx.size) if val_idx.size else 1.0 / n_classes
    history = {
        "train_loss": [row["loss"] for row in clf.history],
        "val_accuracy": [row["val_accuracy"] for row in clf.history if "val_accuracy" in row],
        "val_loss": [row["val_loss"] for row in clf.history if "val_loss" in row],
        "best_epoch": int(clf.best_epoch),
        "epochs": int(epochs),
        "seconds": seconds,
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "chance": chance,
    }
    return net, history


def save_feature_net(net: FeatureNet, path: str | os.PathLike) -> Path:
    """Write the network's constructor arguments and weights to ``path`` (one ``torch.save`` file)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({"format": FORMAT, "config": net.config, "state_dict": state}, path)
    return path


def load_feature_net(path: str | os.PathLike) -> FeatureNet:
    """The :class:`FeatureNet` saved by :func:`save_feature_net`, on the CPU, eval mode, frozen.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a saved feature network.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no feature network at {path}; train one with train_feature_net and save it")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path} is not a readable PyTorch file: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a feature network written by save_feature_net ({FORMAT})")
    net = FeatureNet(**blob["config"])
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False)


@torch.no_grad()
def feature_vector(
    net: FeatureNet, images: np.ndarray | Tensor, *, batch_size: int = 128, pool: int = 1
) -> Tensor:
    """conv1 and conv2 pre-activation maps of each image, flattened and concatenated: ``(N, F)``.

    For feature-space correlation between reconstructions and stimuli. At 64x64 with the
    default widths ``F = 32 * 64 * 64 + 64 * 32 * 32 = 196608`` (0.8 MB per image in
    float32); ``pool > 1`` averages each map over ``pool x pool`` blocks first (brainkern's
    option, to shrink ``F`` by ``pool ** 2``).

    Args:
        images: ``(N, S, S)`` array/tensor or ``(N, 1, S, S)`` tensor in [-1, 1].
        pool: average-pooling factor; ``S / 2`` must be divisible by it.

    Returns:
        ``(N, F)`` float32 tensor on the CPU, in image order.
    """
    x = _images(images)
    if pool < 1 or (net.side // 2) % pool:
        raise ValueError(f"pool must be >= 1 and divide {net.side // 2}, got {pool}")
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = []
    for part in x.split(batch_size):
        maps = net.features(part.to(device))
        flat = [(F.avg_pool2d(m, pool) if pool > 1 else m).flatten(1) for m in maps.values()]
        out.append(torch.cat(flat, dim=1).cpu())
    net.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)
