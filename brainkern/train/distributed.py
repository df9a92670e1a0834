"""One training run on several processes (``torchrun``), without DistributedDataParallel.

``torchrun --nproc_per_node N -m brainkern.train ...`` starts N copies of the
training command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set; :func:`setup` reads them, joins the process group (gloo for
CPU tensors, NCCL for CUDA tensors) and returns the :class:`World` the engine and
the recipes consult. Without torchrun the world has one process and every helper
here does nothing, so a single process computes exactly what it computed before.

How a run stays one run:

- every process runs the same batch sequence and draws the same random numbers
  (latents, penalty interpolations, reparameterisation noise) for the *global*
  batch, then keeps its contiguous slice (:meth:`World.shard`): N processes see the
  data and noise of one process with the global batch;
- gradients are averaged across processes by the recipe after each backward
  (:func:`reduce_gradients`), flattened into a few buckets. Torch's
  DistributedDataParallel is not used: its gradient hooks do not support the
  double backward of the gradient penalty;
- BatchNorm may see the global batch (:class:`SyncBatchNorm`, ``train.sync_batchnorm``);
- only rank 0 writes; work done on rank 0 alone goes through :meth:`World.on_main`,
  which hands its result (or its exception) to every process and leaves them at
  the same random state.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

T = TypeVar("T")

# Gradients are all-reduced in flat buckets of at most this many bytes: few collectives
# (the latency of each dominates for small networks), bounded extra memory.
BUCKET_BYTES = 64 * 2**20
# How long a process waits in a collective, e.g. for rank 0's end-of-run evaluation;
# BRAINKERN_DIST_TIMEOUT (minutes) overrides it.
DEFAULT_TIMEOUT_MIN = 60


class RankFailed(RuntimeError):
    """Work done on rank 0 alone failed there; raised on the other ranks."""


def local_batch(global_batch: int, size: int) -> int:
    """One process's share of a global batch split over ``size`` processes.

    Raises:
        ValueError: the global batch does not divide by ``size``.
    """
    if global_batch % size:
        lower = max(size, global_batch // size * size)
        raise ValueError(
            f"train.batch_size={global_batch} is the global batch, split over {size} processes: "
            f"it must be a multiple of {size} (e.g. {lower} or {lower + size})"
        )
    return global_batch // size


class World:
    """The processes of one run: ``rank`` of ``size``, ``local_rank`` on this host.

    ``World()`` is a single process; its collectives return at once.
    """

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0) -> None:
        self.rank, self.size, self.local_rank = int(rank), int(size), int(local_rank)
        self.cpu_group = None  # a gloo group when the default group cannot take CPU tensors

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- the global batch --------------------------------------------------------------

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice (along dim 0) of a global-batch tensor.

        ``x``: ``(size * n, ...)`` -> ``(n, ...)``; the whole tensor on one process.
        """
        if not self.distributed:
            return x
        n = local_batch(x.shape[0], self.size)
        return x[self.rank * n : (self.rank + 1) * n]

    # -- collectives -------------------------------------------------------------------

    def all_reduce_(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``x`` reduced over every process, in place (``op``: sum, min or max); returns ``x``."""
        if self.distributed:
            ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
            group = self.cpu_group if x.device.type == "cpu" else None
            dist.all_reduce(x, op=ops[op], group=group)
        return x

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some process (all processes get the same answer)."""
        if not self.distributed:
            return bool(flag)
        return bool(self.all_reduce_(torch.tensor([int(flag)]), "max").item())

    def barrier(self) -> None:
        """Wait until every process gets here (a CPU collective: never touches a GPU)."""
        self.all_reduce_(torch.zeros(1))

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (anything picklable) on every process."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group, device=torch.device("cpu"))
        return box[0]

    def on_main(self, fn: Callable[[], T], *, sync_rng: bool = False) -> T:
        """``fn()`` on rank 0 only; its result on every process.

        The other processes wait (a barrier). An exception in ``fn`` is raised on
        rank 0 as it was and as :class:`RankFailed` elsewhere (or the same
        ``SystemExit``), so no process is left waiting in a collective.
        With ``sync_rng``, every process continues from rank 0's random state
        afterwards, should ``fn`` have drawn from the global generators.
        """
        if not self.distributed:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                with local_only():
                    outcome = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001  (re-raised below, on every rank)
                outcome = ("error", exc)
                error = exc
            rng = rng_state() if sync_rng else None
        else:
            rng = None
        status, value, rng = self.broadcast((*outcome, rng) if self.is_main else None)
        if status == "error":
            if self.is_main:
                raise error
            if isinstance(value, SystemExit):
                raise SystemExit(value.code)
            raise RankFailed(f"rank 0 failed: {type(value).__name__}: {value}")
        if sync_rng and not self.is_main:
            set_rng_state(rng)
        return value

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """Local rank 0 of every host runs the block first, then the others (who then
        find what it cached: the simulated cohort, the preprocessed data set)."""
        if not self.distributed:
            yield
            return
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()


_WORLD = World()
_OWNS_GROUP = False


def current() -> World:
    """The world :func:`setup` made (one process until then)."""
    return _WORLD


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup() -> World:
    """The world of this process, joining the process group on first call.

    Reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``). One backend per device type: gloo for CPU
    tensors, NCCL for CUDA ones when this PyTorch has CUDA. A process group made
    by the caller is used as it is. Without torchrun (``WORLD_SIZE`` unset or 1):
    a single process, no group.

    Raises:
        ValueError: an inconsistent environment (rank outside the world, ...).
    """
    global _WORLD, _OWNS_GROUP
    if dist.is_available() and dist.is_initialized():
        world = World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    else:
        size = _env_int("WORLD_SIZE", 1)
        if size <= 1:
            _WORLD = World()
            return _WORLD
        rank, local_rank = _env_int("RANK", -1), _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < size:
            raise ValueError(f"RANK={rank} must lie in 0 .. WORLD_SIZE-1 = {size - 1}")
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
        minutes = float(os.environ.get("BRAINKERN_DIST_TIMEOUT", DEFAULT_TIMEOUT_MIN))
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if torch.cuda.is_available():
            # NCCL binds each process to its device; do it before the group exists.
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(
            backend, rank=rank, world_size=size, timeout=datetime.timedelta(minutes=minutes)
        )
        _OWNS_GROUP = True
        world = World(rank, size, local_rank)
    if world.distributed and "gloo" not in str(dist.get_backend()):
        world.cpu_group = dist.new_group(backend="gloo")  # object broadcasts and CPU barriers
    _WORLD = world
    return world


def shutdown(wait_seconds: float = 60.0) -> None:
    """Leave the process group :func:`setup` joined (nothing when it joined none).

    The processes first wait for each other (a barrier of at most ``wait_seconds``; a
    process that does not come, e.g. after an error of its own, only delays the others by
    that much), so that none closes its connections while another still works: rank 0
    writing samples and the report while rank 1 had already torn its group down made
    gloo abort rank 0 at exit ("terminate called without an active exception") in about
    one run in four of the 2-process resume test.
    """
    global _WORLD, _OWNS_GROUP
    if _OWNS_GROUP and dist.is_initialized():
        group = _WORLD.cpu_group
        try:
            if "gloo" in str(dist.get_backend(group)):
                dist.monitored_barrier(group, timeout=datetime.timedelta(seconds=wait_seconds))
            else:
                dist.barrier(group)
        except RuntimeError:  # a process missing (already failed): leave anyway
            pass
        dist.destroy_process_group()
    _OWNS_GROUP = False
    _WORLD = World()


def resolve_device(name: str, world: World) -> torch.device:
    """The device of this process for ``train.device`` ``name``.

    One process: ``"auto"`` is the first CUDA device when there is one, else the
    CPU. Several: each process takes ``cuda:LOCAL_RANK`` (``"auto"`` or ``"cuda"``),
    or the CPU (``"cpu"``).

    Raises:
        ValueError: a CUDA device this PyTorch cannot see, or a fixed CUDA index
            with several processes per host.
    """
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but this PyTorch sees no CUDA device")
    if not world.distributed or device.type != "cuda":
        return device
    if device.index is not None and device.index != world.local_rank:
        raise ValueError(
            f"train.device={name!r}: with torchrun every process uses cuda:LOCAL_RANK; "
            "give train.device=auto (or cuda) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ValueError(f"LOCAL_RANK={world.local_rank} but this host has {count} CUDA device(s)")
    return torch.device("cuda", world.local_rank)


# ---------------------------------------------------------------- random state


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every random state a run draws from (:func:`brainkern.train.state.rng_state`), and
    under ``"device"`` that of this process's CUDA device (``device``, default the
    current one).

    The extra entry is what moves between processes: under torchrun, rank 0's list
    of every device's state holds untouched states for the other ranks' devices.
    """
    from brainkern.train import state as state_mod

    state = state_mod.rng_state()
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if device is not None and device.type == "cuda":
        state["device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured, its ``"device"`` entry onto ``device``
    (default: the current CUDA device), whichever device it was taken from."""
    from brainkern.train import state as state_mod

    state_mod.set_rng_state(state)
    if device is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    if "device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["device"].cpu(), device)


# ---------------------------------------------------------------- gradients


def _buckets(grads: list[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive gradients of one device and dtype, at most ``limit`` bytes a bucket
    (a larger gradient gets a bucket of its own)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (g.device != bucket[0].device or g.dtype != bucket[0].dtype or size + nbytes > limit):
            yield bucket
            bucket, size = [], 0
        bucket.append(g)
        size += nbytes
    if bucket:
        yield bucket


def reduce_gradients(params: Iterable[nn.Parameter], world: World, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average the gradients of ``params`` over every process, in place.

    Only parameters with a gradient take part. Every process must call this with
    the same parameters, and the same ones must have gradients everywhere (they
    do: which parameters a loss reaches does not depend on the data); the
    collectives then match one for one. Nothing happens on a single process.
    """
    if not world.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=world.cpu_group if flat.device.type == "cpu" else None)
        flat.div_(world.size)
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
            g.copy_(part.view_as(g))


# ---------------------------------------------------------------- synchronised BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """A sum over processes that autograd can differentiate, also twice.

    The backward of a sum over processes is the sum over processes of the
    incoming gradients (every process's loss depends on the result); it is
    computed with this same function, so a gradient penalty can differentiate it
    again.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, world: World) -> torch.Tensor:  # noqa: ARG004
        ctx.world = world
        return world.all_reduce_(x.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllReduceSum.apply(grad, ctx.world), None


_LOCAL = threading.local()


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside the block, :class:`SyncBatchNorm` layers do not synchronise (work that
    one rank does alone, such as sampling at a check, would otherwise wait forever)."""
    before = getattr(_LOCAL, "on", False)
    _LOCAL.on = True
    try:
        yield
    finally:
        _LOCAL.on = before


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch.

    A drop-in for ``nn.BatchNorm1d/2d/3d`` (same arguments, parameters, buffers
    and state-dict keys; input ``(N, C, *)``). In training mode on several
    processes, each process computes its per-channel count, mean and sum of
    squared deviations; one differentiable all-reduce combines them (Chan et
    al.'s pairwise update, no cancellation of large means), and the layer
    normalises with the global mean and biased variance and updates its running
    statistics with the global unbiased variance, as BatchNorm on the
    concatenated batch would. Gradients flow through the statistics to every
    process's inputs, to any order (the gradient penalty differentiates twice).
    In eval mode, on one process and inside :func:`local_only` it is BatchNorm.

    ``torch.nn.SyncBatchNorm`` is not used: it refuses CPU tensors (gloo) and its
    backward, built from kernels without derivatives, cannot be differentiated
    again.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"SyncBatchNorm: expected input (N, C, ...), got {input.dim()}-D {tuple(input.shape)}"
            )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        world = current()
        if not (self.training and world.distributed) or getattr(_LOCAL, "on", False):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        c = input.shape[1]
        # Statistics in at least float32 (bf16 sums lose the mean).
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        count = x.new_full((c,), x.numel() // max(c, 1))
        mean = x.mean(dims)
        m2 = (x - mean.view(shape)).square().sum(dims)
        # Every process fills its own row of a (size, 3, C) table; the sum over processes
        # is then the table of all of them.
        rows = [torch.zeros_like(torch.stack([count, mean, m2]))] * world.size
        rows[world.rank] = torch.stack([count, mean, m2])
        counts, means, m2s = _AllReduceSum.apply(torch.stack(rows), world).unbind(1)
        total = counts.sum(0)
        g_mean = (counts * means).sum(0) / total
        g_m2 = (m2s + counts * (means - g_mean).square()).sum(0)
        var = g_m2 / total
        y = (x - g_mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = g_m2 / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(g_mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm1d/2d/3d`` replaced by a :class:`SyncBatchNorm`
    holding the same parameters and statistics (in place; returns ``module``)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        device, dtype = _where(module)
        new.to(device=device, dtype=dtype)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _where(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a layer's tensors."""
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


__all__ = [
    "RankFailed",
    "SyncBatchNorm",
    "World",
    "convert_sync_batchnorm",
    "current",
    "local_only",
    "reduce_gradients",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "setup",
    "shutdown",
]
