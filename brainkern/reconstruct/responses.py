"""Brain responses for reconstruction (Seeliger et al. 2018, seed 004): a simulator, a loader, PCA.

Seeliger et al. decode a GAN's latent vector from fMRI responses of early visual cortex
(BRAINS: V1 and V2; vim-1 of Kay et al. 2008: V1-V3) after reducing the voxels with PCA.
This module supplies the responses:

- :class:`GaborEncoder` simulates V1-like voxels with a Gabor-wavelet contrast-energy
  encoding model in the manner of Kay et al. (2008): a wavelet pyramid (several spatial
  frequencies, 8 orientations, quadrature pairs, a grid of positions per frequency), the
  contrast energy ``sqrt(even^2 + odd^2)`` of each wavelet, a compressive nonlinearity, and
  voxels that pool the energies of the wavelets in their receptive field (RF) with weights
  tuned mildly to orientation and to a spatial-frequency band. RF centres lie on a
  retinotopic map (density falling with eccentricity) and RFs grow with eccentricity.
  :func:`simulate_responses` adds measurement noise at a stated signal-to-noise ratio and
  averages repeats, as the paper averages repeated presentations.
- :func:`load_responses` reads a user's data (a 4D NIfTI series or a samples x voxels
  array, plus a table naming each sample's stimulus and part); :func:`average_repeats`
  averages repeated samples of a stimulus; :func:`save_responses` writes what it reads.
- :func:`reduce` fits PCA on the training rows only and applies it to both parts, as the
  paper does (99% variance kept for BRAINS and Generic Object Decoding, 90% for vim-1).

Images are float32 ``(N, S, S)`` in [-1, 1]; pixel coordinates are ``(row, col)`` with the
image centre at ``((S - 1) / 2, (S - 1) / 2)``. An orientation ``theta`` (radians) is the
direction of a wave's modulation, ``cos(theta) * col + sin(theta) * row`` (rows point down):
``theta = 0`` gives vertical stripes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PARTS",
    "GaborEncoder",
    "Responses",
    "average_repeats",
    "fit_pca",
    "grating",
    "load_responses",
    "noise_ceiling",
    "reduce",
    "save_responses",
    "simulate",
    "simulate_responses",
]

PARTS = ("train", "test")
"""The parts a sample may belong to."""

_NIFTI = (".nii", ".nii.gz")


def _centre(size: int) -> float:
    return (size - 1) / 2.0


def _wave_phase(
    rows: np.ndarray, cols: np.ndarray, centre: tuple[float, float], frequency: float, theta: float, size: int
) -> np.ndarray:
    """Phase (radians) of a wave of ``frequency`` cycles per image along ``theta``, zero at ``centre``."""
    along = np.cos(theta) * (cols - centre[1]) + np.sin(theta) * (rows - centre[0])
    return (2.0 * np.pi * frequency / size) * along


def grating(
    size: int,
    frequency: float,
    orientation: float,
    *,
    phase: float = 0.0,
    centre: tuple[float, float] | None = None,
    sigma: float | None = None,
    contrast: float = 1.0,
) -> np.ndarray:
    """A sine grating, full field or in a Gaussian window: a probe for :class:`GaborEncoder`.

    Args:
        size: image side S.
        frequency: cycles per image.
        orientation: direction of modulation in radians (0: vertical stripes).
        phase: phase at ``centre`` in radians (0: a cosine peak).
        centre: ``(row, col)`` of the window and of the phase origin; default the image centre.
        sigma: SD in pixels of a Gaussian window; None for the full field.
        contrast: peak amplitude (at most 1 keeps the image in [-1, 1]).

    Returns:
        ``(S, S)`` float32 in [-contrast, contrast] on a mid-grey (0) ground.
    """
    c = (_centre(size), _centre(size)) if centre is None else (float(centre[0]), float(centre[1]))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    image = contrast * np.cos(_wave_phase(rows, cols, c, frequency, orientation, size) + phase)
    if sigma is not None:
        image *= np.exp(-((rows - c[0]) ** 2 + (cols - c[1]) ** 2) / (2.0 * sigma**2))
    return image.astype(np.float32)


def _as_images(images: Any, size: int) -> np.ndarray:
    """``(N, S, S)`` float32 from an array or tensor ``(N, S, S)``, ``(N, 1, S, S)`` or ``(S, S)``."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (size, size):
        raise ValueError(f"images must be (N, {size}, {size}) for this encoder; got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values; clean them before encoding")
    if x.size and float(np.abs(x).max()) > 1.0 + 1e-3:
        top = float(np.abs(x).max())
        raise ValueError(f"images must lie in [-1, 1] (max |value| {top:.3g}); rescale them")
    return x


