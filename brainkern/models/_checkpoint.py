"""Gradient checkpointing of network blocks that contain BatchNorm.

``torch.utils.checkpoint`` (non-reentrant) keeps only a block's input and runs
the block's forward a second time during backward. A BatchNorm layer in training
mode updates its running statistics on every forward, so the recomputation would
count each batch twice. :func:`run_block` recomputes with every BatchNorm's
``momentum`` set to 0 (``running = (1 - 0) * running + 0 * batch``: unchanged)
and puts back ``num_batches_tracked``, which BatchNorm increments regardless;
the statistics then match a run without checkpointing exactly.

Non-reentrant checkpointing also supports the double backward of a gradient
penalty: the first backward (``create_graph=True``) recomputes the block with
autograd on, and the second backward goes through that recomputed graph.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

__all__ = ["FrozenBatchNormStats", "run_block"]


class FrozenBatchNormStats:
    """Inside the block, training-mode forwards of ``norms`` leave their running statistics as they were.

    Sets ``momentum = 0.0`` (also for a cumulative-average layer, ``momentum=None``,
    whose factor would otherwise be ``1 / num_batches_tracked``) and restores
    ``momentum`` and ``num_batches_tracked`` on exit. A non-finite batch
    statistic would still turn the running one into NaN (``0 * inf``), as it
    would have in the original forward anyway.

    Reusable and re-entrant (a class, not a generator): checkpointing enters the
    same object once per backward pass that needs the block's activations, and a
    gradient penalty runs two such passes.
    """

    def __init__(self, norms: list[_BatchNorm]) -> None:
        self.norms = list(norms)
        self._saved: list[list] = []

    def __enter__(self) -> None:
        self._saved.append(
            [
                (m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                for m in self.norms
            ]
        )
        for m in self.norms:
            m.momentum = 0.0

    def __exit__(self, *exc) -> None:
        for m, (momentum, tracked) in zip(self.norms, self._saved.pop(), strict=True):
            m.momentum = momentum
            if tracked is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(tracked)


def _recompute_contexts(norms: list[_BatchNorm]):
    return contextlib.nullcontext(), FrozenBatchNormStats(norms)


def run_block(block: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``block(x)``, checkpointed when ``enabled``, autograd is on and ``block`` is training.

    In eval mode or under ``torch.no_grad()`` there is nothing to save, so the
    block runs plainly. The block must be deterministic (no dropout): its RNG
    state is not saved. Do not switch it between train and eval mode between
    the forward and the backward.
    """
    if not (enabled and block.training and torch.is_grad_enabled()):
        return block(x)
    norms = [m for m in block.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    return checkpoint(
        block,
        x,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=lambda: _recompute_contexts(norms),
    )
