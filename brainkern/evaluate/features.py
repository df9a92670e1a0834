"""Feature extractors for 3D brain volumes, and one function that runs them.

King et al. (2024, seed 003, "Quantitative evaluation") compute FID, precision /
recall and MMD on features of a 3D ResNet-50 pre-trained on medical volumes
(MedicalNet, Chen et al. 2019), because an ImageNet Inception network takes
neither 3D volumes nor learned anything about brains. Two extractors here:

- :func:`resnet50_3d`: MedicalNet's ResNet-50 architecture, globally average-pooled
  to 2048 features. Its pre-trained weights cannot be downloaded from this
  project; give a checkpoint file you have (``weights=``). Random weights are
  refused for metrics unless asked for (``allow_random=True``): features of an
  untrained network say little and must never be reported as MedicalNet's.
- :func:`fit_autoencoder` (``autoencoder-3d``): the default. A small 3D
  convolutional autoencoder trained, with a seed, on the real *training* volumes
  only (never on the volumes the metrics compare with); the features are its
  bottleneck averaged over a 2 x 2 x 2 grid of blocks. Why an autoencoder and not a
  classifier's penultimate layer: a diagnosis classifier keeps only what separates
  its classes (a brain with the wrong anatomy but the right ventricle size would
  look real to it), while an autoencoder must keep whatever it needs to redraw
  the whole volume, so its code responds to any departure from the data's
  anatomy; it needs no labels, and trains in seconds on a CPU at 32^3. The 2^3
  pooling keeps coarse position (left / right, front / back, top / bottom), which
  a global average would throw away. Its numbers are comparable only between
  sets judged by the same trained extractor: every table names it.

Every extractor is an ``nn.Module`` with ``name`` (what tables print),
``feature_dim``, ``features(x (B, 1, D, H, W)) -> (B, F)`` and ``check_usable()``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainkern.evaluate._volumes import VolumesLike, _check_count, _Volumes

__all__ = [
    "AutoencoderExtractor",
    "ResNet3d",
    "extract_features",
    "fit_autoencoder",
    "load_medicalnet_weights",
    "resnet50_3d",
]

# ResNet-50's Bottleneck blocks per stage, and each block's width expansion.
_RESNET50_BLOCKS = (3, 4, 6, 3)
_EXPANSION = 4
# MedicalNet's segmentation head ("conv_seg.*"): in its checkpoints, not part of a feature extractor.
_HEAD_PREFIX = "conv_seg."


# --------------------------------------------------------------------------- MedicalNet ResNet-50


class _Bottleneck(nn.Module):
    """1x1x1 reduce, 3x3x3 (strided and/or dilated), 1x1x1 expand, plus the shortcut.

    Attribute names (``conv1``, ``bn1``, ..., ``downsample.0/1``) are MedicalNet's, so
    its checkpoints load by name.
    """

    def __init__(self, c_in: int, width: int, stride: int, dilation: int, project: bool):
        super().__init__()
        c_out = width * _EXPANSION
        self.conv1 = nn.Conv3d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(
            width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(c_out)
        # Shortcut "B": a strided 1x1x1 projection where the shape changes, the identity elsewhere.
        self.downsample = (
            nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))
            if project
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(y + skip)


class ResNet3d(nn.Module):
    """MedicalNet's 3D ResNet-50 trunk, as a feature extractor (no segmentation head).

    Source of truth: the architecture of Tencent/MedicalNet (Chen, Ma and Zheng 2019,
    "Med3D"), ``models/resnet.py`` and ``setting.py`` of that repository, read for its
    layer shapes only (this code is written independently):

    - ``conv1``: 7x7x7, 1 -> 64 channels, stride 2, padding 3, no bias; BatchNorm, ReLU;
      3x3x3 max pooling, stride 2, padding 1;
    - four stages of Bottleneck blocks (``[3, 4, 6, 3]``, widths 64, 128, 256, 512,
      expansion 4 -> 256, 512, 1024, 2048 channels); stage 2 strides by 2; stages 3 and 4
      do **not** stride but dilate their 3x3x3 convolutions by 2 and 4 (MedicalNet keeps
      the resolution for segmentation), so a 32^3 input ends at 4^3, 1/8 of the grid;
    - the first block of a stage whose shape changes gets a strided 1x1x1 projection
      shortcut with BatchNorm (MedicalNet's shortcut type "B", the default of its
      ``setting.py`` and the one of its ResNet-50 checkpoint);
    - here, global average pooling of stage 4 -> 2048 features (King et al.'s use).

    Inputs are standardised per volume first (:meth:`standardise`), as MedicalNet
    standardises its training volumes.
    """

    feature_dim = 512 * _EXPANSION

    def __init__(self, blocks: Sequence[int] = _RESNET50_BLOCKS):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        c_in = 64
        stages = []
        # (width, stride, dilation) of stages 1 to 4.
        for width, stride, dilation, n in zip(
            (64, 128, 256, 512), (1, 2, 1, 1), (1, 1, 2, 4), blocks, strict=True
        ):
            layer = []
            for i in range(n):
                first = i == 0
                project = first and (stride != 1 or c_in != width * _EXPANSION)
                layer.append(_Bottleneck(c_in, width, stride if first else 1, dilation, project))
                c_in = width * _EXPANSION
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.weights: str | None = None
        self.allow_random = False

    @property
    def name(self) -> str:
        if self.weights is None:
            return "resnet50-3d (random weights, not MedicalNet's)"
        return f"medicalnet-resnet50 ({Path(self.weights).name})"

    def check_usable(self) -> None:
        """Raise unless pre-trained weights are loaded or random weights were allowed.

        Raises:
            ValueError: random weights without ``allow_random=True``.
        """
        if self.weights is None and not self.allow_random:
            raise ValueError(
                "resnet50_3d() has random weights: its features are not MedicalNet's. Give weights=PATH "
                "(a MedicalNet resnet_50.pth), or allow_random=True to use it anyway (tables then say "
                "'random weights')"
            )

    @staticmethod
    def standardise(x: torch.Tensor) -> torch.Tensor:
        """Each volume of ``x (B, 1, D, H, W)`` minus the mean and over the SD of its voxels above
        the volume's minimum (the head; MedicalNet standardises over non-zero voxels); those at
        the minimum (background) become 0."""
        flat = x.flatten(1)
        fg = flat > flat.min(dim=1, keepdim=True).values
        count = fg.sum(1, keepdim=True).clamp_min(1)
        mean = (flat * fg).sum(1, keepdim=True) / count
        var = (((flat - mean) * fg) ** 2).sum(1, keepdim=True) / count
        out = torch.where(fg, (flat - mean) / var.sqrt().clamp_min(1e-6), torch.zeros_like(flat))
        return out.reshape(x.shape)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, 2048)``."""
        x = F.relu(self.bn1(self.conv1(self.standardise(x))))
        x = F.max_pool3d(x, 3, stride=2, padding=1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))

    forward = features


