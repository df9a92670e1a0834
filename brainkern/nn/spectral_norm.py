"""Spectrally normalised layers (Miyato et al. 2018) on the fused brainkern step.

``SNConv3d``, ``SNConv2d`` and ``SNLinear`` behave like their ``torch.nn`` parents
wrapped in :func:`torch.nn.utils.parametrizations.spectral_norm` (the weight used
is ``W / sigma(W)``; same initialisation of ``u`` and ``v``, same power iteration,
same gradients), with the iteration run by :func:`brainkern.ops.spectral_norm_step`
(one read of ``W`` instead of about four). They are the layers of King et al.'s
SN-GAN / alpha-SN-GAN discriminators and code discriminators.

For a whole discriminator, :func:`spectral_norm_update` runs the iteration of
every SN layer in one grouped call (three kernel launches on the GPU), and the next
training forward of each layer uses that result instead of iterating again::

    for real in loader:
        spectral_norm_update(disc)          # once per discriminator step, before the forward
        loss = disc(real).mean() - disc(fake).mean()
        ...

By default the result serves one training forward per layer (as PyTorch, which
iterates on every forward); pass ``forwards=None`` to make it serve every forward
until the next call (for a step that runs the discriminator on real, fake and
interpolated batches separately), or ``forwards=k`` for k forwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainkern.ops.spectral_norm import spectral_norm_step, spectral_normalize

__all__ = ["SNConv2d", "SNConv3d", "SNLinear", "has_spectral_norm", "spectral_norm_update"]

# torch.nn.utils.parametrizations.spectral_norm iterates 15 times when it is built, and
# register_parametrization's consistency check then runs one training forward
# (n_power_iterations more): the layers start from the same u, v as torch's.
_WARMUP_ITERATIONS = 15
_FOREVER = -1


class _SpectralNormMixin:
    """Buffers ``u`` (out,), ``v`` (in,), ``sigma`` () and the weight ``W / sigma`` for a layer."""

    # The torch layer after this mixin in the MRO takes the usual arguments.
    def __init__(self, *args, n_power_iterations: int = 1, eps: float = 1e-12, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_spectral_norm(n_power_iterations, eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._sn_repr()}"

    weight: nn.Parameter
    u: torch.Tensor
    v: torch.Tensor
    sigma: torch.Tensor

    def _init_spectral_norm(self, n_power_iterations: int, eps: float) -> None:
        if n_power_iterations <= 0:
            raise ValueError(f"n_power_iterations must be positive, got {n_power_iterations}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.n_power_iterations = int(n_power_iterations)
        self.eps = float(eps)
        self._sn_reuse = 0  # training forwards left that use the grouped update's result
        w = self._weight_matrix()
        # Same draws, in the same order, as torch's parametrization (after the layer's own init).
        u = F.normalize(w.new_empty(w.shape[0]).normal_(0, 1), dim=0, eps=self.eps)
        v = F.normalize(w.new_empty(w.shape[1]).normal_(0, 1), dim=0, eps=self.eps)
        self.register_buffer("u", u)
        self.register_buffer("v", v)
        self.register_buffer("sigma", w.new_ones(()))
        self._power_iteration(_WARMUP_ITERATIONS + self.n_power_iterations)

    def _weight_matrix(self) -> torch.Tensor:
        w = self.weight.detach()
        return w.reshape(w.shape[0], -1)

    @torch.no_grad()
    def _power_iteration(self, n: int) -> None:
        w = self._weight_matrix()
        for _ in range(n):
            sigma = spectral_norm_step([w], [self.u], [self.v], self.eps)
        # Through a (1,) view: torch.compile (torch 2.13) turns a 0-d float64 CPU tensor
        # input into a Python float and drops a copy_ into it, not one into its view.
        self.sigma.view(1).copy_(sigma)

    @torch.no_grad()
    def _stored_sigma(self) -> torch.Tensor:
        return torch.vdot(self.u, torch.mv(self._weight_matrix(), self.v))

    def normalized_weight(self) -> torch.Tensor:
        """``W / sigma`` with ``sigma = u . (W v)`` from the stored ``u``, ``v`` (no iteration).

        Differentiable in ``W`` as in PyTorch (``u``, ``v`` constant). Equals the weight
        of the last training forward while ``W`` has not changed since.
        """
        return spectral_normalize(self.weight, self._stored_sigma(), self.u.clone(), self.v.clone())

    def _sn_weight(self) -> torch.Tensor:
        if not self.training:
            return self.normalized_weight()
        if self._sn_reuse != 0:
            if self._sn_reuse > 0:
                self._sn_reuse -= 1
        else:
            self._power_iteration(self.n_power_iterations)
        # Clones: u and v change in place at the next iteration, before this graph's backward.
        return spectral_normalize(self.weight, self.sigma.clone(), self.u.clone(), self.v.clone())

    def _sn_repr(self) -> str:
        return f"n_power_iterations={self.n_power_iterations}, eps={self.eps}"


class SNConv3d(_SpectralNormMixin, nn.Conv3d):
    """``nn.Conv3d`` whose weight is divided by its spectral norm (Miyato et al. 2018).

    Same arguments as :class:`torch.nn.Conv3d`, plus ``n_power_iterations`` (power
    iterations per training forward) and ``eps`` (norm floor). Input (N, C_in, D, H, W),
    output (N, C_out, D', H', W'). The weight matrix is ``weight.reshape(C_out, -1)``.
    Buffers: ``u`` (C_out,), ``v`` (C_in/groups * prod(kernel_size),), ``sigma`` ().

    Raises:
        ValueError: ``n_power_iterations <= 0`` or ``eps <= 0``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._sn_weight(), self.bias)


