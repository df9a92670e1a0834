"""The reconstruction models: Seeliger et al.'s linear map to a fixed GAN's latent, and baselines.

:class:`LatentEnsemble` holds ``E`` independent linear maps from the PCA components of the
responses to the generator's latent ``z``; each map's output is normalised onto the unit
sphere, as the prior's codes are (Seeliger et al. 2018, section 2.3). All members train
together in one batched pass (they share nothing but the batches' order, which differs per
member), through the frozen generator and the image-space loss
(:class:`~brainkern.reconstruct.loss.ReconstructionLoss`), with Adam at its default
settings and an L2 penalty of 0.01 on the weights (Seeliger et al.'s ``lambda_L2``). The
ensemble's reconstruction averages the members' codes and normalises the mean onto the
sphere again.

The baselines regress what the GAN does not see:

- :func:`ridge_pixels`: ridge regression from the responses (standardised on the training
  stimuli) straight to the pixels, its penalty chosen by leave-one-out cross-validation on
  the training stimuli alone (scikit-learn's ``RidgeCV``);
- :func:`nearest_training`: each test response answered with the training stimulus whose
  response correlates best with it (a copy of a training image: a decoder that only
  identifies what it has seen).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LatentEnsemble", "fit_latent_ensemble", "nearest_training", "reconstruct", "ridge_pixels"]


def _sphere(z: Tensor) -> Tensor:
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class LatentEnsemble(nn.Module):
    """``E`` linear maps ``(N, P)`` PCA components -> ``(E, N, L)`` codes on the unit sphere.

    Each member is ``z_e = sphere(x W_e + b_e)``; the weights start as PyTorch's ``nn.Linear``
    does (uniform in ``+-1/sqrt(P)``), each member from its own draw of ``seed``.

    Args:
        n_inputs: ``P``, the number of PCA components.
        latent_dim: ``L``, the generator's latent size.
        members: ``E`` (Seeliger et al.: 15).
        seed: the initial weights' draw.
    """

    def __init__(self, n_inputs: int, latent_dim: int, members: int = 15, seed: int = 0) -> None:
        super().__init__()
        if members < 1 or n_inputs < 1 or latent_dim < 1:
            raise ValueError(
                f"members, n_inputs and latent_dim must be >= 1, got {members}, {n_inputs}, {latent_dim}"
            )
        gen = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / np.sqrt(n_inputs)
        self.weight = nn.Parameter((torch.rand(members, n_inputs, latent_dim, generator=gen) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(members, 1, latent_dim, generator=gen) * 2 - 1) * bound)
        self.members, self.n_inputs, self.latent_dim = int(members), int(n_inputs), int(latent_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x (N, P)`` -> ``(E, N, L)``, every code of unit length."""
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(
                f"LatentEnsemble: expected (N, {self.n_inputs}) components, got {tuple(x.shape)}"
            )
        return _sphere(torch.einsum("np,epl->enl", x, self.weight) + self.bias)

    @torch.no_grad()
    def average(self, x: Tensor) -> Tensor:
        """The ensemble's code ``(N, L)``: the members' unit codes averaged, then normalised
        onto the sphere again (Seeliger et al.'s ensemble of 15 runs)."""
        return _sphere(self(x).mean(0))