def load_medicalnet_weights(model: ResNet3d, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a MedicalNet checkpoint into ``model`` (in place).

    MedicalNet saves ``{"state_dict": ...}`` from an ``nn.DataParallel`` model: every key
    starts with ``module.``, which is stripped. The segmentation head (``conv_seg.*``) is
    left out, and BatchNorm's ``num_batches_tracked`` counters may be absent (older
    PyTorch); anything else that is missing, unexpected or of another shape is an error.

    Returns:
        ``{"ignored": [keys of the head left out], "absent_counters": [...]}``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a state dict; missing, unexpected or mis-shaped keys (listed).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no MedicalNet checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path} is not a readable PyTorch checkpoint of tensors: {exc}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (or {{'state_dict': ...}}) of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ignored = sorted(k for k in state if k.startswith(_HEAD_PREFIX))
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIX)}
    own = model.state_dict()
    counters = sorted(k for k in own if k.endswith("num_batches_tracked") and k not in state)
    missing = sorted(set(own) - set(state) - set(counters))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... ({len(keys)} in all)" if len(keys) > 6 else "")

        parts = [
            f"{what}: {show(keys)}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
            if keys
        ]
        raise ValueError(
            f"{path} does not fit MedicalNet's ResNet-50 (after stripping 'module.'): " + "; ".join(parts)
        )
    for k in counters:
        state[k] = own[k]
    model.load_state_dict(state)
    return {"ignored": ignored, "absent_counters": counters}


def resnet50_3d(weights: str | os.PathLike | None = None, *, allow_random: bool = False) -> ResNet3d:
    """MedicalNet's 3D ResNet-50 (:class:`ResNet3d`) in eval mode, 2048 features per volume.

    Args:
        weights: a MedicalNet checkpoint (``resnet_50.pth``), loaded by
            :func:`load_medicalnet_weights`; ``None``: random weights.
        allow_random: let :func:`extract_features` use random weights (for tests and
            timing; the tables then name the extractor "random weights").

    Raises:
        FileNotFoundError, ValueError: as :func:`load_medicalnet_weights`.
    """
    model = ResNet3d()
    if weights is not None:
        load_medicalnet_weights(model, weights)
        model.weights = str(weights)
    model.allow_random = bool(allow_random)
    return model.eval()


# --------------------------------------------------------------------------- autoencoder-3d

_AE_STAGES = 3
_AE_POOL = 2