def _pink_noise(n: int, size: int, seed: int) -> np.ndarray:
    """``(n, S, S)`` float32 noise with a 1/f amplitude spectrum (natural-image-like), scaled to [-1, 1]."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * np.exp(2j * np.pi * rng.random((n, size, fx.shape[1])))
    x = np.fft.irfft2(spectrum, s=(size, size))
    x /= np.abs(x).max(axis=(1, 2), keepdims=True)
    return x.astype(np.float32)


class GaborEncoder:
    """Simulated V1-like voxels: a Gabor-wavelet contrast-energy encoding model (after Kay et al. 2008).

    The paper's data (vim-1, BRAINS) cannot ship with brainkern; this encoder makes responses
    that depend on the stimulus the way early visual cortex does, so the reconstruction
    pipeline can run end to end on any stimulus domain.

    **Wavelet pyramid.** For each spatial frequency ``f`` (cycles per image; wavelength
    ``lambda = S / f``) there are ``n_orientations`` orientations and a quadrature pair (cosine
    and sine phase). The Gaussian envelope's SD follows from a ``bandwidth`` of one octave:
    ``sigma = lambda * sqrt(ln 2 / 2) / pi * (2^b + 1) / (2^b - 1)`` (0.56 lambda). As in Kay et
    al., each frequency tiles the image with its own square grid of positions whose spacing
    scales with the wavelength; brainkern spaces neighbours ``spacing`` envelope SDs apart
    (default 2, a choice: coarse grids leave gaps between low-frequency wavelets). Each
    wavelet is cut off at ``truncate`` SDs, made zero-mean over its support (a uniform image
    gives no response) and scaled to unit norm; the bank is a sparse matrix
    ``(n_wavelets, S*S)`` per phase.

    **Energy.** ``e = sqrt(even^2 + odd^2)`` of each wavelet, then a compressive nonlinearity:
    ``"log"`` (default) ``log(1 + e)``, ``"sqrt"`` ``sqrt(e)``, or ``"none"``. Kay et al. also
    compress the contrast energy; the exact function here is brainkern's choice.

    **Voxels** (all of this is brainkern's choice; the paper uses measured voxels). RF
    centres: polar angle uniform, eccentricity log-uniform in ``[ecc_min * S, S / 2]`` (so
    density falls with eccentricity, and every centre lies in the image). RF size (Gaussian
    SD, pixels) ``sizes = rf_base * S + rf_slope * eccentricity``. Preferred frequency
    ``frequencies = cycles_per_sd * S / sizes`` jittered by ``frequency_jitter`` octaves (SD)
    and clipped to the pyramid's range: larger RFs prefer lower frequencies. Each voxel
    pools every wavelet's energy with weight

    ``exp(-d^2 / (2 (size^2 + sigma_w^2)))``  (overlap of the RF with the wavelet's envelope)
    ``* exp(-(log2 f_w - log2 f_v)^2 / (2 frequency_bandwidth^2))``  (frequency band)
    ``* (1 + tuning * cos(2 (theta_w - theta_v))) * g[v, o]``  (mild orientation tuning),

    with ``d`` the distance between the wavelet's and the RF's centres, ``theta_v`` the
    voxel's preferred orientation (uniform) and ``g`` random positive factors per voxel and
    orientation in ``1 +- orientation_jitter``; each voxel's weights sum to 1.

    Attributes:
        centres: ``(V, 2)`` RF centres ``(row, col)`` in pixels.
        sizes: ``(V,)`` RF SDs in pixels.
        frequencies: ``(V,)`` preferred spatial frequencies, cycles per image.
        orientations: ``(V,)`` preferred orientations, radians in [0, pi).
        pooling: ``(V, n_wavelets)`` the voxels' weights over wavelets.
        wavelet_centres: ``(n_wavelets, 2)``; ``wavelet_frequencies``, ``wavelet_orientations``,
            ``wavelet_sigmas``: ``(n_wavelets,)``.
    """

    def __init__(
        self,
        size: int = 64,
        n_voxels: int = 1000,
        seed: int = 0,
        *,
        wavelet_frequencies: Sequence[float] | None = None,
        n_orientations: int = 8,
        bandwidth: float = 1.0,
        spacing: float = 2.0,
        truncate: float = 3.0,
        nonlinearity: str = "log",
        ecc_min: float = 0.02,
        rf_base: float = 0.03,
        rf_slope: float = 0.2,
        cycles_per_sd: float = 0.5,
        frequency_jitter: float = 0.3,
        frequency_bandwidth: float = 1.0,
        tuning: float = 0.5,
        orientation_jitter: float = 0.25,
        n_reference: int = 256,
    ) -> None:
        """Build the wavelet bank and draw the voxels (deterministic in ``seed``).

        Args:
            size: image side S.
            n_voxels: number of voxels V.
            seed: seed of the voxels' parameters and of the built-in reference images.
            wavelet_frequencies: cycles per image; default 1, 2, 4, ... up to ``S / 4``
                (1-16 for S = 64).
            n_orientations: orientations in [0, pi).
            bandwidth: spatial-frequency bandwidth of a wavelet in octaves.
            spacing: distance between neighbouring wavelets in envelope SDs.
            truncate: wavelet support radius in envelope SDs.
            nonlinearity: ``"log"``, ``"sqrt"`` or ``"none"`` (see the class docstring).
            ecc_min: smallest RF eccentricity as a fraction of S.
            rf_base, rf_slope: RF SD = ``rf_base * S + rf_slope * eccentricity`` pixels.
            cycles_per_sd: preferred cycles per RF SD (sets the preferred frequency).
            frequency_jitter: SD in octaves of the preferred frequency around that rule.
            frequency_bandwidth: SD in octaves of a voxel's frequency weighting.
            tuning: orientation tuning depth in [0, 1] (0: untuned).
            orientation_jitter: random orientation factors lie in ``1 +- orientation_jitter``.
            n_reference: number of built-in reference images (1/f noise) that fix the
                signal's scale in :meth:`signal` when no reference is passed.
        """
        from scipy import sparse  # noqa: PLC0415

        if size < 8:
            raise ValueError(f"size must be at least 8 pixels; got {size}")
        if n_voxels < 1:
            raise ValueError(f"n_voxels must be at least 1; got {n_voxels}")
        if nonlinearity not in ("log", "sqrt", "none"):
            raise ValueError(f"nonlinearity must be 'log', 'sqrt' or 'none'; got {nonlinearity!r}")
        if not 0.0 <= tuning <= 1.0:
            raise ValueError(f"tuning must lie in [0, 1] so weights stay positive; got {tuning}")
        if not 0.0 <= orientation_jitter < 1.0:
            raise ValueError(f"orientation_jitter must lie in [0, 1); got {orientation_jitter}")
        if wavelet_frequencies is None:
            wavelet_frequencies = [2.0**k for k in range(int(math.log2(size / 4)) + 1)]
        freqs = np.asarray(sorted(float(f) for f in wavelet_frequencies))
        if freqs.size == 0 or freqs.min() <= 0 or freqs.max() > size / 2:
            raise ValueError(f"wavelet_frequencies must lie in (0, {size / 2}] cycles per image; got {freqs}")
        self.size = size
        self.n_voxels = n_voxels
        self.seed = seed
        self.nonlinearity = nonlinearity
        self.n_reference = n_reference
        self.params: dict[str, Any] = {
            "size": size,
            "n_voxels": n_voxels,
            "seed": seed,
            "wavelet_frequencies": freqs.tolist(),
            "n_orientations": n_orientations,
            "bandwidth": bandwidth,
            "spacing": spacing,
            "truncate": truncate,
            "nonlinearity": nonlinearity,
            "ecc_min": ecc_min,
            "rf_base": rf_base,
            "rf_slope": rf_slope,
            "cycles_per_sd": cycles_per_sd,
            "frequency_jitter": frequency_jitter,
            "frequency_bandwidth": frequency_bandwidth,
            "tuning": tuning,
            "orientation_jitter": orientation_jitter,
            "n_reference": n_reference,
        }

        # Wavelet bank.
        sd_per_wavelength = math.sqrt(math.log(2) / 2) / math.pi * (2**bandwidth + 1) / (2**bandwidth - 1)
        thetas = np.arange(n_orientations) * np.pi / n_orientations
        entries: dict[str, list[np.ndarray]] = {"rows": [], "cols": [], "even": [], "odd": [], "env": []}
        w_centre, w_freq, w_theta, w_sigma, w_orient = [], [], [], [], []
        k = 0
        for f in freqs:
            sigma = sd_per_wavelength * size / f
            n = max(1, math.ceil(size / (spacing * sigma)))
            grid = (np.arange(n) + 0.5) * size / n - 0.5
            radius = truncate * sigma
            for cy in grid:
                r0, r1 = max(0, math.floor(cy - radius)), min(size, math.ceil(cy + radius) + 1)
                for cx in grid:
                    c0, c1 = max(0, math.floor(cx - radius)), min(size, math.ceil(cx + radius) + 1)
                    rows, cols = np.mgrid[r0:r1, c0:c1].astype(np.float64)
                    d2 = (rows - cy) ** 2 + (cols - cx) ** 2
                    inside = d2 <= radius**2
                    env = np.exp(-d2 / (2 * sigma**2)) * inside
                    flat = (rows * size + cols)[inside].astype(np.int64)
                    for o, theta in enumerate(thetas):
                        ph = _wave_phase(rows, cols, (cy, cx), f, theta, size)
                        pair = []
                        for carrier in (np.cos(ph), np.sin(ph)):
                            w = env * carrier
                            w = w - env * (w.sum() / env.sum())
                            w = w[inside]
                            pair.append(w / max(np.linalg.norm(w), 1e-12))
                        entries["rows"].append(np.full(flat.size, k, dtype=np.int64))
                        entries["cols"].append(flat)
                        entries["even"].append(pair[0])
                        entries["odd"].append(pair[1])
                        entries["env"].append(env[inside])
                        w_centre.append((cy, cx))
                        w_freq.append(f)
                        w_theta.append(theta)
                        w_sigma.append(sigma)
                        w_orient.append(o)
                        k += 1
        shape = (k, size * size)
        idx = (np.concatenate(entries["rows"]), np.concatenate(entries["cols"]))

        def bank(name: str) -> sparse.csr_matrix:
            values = np.concatenate(entries[name]).astype(np.float32)
            return sparse.csr_matrix((values, idx), shape=shape)

        self._even, self._odd, self._envelopes = bank("even"), bank("odd"), bank("env")
        self.wavelet_centres = np.asarray(w_centre, dtype=np.float64)
        self.wavelet_frequencies = np.asarray(w_freq, dtype=np.float64)
        self.wavelet_orientations = np.asarray(w_theta, dtype=np.float64)
        self.wavelet_sigmas = np.asarray(w_sigma, dtype=np.float64)
        w_orient_idx = np.asarray(w_orient, dtype=np.int64)

        # Voxels on a retinotopic map.
        rng = np.random.default_rng(seed)
        angle = rng.uniform(0.0, 2.0 * np.pi, n_voxels)
        lo, hi = max(ecc_min * size, 1e-3), size / 2.0
        ecc = np.exp(rng.uniform(math.log(lo), math.log(hi), n_voxels))
        c = _centre(size)
        self.centres = np.stack([c - ecc * np.sin(angle), c + ecc * np.cos(angle)], axis=1)
        self.eccentricities = ecc
        self.sizes = rf_base * size + rf_slope * ecc
        pref = cycles_per_sd * size / self.sizes * 2.0 ** (frequency_jitter * rng.standard_normal(n_voxels))
        self.frequencies = np.clip(pref, freqs.min(), freqs.max())
        self.orientations = rng.uniform(0.0, np.pi, n_voxels)
        gains = rng.uniform(1.0 - orientation_jitter, 1.0 + orientation_jitter, (n_voxels, n_orientations))

        d2 = ((self.centres[:, None, :] - self.wavelet_centres[None, :, :]) ** 2).sum(-1)
        spatial = np.exp(-d2 / (2.0 * (self.sizes[:, None] ** 2 + self.wavelet_sigmas[None, :] ** 2)))
        octaves = np.log2(self.wavelet_frequencies)[None, :] - np.log2(self.frequencies)[:, None]
        band = np.exp(-(octaves**2) / (2.0 * frequency_bandwidth**2))
        dtheta = self.wavelet_orientations[None, :] - self.orientations[:, None]
        orient = (1.0 + tuning * np.cos(2.0 * dtheta)) * gains[:, w_orient_idx]
        weights = spatial * band * orient
        self.pooling = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        self._reference_stats: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_wavelets(self) -> int:
        """Number of wavelets (each a quadrature pair)."""
        return int(self._even.shape[0])

    def __repr__(self) -> str:
        return (
            f"GaborEncoder(size={self.size}, n_voxels={self.n_voxels}, seed={self.seed}, "
            f"n_wavelets={self.n_wavelets}, nonlinearity={self.nonlinearity!r})"
        )

    def energies(self, images: Any) -> np.ndarray:
        """Compressed contrast energy of every wavelet: images ``(N, S, S)`` -> ``(N, n_wavelets)``."""
        x = _as_images(images, self.size).reshape(-1, self.size * self.size)
        even = np.asarray(self._even @ x.T).T
        odd = np.asarray(self._odd @ x.T).T
        e = np.sqrt(even**2 + odd**2)
        if self.nonlinearity == "log":
            return np.log1p(e)
        if self.nonlinearity == "sqrt":
            return np.sqrt(e)
        return e

    def encode(self, images: Any, *, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """Noise-free voxel responses: images ``(N, S, S)`` in [-1, 1] -> ``(N, V)`` float32.

        Args:
            images: array or tensor ``(N, S, S)`` (or ``(N, 1, S, S)``).
            batch_size: images per matrix product.
            progress: show a tqdm bar over batches.
        """
        from tqdm.auto import tqdm  # noqa: PLC0415

        x = _as_images(images, self.size)
        out = np.empty((x.shape[0], self.n_voxels), dtype=np.float32)
        starts = range(0, x.shape[0], batch_size)
        for s in tqdm(starts, desc="encoding", unit="batch", disable=not progress or len(starts) < 2):
            out[s : s + batch_size] = self.energies(x[s : s + batch_size]) @ self.pooling.T
        return out

    def reference_stats(
        self, reference: Any = None, *, progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-voxel mean and SD ``(V,)`` of the noise-free responses to a reference set.

        ``reference`` ``(M, S, S)``: the experiment's training stimuli (recommended: then the
        signal has unit variance on the stimulus domain, and no test image enters the scale).
        None: ``n_reference`` 1/f-noise images drawn from the encoder's seed (cached).
        A voxel whose responses do not vary gets SD 1.
        """
        if reference is None and self._reference_stats is not None:
            return self._reference_stats
        images = _pink_noise(self.n_reference, self.size, self.seed + 1) if reference is None else reference
        r = self.encode(images, progress=progress).astype(np.float64)
        if r.shape[0] < 2:
            raise ValueError("the reference set needs at least 2 images to measure each voxel's variance")
        mean, sd = r.mean(axis=0), r.std(axis=0)
        sd[sd <= 1e-12 * max(float(np.abs(mean).max()), 1.0)] = 1.0
        if reference is None:
            self._reference_stats = (mean, sd)
        return mean, sd

    def signal(self, images: Any, *, reference: Any = None, progress: bool = True) -> np.ndarray:
        """Noise-free responses scaled by constants of the reference set: ``(N, V)`` float32.

        ``(encode(images) - mean) / sd`` with ``mean, sd`` from :meth:`reference_stats`; they
        never depend on ``images`` themselves (unless ``images`` is the reference), so train and
        test responses may be simulated in separate calls without leaking between them.
        """
        mean, sd = self.reference_stats(reference, progress=progress)
        return ((self.encode(images, progress=progress) - mean) / sd).astype(np.float32)

    def rf_maps(self, *, effective: bool = False) -> np.ndarray:
        """Where each voxel looks: ``(V, S, S)`` float32, each map's peak scaled to 1.

        ``effective=False``: the RF's Gaussian (centre ``centres``, SD ``sizes``).
        ``effective=True``: the voxel's pooling weights spread over the envelopes of the
        wavelets they weight (what the voxel actually sums over).
        """
        s = self.size
        if effective:
            maps = np.asarray((self._envelopes.T @ self.pooling.T).T, dtype=np.float64).reshape(-1, s, s)
        else:
            rows, cols = np.mgrid[0:s, 0:s].astype(np.float64)
            d2 = (rows[None] - self.centres[:, 0, None, None]) ** 2 + (
                cols[None] - self.centres[:, 1, None, None]
            ) ** 2
            maps = np.exp(-d2 / (2.0 * self.sizes[:, None, None] ** 2))
        return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def noise_ceiling(snr: float, repeats: int = 1) -> float:
    """Expected correlation of noise-free and measured responses: ``sqrt(snr r / (snr r + 1))``.

    With signal variance 1 (on the reference set) and single-trial noise variance ``1 / snr``,
    the mean of ``r`` repeats has noise variance ``1 / (snr r)``. E.g. snr 1: 0.71 (one trial),
    0.82 (2 repeats, the paper's training sets), 0.96 (13 repeats, vim-1's test set).
    """
    if snr < 0 or repeats < 1:
        raise ValueError(f"snr must be >= 0 and repeats >= 1; got snr={snr}, repeats={repeats}")
    if math.isinf(snr):
        return 1.0
    return math.sqrt(snr * repeats / (snr * repeats + 1.0))


def simulate_responses(
    images: Any,
    encoder: GaborEncoder,
    *,
    snr: float = 1.0,
    repeats: int = 2,
    seed: int | Sequence[int] = 0,
    reference: Any = None,
    progress: bool = True,
) -> np.ndarray:
    """Simulated measured responses ``(N, V)`` float32 to images ``(N, S, S)`` in [-1, 1].

    The signal is :meth:`GaborEncoder.signal` (zero mean and unit variance per voxel on the
    ``reference`` set: the training stimuli, or by default the encoder's 1/f-noise images).
    Each of ``repeats`` trials adds independent Gaussian noise of variance ``1 / snr``, so
    **snr is the single-trial ratio of signal variance (across reference images) to noise
    variance, per voxel**; the trials are averaged (noise variance ``1 / (snr * repeats)``),
    as the paper averages repeated presentations (2 for the BRAINS and vim-1 training sets,
    13 for vim-1's test set: call once per part). ``snr=inf`` gives the noise-free signal.
    The noise is deterministic in ``seed``; use different seeds for train and test.
    """
    if not snr > 0:
        raise ValueError(f"snr must be positive (inf for no noise); got {snr}")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer; got {repeats}")
    sig = encoder.signal(images, reference=reference, progress=progress)
    if math.isinf(snr):
        return sig
    rng = np.random.default_rng(seed)
    noise = np.zeros(sig.shape, dtype=np.float64)
    for _ in range(int(repeats)):
        noise += rng.standard_normal(sig.shape)
    return (sig + noise * (1.0 / math.sqrt(snr)) / repeats).astype(np.float32)


# --------------------------------------------------------------------------- user data


@dataclass
class Responses:
    """Brain responses, one row per sample (a time point, a trial or an average of repeats).

    Attributes:
        data: ``(n_samples, n_voxels)`` float32.
        stimuli: ``n_samples`` stimulus names (which image each sample showed).
        part: ``n_samples`` of ``"train"`` / ``"test"``.
        voxels: optional voxel information: for NIfTI input ``mask`` (path or None),
            ``affine`` (4 x 4 list), ``shape`` (X, Y, Z) and ``indices`` ``(n_voxels, 3)``.
        source: where the data came from.
        repeat: optional ``(n_samples,)`` repeat numbers from the table.
        n_averaged: optional ``(n_samples,)`` how many samples each row averages.
    """

    data: np.ndarray
    stimuli: list[str]
    part: list[str]
    voxels: dict[str, Any] | None = None
    source: str = ""
    repeat: np.ndarray | None = None
    n_averaged: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, dtype=np.float32)
        if self.data.ndim != 2:
            raise ValueError(f"data must be (n_samples, n_voxels); got shape {self.data.shape}")
        n = self.data.shape[0]
        if len(self.stimuli) != n or len(self.part) != n:
            raise ValueError(
                f"data has {n} samples but {len(self.stimuli)} stimulus names and {len(self.part)} parts; "
                "give one of each per sample"
            )
        bad = sorted(set(self.part) - set(PARTS))
        if bad:
            raise ValueError(f"unknown part(s) {bad}; each sample's part must be 'train' or 'test'")

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_voxels(self) -> int:
        return int(self.data.shape[1])

    def select(self, part: str) -> Responses:
        """The samples of one part (``"train"`` or ``"test"``), in order."""
        if part not in PARTS:
            raise ValueError(f"part must be 'train' or 'test'; got {part!r}")
        idx = [i for i, p in enumerate(self.part) if p == part]
        return Responses(
            data=self.data[idx],
            stimuli=[self.stimuli[i] for i in idx],
            part=[part] * len(idx),
            voxels=self.voxels,
            source=self.source,
            repeat=None if self.repeat is None else self.repeat[idx],
            n_averaged=None if self.n_averaged is None else self.n_averaged[idx],
        )


def _read_table(table: str | Path) -> Any:
    import pandas as pd  # noqa: PLC0415

    path = Path(table)
    if not path.is_file():
        raise FileNotFoundError(f"stimulus table {path} not found; give a CSV/TSV (columns stimulus, part)")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    df = pd.read_csv(path, sep=sep, dtype={"stimulus": str, "part": str})
    df.columns = [str(c).strip().lower() for c in df.columns]
    missing = [c for c in ("stimulus", "part") if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it needs 'stimulus', 'part' (optional 'repeat')")
    for col in ("stimulus", "part"):
        empty = df[col].isna()
        if empty.any():
            rows = (np.flatnonzero(empty)[:5] + 1).tolist()
            raise ValueError(f"{path}: column {col!r} is empty in data row(s) {rows}; fill them in")
    if "repeat" in df.columns and df["repeat"].isna().any():
        raise ValueError(f"{path}: column 'repeat' is empty in some rows; fill it or drop the column")
    return df


def _read_matrix(path: Path) -> np.ndarray:
    import pandas as pd  # noqa: PLC0415

    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    df = pd.read_csv(path, sep=sep, header=None)
    try:
        return df.apply(pd.to_numeric).to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        df = pd.read_csv(path, sep=sep, header=0)
        try:
            return df.apply(pd.to_numeric).to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} must hold numbers only (an optional header row aside): {err}") from err


def _read_nifti(path: Path, mask: str | Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    import nibabel as nib  # noqa: PLC0415

    img = nib.load(str(path))
    series = np.asarray(img.dataobj, dtype=np.float32)
    if series.ndim != 4:
        raise ValueError(f"{path} must be a 4D series X x Y x Z x T; got shape {series.shape}")
    if mask is None:
        finite = np.isfinite(series).all(axis=3)
        with np.errstate(invalid="ignore"):
            keep = finite & (np.nanstd(series, axis=3) > 0)
    else:
        mpath = Path(mask)
        if not mpath.is_file():
            raise FileNotFoundError(f"mask {mpath} not found; give a 3D NIfTI on the series' grid or None")
        mimg = nib.load(str(mpath))
        keep = np.asarray(mimg.dataobj).squeeze() > 0
        if keep.shape != series.shape[:3]:
            raise ValueError(f"mask {mpath} has shape {keep.shape} but the series is {series.shape[:3]}")
        if not np.allclose(mimg.affine, img.affine, atol=1e-3):
            raise ValueError(f"mask {mpath} has another affine than {path}; resample it onto the series")
    if not keep.any():
        raise ValueError(f"no voxels selected in {path}: the mask is empty or every voxel is constant")
    data = series[keep].T
    info = {
        "mask": None if mask is None else str(mask),
        "affine": np.asarray(img.affine).tolist(),
        "shape": list(series.shape[:3]),
        "indices": np.argwhere(keep).astype(np.int64),
    }
    return data, info


def load_responses(path: str | Path, table: str | Path, *, mask: str | Path | None = None) -> Responses:
    """Read a user's responses and the table saying what each sample showed.

    Args:
        path: a 4D NIfTI series (``.nii`` / ``.nii.gz``, X x Y x Z x T: each time point a
            sample) or a samples x voxels array (``.npy``, or ``.csv`` / ``.tsv`` of numbers,
            an optional header row aside).
        table: CSV (or ``.tsv``) with one row per sample, in order: columns ``stimulus``
            (the stimulus' name or image file, kept as written) and ``part`` (``train`` /
            ``test``, any case), optionally ``repeat``.
        mask: NIfTI input only: a 3D NIfTI on the series' grid; voxels > 0 become columns.
            Default: voxels finite and not constant over time.

    Returns:
        :class:`Responses` with ``data`` ``(n_samples, n_voxels)`` float32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"responses {path} not found; give a .nii/.nii.gz series or .npy/.csv array")
    name = path.name.lower()
    if name.endswith(_NIFTI):
        data, voxels = _read_nifti(path, mask)
    elif path.suffix.lower() in (".npy", ".csv", ".tsv", ".tab"):
        if mask is not None:
            raise ValueError("mask applies to NIfTI series only; select the columns of an array yourself")
        data, voxels = _read_matrix(path), None
        if data.ndim != 2:
            raise ValueError(f"{path} must be samples x voxels (2D); got shape {data.shape}")
    else:
        raise ValueError(f"{path}: unknown format; use .nii, .nii.gz, .npy, .csv or .tsv")
    df = _read_table(table)
    if len(df) != data.shape[0]:
        raise ValueError(
            f"{path.name} has {data.shape[0]} samples but {Path(table).name} has {len(df)} rows; "
            "give one table row per sample"
        )
    bad = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{path.name} has NaN or infinite values in {bad.size} sample(s) (first: row {bad[0]}); "
            "clean them or mask those voxels out"
        )
    part = [str(p).strip().lower() for p in df["part"]]
    unknown = sorted(set(part) - set(PARTS))
    if unknown:
        raise ValueError(f"{Path(table).name}: unknown part(s) {unknown}; use 'train' or 'test'")
    repeat = df["repeat"].to_numpy(dtype=np.int64) if "repeat" in df.columns else None
    return Responses(
        data=data.astype(np.float32),
        stimuli=[str(s).strip() for s in df["stimulus"]],
        part=part,
        voxels=voxels,
        source=str(path),
        repeat=repeat,
    )


def average_repeats(responses: Responses) -> Responses:
    """One row per (stimulus, part): the mean of its samples, in order of first appearance.

    The paper averages the repeated presentations of each stimulus (2 for BRAINS and vim-1
    training, 13 for vim-1 test). ``n_averaged`` counts the samples each row averages
    (weighted by any earlier ``n_averaged``).
    """
    keys = list(zip(responses.stimuli, responses.part, strict=True))
    order: dict[tuple[str, str], int] = {}
    group = np.array([order.setdefault(k, len(order)) for k in keys], dtype=np.int64)
    counts = np.ones(responses.n_samples)
    if responses.n_averaged is not None:
        counts = responses.n_averaged.astype(np.float64)
    sums = np.zeros((len(order), responses.n_voxels), dtype=np.float64)
    np.add.at(sums, group, responses.data.astype(np.float64) * counts[:, None])
    total = np.bincount(group, weights=counts, minlength=len(order))
    return Responses(
        data=(sums / total[:, None]).astype(np.float32),
        stimuli=[k[0] for k in order],
        part=[k[1] for k in order],
        voxels=responses.voxels,
        source=responses.source,
        n_averaged=np.rint(total).astype(np.int64),
    )


def save_responses(responses: Responses, folder: str | Path) -> Path:
    """Write ``responses.npy`` and ``stimuli.csv`` (the table :func:`load_responses` reads); returns folder.

    ``load_responses(folder / "responses.npy", folder / "stimuli.csv")`` gives the same data,
    stimuli, parts and repeats back (voxel information is not saved).
    """
    import pandas as pd  # noqa: PLC0415

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "responses.npy", np.asarray(responses.data, dtype=np.float32))
    table: dict[str, Any] = {"stimulus": responses.stimuli, "part": responses.part}
    if responses.repeat is not None:
        table["repeat"] = responses.repeat
    pd.DataFrame(table).to_csv(out / "stimuli.csv", index=False)
    return out


def simulate(
    train_images: Any,
    test_images: Any,
    encoder: GaborEncoder,
    *,
    train_names: Sequence[str],
    test_names: Sequence[str],
    snr: float = 1.0,
    repeats: tuple[int, int] = (2, 13),
    seed: int = 0,
    progress: bool = True,
) -> Responses:
    """Simulated responses to an experiment's train and test stimuli, one averaged row per stimulus.

    The signal's scale comes from the training stimuli alone (``reference=train_images``),
    so ``snr`` holds on the stimulus domain and no test image shapes it. Repeats default to
    vim-1's (2 training, 13 test); the two parts get independent noise.

    Args:
        train_images, test_images: ``(N, S, S)`` in [-1, 1].
        encoder: the simulated voxels.
        train_names, test_names: the stimuli's names (one per image).
        snr: single-trial signal-to-noise variance ratio (see :func:`simulate_responses`).
        repeats: trials averaged per (training, test) stimulus.
        seed: noise seed.
        progress: show tqdm bars.
    """
    if len(train_names) != len(train_images) or len(test_names) != len(test_images):
        raise ValueError(
            f"got {len(train_images)} / {len(test_images)} train / test images but "
            f"{len(train_names)} / {len(test_names)} names; give one name per image"
        )
    kw = {"encoder": encoder, "snr": snr, "reference": train_images, "progress": progress}
    train = simulate_responses(train_images, repeats=repeats[0], seed=[seed, 0], **kw)
    test = simulate_responses(test_images, repeats=repeats[1], seed=[seed, 1], **kw)
    n_train, n_test = len(train_names), len(test_names)
    return Responses(
        data=np.concatenate([train, test]),
        stimuli=[str(s) for s in train_names] + [str(s) for s in test_names],
        part=["train"] * n_train + ["test"] * n_test,
        source=f"simulated: {encoder!r}, snr={snr}, repeats={tuple(repeats)}, seed={seed}",
        n_averaged=np.array([repeats[0]] * n_train + [repeats[1]] * n_test, dtype=np.int64),
    )


# --------------------------------------------------------------------------- PCA


def _check_variance(variance: float) -> None:
    if not 0.0 < variance < 1.0:
        raise ValueError(f"variance is the fraction of variance PCA keeps, in (0, 1); got {variance}")


def fit_pca(train: np.ndarray | Responses, variance: float = 0.99) -> Any:
    """scikit-learn ``PCA`` fitted on training rows ``(n_train, V)``, keeping ``variance`` of their variance.

    PCA demeans with the training mean. The paper keeps 99% for BRAINS and Generic Object
    Decoding and 90% for vim-1 (far more voxels), fitting on the training set only (on single
    trials for vim-1 and Generic Object Decoding, whose train and test averages differ in SNR).
    A :class:`Responses` must hold training rows only.
    """
    from sklearn.decomposition import PCA  # noqa: PLC0415

    _check_variance(variance)
    if isinstance(train, Responses):
        if any(p != "train" for p in train.part):
            raise ValueError("fit_pca got test rows; pass responses.select('train')")
        train = train.data
    x = np.asarray(train, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"train must be (n_train >= 2, n_voxels); got shape {x.shape}")
    return PCA(n_components=variance, svd_solver="full").fit(x)


def reduce(train: np.ndarray, test: np.ndarray, variance: float = 0.99) -> tuple[np.ndarray, np.ndarray, Any]:
    """PCA fitted on ``train`` ``(n_train, V)`` only, applied to both: ``(train_pcs, test_pcs, pca)``.

    Returns float32 ``(n_train, K)`` and ``(n_test, K)`` component scores and the fitted PCA
    (:func:`fit_pca`); ``test`` never enters the fit.
    """
    test = np.asarray(test)
    if test.ndim != 2 or test.shape[1] != np.shape(train)[1]:
        raise ValueError(f"test must be (n_test, {np.shape(train)[1]}) like train; got shape {test.shape}")
    pca = fit_pca(train, variance)
    return (
        pca.transform(np.asarray(train, dtype=np.float64)).astype(np.float32),
        pca.transform(test.astype(np.float64)).astype(np.float32),
        pca,
    )