def fit_latent_ensemble(
    components: np.ndarray,
    images: np.ndarray,
    generator: nn.Module,
    loss: nn.Module,
    *,
    members: int = 15,
    epochs: int = 20,
    batch_size: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> tuple[LatentEnsemble, dict[str, Any]]:
    """Train the ensemble on the training stimuli: ``components (N, P)`` of their responses and
    the ``images (N, S, S)`` in [-1, 1] they showed.

    Every epoch each member visits the stimuli in its own seeded order, ``batch_size`` at a
    time (Seeliger et al.: 3); the members' batches go through the frozen ``generator`` and
    ``loss`` together. Adam with ``lr`` and default betas; ``weight_decay`` adds the L2 term's
    gradient (coupled, as an L2 penalty on the weights, not the biases).

    Returns:
        ``(ensemble, history)``: history holds the loss terms per epoch (means over the
        epoch's batches and members) and the seconds taken.
    """
    from tqdm import tqdm

    x = torch.as_tensor(np.asarray(components, dtype=np.float32))
    shown = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    n = x.shape[0]
    if shown.shape[0] != n:
        raise ValueError(f"{n} response rows but {shown.shape[0]} images")
    generator = generator.eval().requires_grad_(False)
    ensemble = LatentEnsemble(x.shape[1], int(generator.latent_dim), members, seed)
    opt = torch.optim.Adam(
        [
            {"params": [ensemble.weight], "weight_decay": weight_decay},
            {"params": [ensemble.bias], "weight_decay": 0.0},
        ],
        lr=lr,
    )
    targets = loss.targets(shown)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    b = max(1, min(int(batch_size), n))
    steps = n // b
    history: dict[str, Any] = {"loss": [], "pixel": [], "presence": [], "magnitude": []}
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="latent regression", disable=not progress, leave=False)
    for _ in bar:
        orders = torch.stack([torch.randperm(n, generator=gen) for _ in range(members)])  # (E, N)
        sums = dict.fromkeys(history, 0.0)
        for s in range(steps):
            idx = orders[:, s * b : (s + 1) * b]  # (E, b)
            w = ensemble.weight  # each member on its own batch: gather its rows
            z = _sphere(torch.einsum("ebp,epl->ebl", x[idx], w) + ensemble.bias)
            y = generator(z.reshape(-1, z.shape[-1]))
            flat = idx.reshape(-1)
            out = loss(None, y, targets={k: v[flat] for k, v in targets.items()})
            opt.zero_grad(set_to_none=True)
            (out["loss"] * members).backward()  # each member the gradient of its own mean loss
            opt.step()
            for k in sums:
                sums[k] += float(out[k].detach())
        for k in history:
            history[k].append(sums[k] / steps)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    history["seconds"] = round(time.perf_counter() - start, 1)
    history.update(members=members, epochs=epochs, batch_size=b, lr=lr, weight_decay=weight_decay)
    return ensemble.eval(), history


@torch.no_grad()
def reconstruct(
    ensemble: LatentEnsemble, components: np.ndarray, generator: nn.Module, *, member: int | None = None
) -> np.ndarray:
    """Reconstructions ``(N, S, S)`` of the responses ``components (N, P)``: the generator on the
    ensemble's averaged code, or on member ``member``'s alone."""
    x = torch.as_tensor(np.asarray(components, dtype=np.float32))
    z = ensemble.average(x) if member is None else ensemble(x)[member]
    return generator.eval()(z).squeeze(1).numpy()


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, sd = train.mean(0), train.std(0)
    sd[sd == 0] = 1.0
    return (train - mean) / sd, (test - mean) / sd


def ridge_pixels(
    train_responses: np.ndarray, train_images: np.ndarray, test_responses: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """The baseline that regresses pixels directly: ridge from the responses (each voxel
    standardised on the training stimuli) to every pixel, one penalty for all pixels chosen by
    efficient leave-one-out cross-validation over ``logspace(-1, 6, 15)`` on the training
    stimuli (scikit-learn's ``RidgeCV``).

    Returns:
        ``(test reconstructions (N_test, S, S) clipped to [-1, 1], {"alpha": chosen penalty})``.
    """
    from sklearn.linear_model import RidgeCV

    tr, te = _standardise(np.asarray(train_responses, np.float64), np.asarray(test_responses, np.float64))
    side = train_images.shape[-1]
    model = RidgeCV(alphas=np.logspace(-1, 6, 15)).fit(
        tr, np.asarray(train_images, np.float64).reshape(len(tr), -1)
    )
    pred = np.clip(model.predict(te), -1.0, 1.0).reshape(-1, side, side).astype(np.float32)
    return pred, {"alpha": float(model.alpha_)}


def nearest_training(
    train_responses: np.ndarray, train_images: np.ndarray, test_responses: np.ndarray
) -> np.ndarray:
    """Each test response answered with the training image whose response (standardised on the
    training stimuli) correlates best with it: ``(N_test, S, S)`` copies of training images."""
    tr, te = _standardise(np.asarray(train_responses, np.float64), np.asarray(test_responses, np.float64))
    tr = tr - tr.mean(1, keepdims=True)
    te = te - te.mean(1, keepdims=True)
    tr /= np.linalg.norm(tr, axis=1, keepdims=True).clip(1e-12)
    te /= np.linalg.norm(te, axis=1, keepdims=True).clip(1e-12)
    return np.asarray(train_images)[np.argmax(te @ tr.T, axis=1)].astype(np.float32)