class SNConv2d(_SpectralNormMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is divided by its spectral norm (Miyato et al. 2018).

    Same arguments as :class:`torch.nn.Conv2d`, plus ``n_power_iterations`` and ``eps``.
    Input (N, C_in, H, W), output (N, C_out, H', W'). See :class:`SNConv3d`.

    Raises:
        ValueError: ``n_power_iterations <= 0`` or ``eps <= 0``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self._sn_weight(), self.bias)


class SNLinear(_SpectralNormMixin, nn.Linear):
    """``nn.Linear`` whose weight is divided by its spectral norm (Miyato et al. 2018).

    Same arguments as :class:`torch.nn.Linear`, plus ``n_power_iterations`` and ``eps``.
    Input (..., in_features), output (..., out_features). Buffers ``u`` (out_features,),
    ``v`` (in_features,), ``sigma`` ().

    Raises:
        ValueError: ``n_power_iterations <= 0`` or ``eps <= 0``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._sn_weight(), self.bias)


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether ``module`` is or contains a :class:`SNConv3d` / :class:`SNConv2d` / :class:`SNLinear`."""
    return any(isinstance(m, _SpectralNormMixin) for m in module.modules())


@torch.no_grad()
def spectral_norm_update(module: nn.Module, forwards: int | None = 1) -> torch.Tensor:
    """Run the power iteration of every SN layer of ``module`` in one grouped call.

    Layers are grouped by (device, dtype, eps), one :func:`brainkern.ops.spectral_norm_step`
    per group (three kernel launches for a whole discriminator on the GPU), repeated
    ``max(n_power_iterations)`` times (a layer takes part in its first
    ``n_power_iterations`` rounds). Each layer's ``u``, ``v`` and ``sigma`` are updated,
    and its next ``forwards`` training forwards use that ``sigma`` without iterating.
    Call it once per discriminator step, just before the forward(s), after the
    optimiser step.

    Args:
        module: a model containing :class:`SNConv3d` / :class:`SNConv2d` /
            :class:`SNLinear` layers (or one of them).
        forwards: training forwards per layer served by this result (default 1,
            matching PyTorch's one iteration per forward); ``None``: every training
            forward until the next call.

    Returns:
        The sigmas (L,) in ``module.modules()`` order, on the first layer's device;
        empty if the module has no SN layer.

    Raises:
        ValueError: ``forwards`` is not ``None`` or a non-negative integer.
    """
    if forwards is not None and (not isinstance(forwards, int) or forwards < 0):
        raise ValueError(f"forwards must be None or a non-negative integer, got {forwards!r}")
    layers = [m for m in module.modules() if isinstance(m, _SpectralNormMixin)]
    if not layers:
        return torch.empty(0)
    groups: dict[tuple[torch.device, torch.dtype, float], list[int]] = {}
    for i, layer in enumerate(layers):
        groups.setdefault((layer.weight.device, layer.weight.dtype, layer.eps), []).append(i)
    sigmas: list[torch.Tensor | None] = [None] * len(layers)
    for (_, _, eps), members in groups.items():
        for k in range(max(layers[i].n_power_iterations for i in members)):
            active = [i for i in members if layers[i].n_power_iterations > k]
            out = spectral_norm_step(
                [layers[i]._weight_matrix() for i in active],
                [layers[i].u for i in active],
                [layers[i].v for i in active],
                eps,
            )
            for j, i in enumerate(active):
                sigmas[i] = out[j]
    device = layers[0].weight.device
    for layer, sigma in zip(layers, sigmas, strict=True):
        layer.sigma.copy_(sigma)
        layer._sn_reuse = _FOREVER if forwards is None else forwards
    return torch.stack([s.to(device) for s in sigmas])  # type: ignore[union-attr]