class AutoencoderExtractor(nn.Module):
    """A small 3D convolutional autoencoder; features = its bottleneck, averaged over 2^3 blocks.

    Encoder: three 4x4x4 stride-2 convolutions (``width``, ``2 width``, ``4 width`` channels,
    LeakyReLU 0.2), then a 1x1x1 convolution to ``code`` channels (the bottleneck, at 1/8
    of the grid). Decoder: the mirror, transposed convolutions back to the input's exact
    grid (any sides). Features: the bottleneck adaptively averaged to 2 x 2 x 2,
    ``code * 8`` numbers per volume.
    """

    def __init__(self, width: int = 8, code: int = 16):
        super().__init__()
        chans = [1, width, 2 * width, 4 * width]
        self.down = nn.ModuleList(
            nn.Conv3d(a, b, 4, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.to_code = nn.Conv3d(chans[-1], code, 1)
        self.from_code = nn.Conv3d(code, chans[-1], 1)
        rev = chans[::-1]
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(a, b, 4, stride=2, padding=1) for a, b in zip(rev[:-1], rev[1:], strict=True)
        )
        self.feature_dim = code * _AE_POOL**3
        self.name = "autoencoder-3d"

    def check_usable(self) -> None:
        """Always usable (its weights are trained on the user's own training volumes)."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
        sizes = []
        for conv in self.down:
            sizes.append(x.shape[-3:])
            x = F.leaky_relu(conv(x), 0.2)
        return self.to_code(x), sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x (B, 1, D, H, W)``, same shape."""
        code, sizes = self.encode(x)
        y = F.leaky_relu(self.from_code(code), 0.2)
        for i, (deconv, size) in enumerate(zip(self.up, reversed(sizes), strict=True)):
            y = deconv(y, output_size=list(size))
            if i < len(self.up) - 1:
                y = F.leaky_relu(y, 0.2)
        return y

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, code * 8)``."""
        code, _ = self.encode(x)
        return F.adaptive_avg_pool3d(code, _AE_POOL).flatten(1)


def fit_autoencoder(
    train: VolumesLike,
    *,
    width: int = 8,
    code: int = 16,
    iters: int = 300,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
) -> AutoencoderExtractor:
    """Train the ``autoencoder-3d`` extractor on ``train`` ``(N, 1, D, H, W)`` (the real
    *training* volumes: never the volumes it will judge); returns it in eval mode.

    Mean squared reconstruction error, Adam, ``iters`` steps of ``batch_size`` volumes in
    a seeded random order; weights and order come from ``seed`` alone (the same seed
    gives the same extractor on the CPU). Each side of the grid must be at least 8.

    Raises:
        ValueError: fewer than 2 volumes, a side below 8, a non-positive setting.
    """
    vols = _Volumes(train, "train")
    for name, value in (("width", width), ("code", code), ("iters", iters), ("batch_size", batch_size)):
        _check_count(name, value)
    if len(vols) < 2:
        raise ValueError(f"the autoencoder needs at least 2 training volumes, got {len(vols)}")
    if min(vols.grid) < 2**_AE_STAGES:
        raise ValueError(f"each side of the grid must be at least {2**_AE_STAGES}, got {vols.grid}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    data = vols.take(torch.arange(len(vols)), torch.device("cpu"))
    if not bool(torch.isfinite(data).all()):
        raise ValueError("train holds NaN or infinite values")
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = AutoencoderExtractor(width, code)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batch = min(batch_size, len(vols))
    order = torch.randperm(len(vols), generator=g)
    pos = 0
    model.train()
    for _ in range(iters):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(vols), generator=g), 0
        x = data[order[pos : pos + batch]]
        pos += batch
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.final_loss = float(loss.detach())
    return model.eval()


# --------------------------------------------------------------------------- extraction


def extract_features(volumes: VolumesLike, extractor: nn.Module, batch_size: int = 16) -> np.ndarray:
    """Features of every volume, ``(N, 1, D, H, W)`` (or ``(N, D, H, W)``) -> ``(N, F)`` float64.

    Runs ``extractor.features`` without gradients, in eval mode, ``batch_size`` volumes at
    a time on the extractor's device (its train/eval mode is restored afterwards).

    Raises:
        ValueError: an extractor that refuses to be used (:meth:`ResNet3d.check_usable`),
            an empty set, ``batch_size < 1``, NaN or infinite features.
    """
    vols = _Volumes(volumes, "volumes")
    batch_size = _check_count("batch_size", batch_size)
    if len(vols) == 0:
        raise ValueError("volumes holds no volumes")
    extractor.check_usable()
    device = next(extractor.parameters()).device
    was_training = extractor.training
    extractor.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(vols), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(vols)))
                out.append(extractor.features(vols.take(rows, device)).double().cpu())
    finally:
        extractor.train(was_training)
    feats = torch.cat(out).numpy()
    if not np.isfinite(feats).all():
        raise ValueError(f"{extractor.name}: NaN or infinite features (NaN or inf in the volumes?)")
    return feats
