"""``python -m brainkern.sample RUN_DIR --n N``: stream generated volumes to disk, in shards, resumably.

Volumes are written on the run's training grid with its affine (the output grid
of the data set the model was trained on), so they overlay on the preprocessed
inputs in any viewer. Two output formats:

- ``nifti`` (the default): one ``sample_#####[_<class>].nii.gz`` per volume (``nii``:
  the same, uncompressed ``.nii``), and ``labels.csv`` (``path``, ``label``,
  ``subject`` = ``synthetic-#####``), which reads back with
  :meth:`brainkern.data.VolumeDataset.from_table`, so synthetic volumes can join a
  real data set;
- ``memmap``: one float32 array ``volumes.npy`` of shape ``(n, D, H, W)`` (a NumPy
  ``.npy`` file, memory-mapped while it is written) and ``index.csv`` (``row``,
  ``label``, ``subject``); the affine and grid are in ``sampling.json``.
  :meth:`brainkern.data.VolumeDataset.from_memmap` reads it without copying: the
  fastest input for the classifiers.

A class-conditional model (Zhuang et al. 2019's ICW-GAN, CVAE, GMM; King et al.
2024's conditional GANs) needs to be told which classes to generate, and refuses
to guess:

- ``--per-class``: ``--n`` volumes of every class the run trained on, class after class;
- ``--labels visual,motor``: the class of each of the ``--n`` volumes in turn
  (cycling), by class name or by index.

Class names are the run's (``run.json``'s ``data.classes``, else ``split.json``'s
``classes``, else the indices). An unconditional model's volumes are labelled with
the run's one trained class when it trained on one, else ``generated``.

How the volumes are drawn (:func:`sample_batches`, which the diagnosis experiment's
Infinite set also draws through):

- the ``n`` volumes are cut into shards of ``--shard-size`` consecutive volumes;
  shard ``k``'s latent codes are ``model.sample_latent(m_k, generator=g_k)``, all
  ``m_k`` of them drawn at once from a CPU ``torch.Generator`` seeded with
  :func:`shard_seed` ``(seed, k)``; its labels come from the label plan, indexed by
  volume number. A shard is then generated in batches of ``--batch-size`` (never
  across a shard boundary), without autograd, in eval mode. So volume ``i`` depends
  on ``seed``, the shard size and ``i`` only: not on the batch size (up to the
  rounding of batched kernels), on interruptions or on the number of processes;
- every batch is written as soon as it is generated, and nothing but that batch is
  held; a shard counts as done once its volumes are on disk (flushed and fsynced)
  and its marker ``.shards/<k>.json`` (its rows of the table) has been written
  atomically. A rerun of the same command skips done shards and redoes the rest:
  the result is byte for byte that of an uninterrupted run. ``sampling.json`` holds
  the settings; a rerun with other settings into the same folder is an error;
- under ``torchrun`` (``WORLD_SIZE > 1``), rank ``r`` generates shards ``r, r + W,
  r + 2W, ...`` on its own device and writes only those; after a barrier rank 0
  writes the table from the shard markers, in volume order.

``BRAINKERN_SAMPLE_STOP_AFTER=k`` (a testing aid) makes each process fail, as an
interruption would, after it has finished ``k`` shards and written the first batch
of the next.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainkern._cli import positive_int

if TYPE_CHECKING:
    import torch

# The label of an unconditional model's volumes when the run trained on several classes.
UNCONDITIONAL_LABEL = "generated"
# Volumes per shard: the unit of seeding, of resumption and of the work split across ranks.
SHARD_SIZE = 256
# Output formats: compressed NIfTI, uncompressed NIfTI, one memory-mapped array.
FORMATS = ("nifti", "nii", "memmap")
SETTINGS_FILE = "sampling.json"
SHARDS_DIR = ".shards"
STOP_ENV = "BRAINKERN_SAMPLE_STOP_AFTER"
_SETTINGS_VERSION = 1

# ``plan(shard, start, count)``: the ``(count,)`` int64 classes of volumes ``start ..
# start + count - 1`` (which lie in shard ``shard``), or ``None`` for an unconditional model.
LabelPlan = Callable[[int, int, int], "torch.Tensor | None"]


class SamplingStopped(RuntimeError):
    """Raised by the ``BRAINKERN_SAMPLE_STOP_AFTER`` testing aid: an interruption on purpose."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brainkern.sample",
        description="Sample volumes from a trained run and stream them to disk in resumable shards: NIfTI "
        "files (.nii.gz) with a labels table (labels.csv), or one memory-mapped array (volumes.npy) with "
        "an index (index.csv). Rerun the same command to finish an interrupted run; under torchrun the "
        "shards are shared among the processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run directory written by python -m brainkern.train")
    parser.add_argument(
        "-n",
        "--n",
        type=positive_int,
        required=True,
        help="number of volumes (per class with --per-class); under torchrun write -n (torchrun reads "
        "--n as an abbreviation of its own options)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--per-class",
        action="store_true",
        help="conditional models: --n volumes of every class the run trained on",
    )
    which.add_argument(
        "--labels",
        help="conditional models: comma-separated class names or indices, the class of each "
        "volume in turn (cycling)",
    )
    parser.add_argument("--out", help="output folder (default: RUN_DIR/generated)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="nifti",
        help="nifti: one .nii.gz per volume and labels.csv; nii: the same uncompressed; "
        "memmap: one float32 array volumes.npy (n, D, H, W) and index.csv",
    )
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=SHARD_SIZE,
        help="volumes per shard (the unit of seeding and resumption; clipped to the number of volumes)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="volumes per generator call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent vectors")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run_classes(run_dir: str | Path, num_classes: int) -> list[str]:
    """The names of a run's classes, in label order (label ``k`` is ``names[k]``).

    From ``run.json`` (``data.classes``: every class of the data set, which is what
    a conditional model's labels index), else ``split.json`` (``classes``, when it is
    not ``null``), else ``"0" .. "num_classes - 1"``. A list of another length than
    ``num_classes`` is passed over.
    """
    run_dir = Path(run_dir)
    candidates: list[Any] = []
    for name, keys in (("run.json", ("data", "classes")), ("split.json", ("classes",))):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            value: Any = json.loads(path.read_text())
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
        except ValueError:
            continue
        candidates.append(value)
    for value in candidates:
        if isinstance(value, list) and len(value) == num_classes:
            return [str(v) for v in value]
    return [str(k) for k in range(num_classes)]


def parse_labels(spec: str | Sequence[str | int], classes: Sequence[str]) -> list[int]:
    """Class indices from names or indices: ``"visual,motor"``, ``"0,2"`` or a list of them.

    A token that is a class name means that class (even when it looks like a
    number); otherwise an integer means that index.

    Raises:
        ValueError: an empty list, or a token that is neither a class name nor an
            index in ``0 .. len(classes) - 1`` (the message lists the classes).
    """
    tokens = spec.split(",") if isinstance(spec, str) else list(spec)
    tokens = [t.strip() if isinstance(t, str) else t for t in tokens]
    if not tokens or any(t == "" for t in tokens):
        raise ValueError(f"labels: give class names or indices separated by commas, got {spec!r}")
    index = {name: k for k, name in enumerate(classes)}
    out = []
    for token in tokens:
        if isinstance(token, str) and token in index:
            out.append(index[token])
            continue
        try:
            k = int(token)
        except (TypeError, ValueError):
            k = -1
        if not 0 <= k < len(classes):
            listed = ", ".join(f"{i}={name}" for i, name in enumerate(classes))
            raise ValueError(f"labels: unknown class {token!r}; the run's classes are {listed}")
        out.append(k)
    return out


# ----------------------------------------------------------------------------- drawing


def shard_seed(seed: int, shard: int, stream: str = "latent") -> int:
    """The seed of shard ``shard``'s ``stream`` (``"latent"`` or ``"labels"``) for run seed ``seed``.

    The first 8 bytes of the SHA-256 digest of ``"brainkern-sample/<seed>/<shard>/<stream>"``
    (UTF-8), read as a big-endian integer, with the top bit cleared (a 63-bit seed for
    ``torch.Generator.manual_seed``). Neighbouring seeds and shards give unrelated streams.
    """
    digest = hashlib.sha256(f"brainkern-sample/{int(seed)}/{int(shard)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def shard_bounds(shard: int, n: int | None, shard_size: int) -> tuple[int, int]:
    """``(start, count)`` of shard ``shard`` of ``n`` volumes (``None``: an endless stream)."""
    start = shard * shard_size
    count = shard_size if n is None else min(shard_size, n - start)
    if count <= 0:
        raise ValueError(f"shard {shard} is past the end: {n} volumes in shards of {shard_size}")
    return start, count


def num_shards(n: int, shard_size: int) -> int:
    """How many shards ``n`` volumes make in shards of ``shard_size``."""
    return -(-n // shard_size)


def cycle_labels(ids: Sequence[int]) -> LabelPlan:
    """A label plan: volume ``i`` has class ``ids[i % len(ids)]`` (``--labels``)."""
    import torch

    table = torch.as_tensor(list(ids), dtype=torch.int64)
    if table.numel() == 0:
        raise ValueError("cycle_labels needs at least one class")
    return lambda shard, start, count: table[torch.arange(start, start + count) % table.numel()]


def block_labels(ids: Sequence[int], n: int) -> LabelPlan:
    """A label plan: ``n`` volumes of ``ids[0]``, then ``n`` of ``ids[1]``, ... (``--per-class``)."""
    import torch

    table = torch.as_tensor(list(ids), dtype=torch.int64)
    return lambda shard, start, count: table[torch.arange(start, start + count) // n]


def weighted_labels(weights: Sequence[float], seed: int) -> LabelPlan:
    """A label plan: classes drawn independently with probabilities ``weights`` (normalised),
    shard ``k``'s from a CPU generator seeded with ``shard_seed(seed, k, "labels")``."""
    import numpy as np
    import torch

    w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    if w.ndim != 1 or w.numel() == 0 or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"class weights must be non-negative with a positive sum, got {list(weights)}")

    def plan(shard: int, start: int, count: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(shard_seed(seed, shard, "labels"))
        return torch.multinomial(w, count, replacement=True, generator=gen)

    return plan


def sample_batches(
    model: Any,
    n: int | None,
    *,
    labels: LabelPlan | None = None,
    seed: int = 0,
    shard_size: int = SHARD_SIZE,
    batch_size: int = 16,
    shards: Iterable[int] | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """Generate volumes shard by shard, batch by batch: ``(start, volumes, labels)`` per batch.

    Shard ``k`` holds volumes ``k * shard_size`` to ``min((k + 1) * shard_size, n) - 1``.
    Its ``m`` latent codes are ``model.sample_latent(m, generator=g)``, drawn at once with
    ``g = torch.Generator().manual_seed(shard_seed(seed, k))``; its labels are
    ``labels(k, start, m)``. The shard is generated in batches of ``batch_size`` that never
    cross its end, without autograd and with the generator in eval mode (restored after
    each batch). This is what ``model.sample(m, labels, generator=g)`` returns for the
    shard (and what is called when one batch covers the shard), without holding it whole.

    Args:
        model: a :class:`brainkern.models.GenerativeModel` on its device.
        n: volumes in all; ``None`` for an endless stream (shards ``0, 1, 2, ...``).
        labels: the label plan (:func:`cycle_labels`, :func:`block_labels`,
            :func:`weighted_labels`); required by a conditional model, refused otherwise.
        seed: the run seed (see :func:`shard_seed`).
        shard_size: volumes per shard (the unit of seeding).
        batch_size: volumes per generator call.
        shards: which shards, in this order (default: all of them in order).

    Yields:
        ``(start, volumes, labels)``: the index of the batch's first volume, ``(B, 1, D, H, W)``
        float32 on the CPU, and ``(B,)`` int64 classes or ``None``.

    Raises:
        ValueError: ``shard_size`` or ``batch_size`` below 1, a shard past the end, or labels
            that do not fit the model.
    """
    import torch

    if int(shard_size) < 1 or int(batch_size) < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    if n is not None and int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    order: Iterable[int]
    if shards is not None:
        order = shards
    elif n is None:
        order = itertools.count()
    else:
        order = range(num_shards(int(n), int(shard_size)))
    for k in order:
        start, m = shard_bounds(int(k), n, int(shard_size))
        gen = torch.Generator().manual_seed(shard_seed(seed, int(k)))
        y = None if labels is None else labels(int(k), start, m)
        if m <= batch_size:
            yield start, model.sample(m, labels=y, generator=gen, batch_size=m), y
            continue
        y = model.check_labels(y, m)
        z = model.sample_latent(m, generator=gen)
        for a in range(0, m, int(batch_size)):
            part = None if y is None else y[a : a + batch_size]
            yield start + a, _generate(model, z[a : a + batch_size], part), part


def _generate(model: Any, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """One batch as :meth:`GenerativeModel.sample` makes it: no autograd, eval mode (restored),
    on the generator's device; ``(B, 1, D, H, W)`` float32 on the CPU."""
    import torch

    net = model["generator"]
    device = next(iter([*net.parameters(), *net.buffers()]), torch.empty(0)).device
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            x = model.generate(z.to(device), None if labels is None else labels.to(device))
    finally:
        net.train(was_training)
    return x.to(device="cpu", dtype=torch.float32)


# ----------------------------------------------------------------------------- writing


def sample_run(
    run_dir: str | Path,
    n: int,
    out: str | Path | None = None,
    *,
    labels: str | Sequence[str | int] | None = None,
    per_class: bool = False,
    batch_size: int = 16,
    seed: int = 0,
    checkpoint: str = "last",
    device: str = "auto",
    progress: bool = True,
    format: str = "nifti",
    shard_size: int = SHARD_SIZE,
) -> list[Path]:
    """Write sampled volumes of a run into ``out``: streamed, in resumable shards (see the module).

    Under ``torchrun`` every process calls this with the same arguments; each writes
    its own shards, rank 0 the table, and every process returns the same list.

    Args:
        run_dir: a run directory written by ``python -m brainkern.train``.
        n: volumes in all, or per class with ``per_class``.
        out: output folder (default ``run_dir/generated``).
        labels: conditional models: class names or indices (a comma-separated string
            or a list), the class of each of the ``n`` volumes in turn (cycling).
        per_class: conditional models: ``n`` volumes of each class the run trained
            on (``data.classes``, else all), class after class.
        batch_size: volumes per generator call (the volumes do not depend on it).
        seed: the run seed; shard ``k``'s latents come from ``shard_seed(seed, k)``.
        checkpoint, device: see the command line.
        progress: a progress bar (rank 0's) with volumes per second.
        format: ``"nifti"`` (``.nii.gz``), ``"nii"`` (uncompressed ``.nii``) or ``"memmap"``.
        shard_size: volumes per shard (clipped to the number of volumes).

    Returns:
        NIfTI formats: the paths of the volumes, in order, each ``(D, H, W)`` float32 on
        the run's grid. ``memmap``: ``[out / "volumes.npy"]``, the ``(N, D, H, W)`` array.

    Raises:
        FileNotFoundError: not a run directory, or no such checkpoint.
        ValueError: a conditional model with neither ``labels`` nor ``per_class``,
            both of them, an unconditional model with either, unknown classes, an
            unknown format, or an ``out`` that holds a sampling run with other settings.
        SamplingStopped: the ``BRAINKERN_SAMPLE_STOP_AFTER`` testing aid.
        brainkern.train.distributed.RankFailed: another process failed.
    """
    options = dict(labels=labels, per_class=per_class, batch_size=batch_size, seed=seed)
    options.update(checkpoint=checkpoint, device=device, progress=progress, format=format)
    return _sample(run_dir, n, out, shard_size=shard_size, **options)["paths"]


def _sample(run_dir: str | Path, n: int, out: str | Path | None, **options: Any) -> dict[str, Any]:
    """:func:`sample_run`, returning ``{"paths", "out", "total", "written", "seconds"}``: the
    volumes in all, those written now by all processes, and this process's wall time."""
    import torch.distributed as dist

    from brainkern.train import distributed

    if options["format"] not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {options['format']!r}")
    if options["labels"] is not None and options["per_class"]:
        raise ValueError("give either labels or per_class, not both")
    for key in ("shard_size", "batch_size"):
        if int(options[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {options[key]}")
    owned = not (dist.is_available() and dist.is_initialized())
    world = distributed.setup()
    try:
        return _sample_on(world, Path(run_dir), int(n), out, **options)
    finally:
        if owned:
            distributed.shutdown()


def _sample_on(world: Any, run_dir: Path, n: int, out: str | Path | None, **o: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from tqdm import tqdm

    from brainkern.train import distributed
    from brainkern.train.engine import load_run

    model, cfg, ckpt = load_run(run_dir, o["checkpoint"], str(distributed.resolve_device(o["device"], world)))
    two_d = len(model.shape) == 2
    if two_d and o["format"] != "memmap":
        raise ValueError(
            f"{run_dir} is a 2D run ({model.name}, {model.channels} x {model.shape[0]} x {model.shape[1]} "
            "images): sample it with --format memmap (volumes.npy holds (n, C, S, S)); NIfTI is for volumes"
        )
    plan, names, spec, total = _label_plan(model, run_dir, n, cfg, o["labels"], o["per_class"])
    shard_size = min(int(o["shard_size"]), total)
    scale = cfg.get("data", {}).get("scale")
    settings = {
        "version": _SETTINGS_VERSION,
        "run_dir": str(run_dir.resolve()),
        "checkpoint": o["checkpoint"],
        "iteration": ckpt.get("iter"),
        "model": model.name,
        "n": total,
        "seed": int(o["seed"]),
        "shard_size": shard_size,
        "format": o["format"],
        "labels": spec,
        # A 2D run's images keep their channels (sequences): (C, S, S).
        "shape": [model.channels, *model.shape] if two_d else list(model.shape),
        "affine": np.asarray(ckpt["affine"], dtype=np.float64).tolist(),
        "background": {"[0,1]": 0.0, "[-1,1]": -1.0}.get(scale),
    }
    if two_d:  # only then: a 3D folder's settings stay what they were (reruns compare them)
        settings["images"] = "2d"
    writer = _Writer(Path(out) if out is not None else run_dir / "generated", settings, names)
    world.on_main(writer.prepare)
    writer.open()
    mine = [k for k in range(world.rank, num_shards(total, shard_size), world.size) if not writer.done(k)]
    todo = sum(shard_bounds(k, total, shard_size)[1] for k in mine)
    stop = _stop_after()
    start_time = time.perf_counter()
    error: Exception | None = None
    bar = tqdm(total=todo, unit="vol", desc="sampling", disable=not o["progress"] or not world.is_main)
    try:
        for finished, k in enumerate(mine):
            rows: list[list[Any]] = []
            stream = sample_batches(
                model,
                total,
                labels=plan,
                seed=o["seed"],
                shard_size=shard_size,
                batch_size=o["batch_size"],
                shards=[k],
            )
            for start, volumes, y in stream:
                rows += writer.write(start, volumes, y)
                bar.update(volumes.shape[0])
                if stop is not None and finished >= stop:
                    raise SamplingStopped(
                        f"{STOP_ENV}={stop}: rank {world.rank} stopped after {stop} shard(s)"
                    )
            writer.finish_shard(k, *shard_bounds(k, total, shard_size), rows)
    except Exception as exc:  # noqa: BLE001  (raised below, once every process knows)
        error = exc
    finally:
        bar.close()
        writer.close()
    if world.any(error is not None):
        if error is not None:
            raise error
        raise distributed.RankFailed("another process failed while sampling (see its message)")
    written = int(world.all_reduce_(torch.tensor([todo], dtype=torch.int64))[0])
    paths = world.on_main(lambda: writer.write_table(num_shards(total, shard_size)))
    seconds = time.perf_counter() - start_time
    return {"paths": paths, "out": writer.out, "total": total, "written": written, "seconds": seconds}


def _stop_after() -> int | None:
    value = os.environ.get(STOP_ENV, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{STOP_ENV}={value!r} must be a number of shards") from None


def _label_plan(
    model: Any,
    run_dir: Path,
    n: int,
    cfg: dict[str, Any],
    labels: str | Sequence[str | int] | None,
    per_class: bool,
) -> tuple[LabelPlan | None, list[str], dict[str, Any] | None, int]:
    """``(plan, names, spec, total)``: the label plan, the class name of each label (the
    one name of an unconditional model's volumes), its JSON description, the volume count."""
    trained = cfg.get("data", {}).get("classes")
    if not model.conditional:
        if per_class or labels is not None:
            raise ValueError(
                f"{model.name} is unconditional: it takes no --per-class or --labels (it generates "
                "whatever it learned)"
            )
        return None, [trained[0] if trained and len(trained) == 1 else UNCONDITIONAL_LABEL], None, n
    classes = run_classes(run_dir, model.num_classes)
    if per_class:
        wanted = parse_labels(list(trained), classes) if trained else list(range(model.num_classes))
        return block_labels(wanted, n), classes, {"per_class": wanted}, n * len(wanted)
    if labels is not None:
        cycle = parse_labels(labels, classes)
        return cycle_labels(cycle), classes, {"cycle": cycle}, n
    raise ValueError(
        f"{model.name} is conditional ({model.num_classes} classes: {', '.join(classes)}): "
        "say which to generate with --per-class or --labels"
    )


class _Writer:
    """One output folder: its settings, the volumes (files or one array), the shard markers, the table.

    ``prepare`` runs on rank 0 before any process writes; ``open`` on every process after it.
    """

    def __init__(self, out: Path, settings: dict[str, Any], names: list[str]) -> None:
        self.out = out
        self.settings = json.loads(json.dumps(settings))  # as it reads back
        self.names = names
        self.format = settings["format"]
        self.array: Any = None

    @property
    def array_path(self) -> Path:
        return self.out / "volumes.npy"

    def _marker(self, k: int) -> Path:
        return self.out / SHARDS_DIR / f"{k}.json"

    def prepare(self) -> None:
        """Check or record the settings, clear what an interrupted run left half-written,
        and create the array (``memmap``)."""
        import numpy as np

        from brainkern.data.io import atomic_path

        path = self.out / SETTINGS_FILE
        if path.is_file():
            try:
                before = json.loads(path.read_text())
            except ValueError:
                before = None
            if before != self.settings:
                raise ValueError(
                    f"{self.out} holds another sampling run: {_differences(before, self.settings)}; "
                    "rerun with its settings to finish it, or choose another --out"
                )
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(self.settings, indent=1))
        (self.out / SHARDS_DIR).mkdir(exist_ok=True)
        for stale in [
            *self.out.glob(".sample_*.tmp*"),
            *self.out.glob(".volumes.npy.*"),
            *(self.out / SHARDS_DIR).glob(".*"),
        ]:
            stale.unlink(missing_ok=True)
        if self.format != "memmap":
            return
        shape = (self.settings["n"], *self.settings["shape"])
        try:
            ok = np.load(self.array_path, mmap_mode="r").shape == shape
        except (OSError, ValueError):
            ok = False
        if ok:
            return
        if any((self.out / SHARDS_DIR).glob("*.json")):
            raise ValueError(
                f"{self.array_path} is missing or damaged but shards are marked done: "
                f"remove {self.out} and sample again"
            )
        with atomic_path(self.array_path) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape).flush()

    def open(self) -> None:
        if self.format == "memmap":
            import numpy as np

            self.array = np.load(self.array_path, mmap_mode="r+")

    def close(self) -> None:
        if self.array is not None:
            self.array.flush()
            self.array = None

    def done(self, k: int) -> bool:
        """Whether shard ``k``'s marker is there, whole, and (NIfTI) its files too."""
        try:
            marker = json.loads(self._marker(k).read_text())
        except (OSError, ValueError):
            return False
        start, count = shard_bounds(k, self.settings["n"], self.settings["shard_size"])
        if (marker.get("start"), marker.get("count"), len(marker.get("rows", []))) != (start, count, count):
            return False
        return self.format == "memmap" or all((self.out / row[3]).is_file() for row in marker["rows"])

    def write(self, start: int, volumes: Any, labels: Any) -> list[list[Any]]:
        """Write one batch ``(B, 1, D, H, W)`` (a 2D run's ``(B, C, S, S)``, memmap only); its rows
        ``[index, label, subject, file or row]``."""
        from brainkern.data.io import save_volume
        from brainkern.train.engine import file_part

        rows = []
        data = volumes.numpy() if volumes.dim() == 4 else volumes[:, 0].numpy()
        if self.format == "memmap":
            self.array[start : start + len(data)] = data
        suffix = ".nii.gz" if self.format == "nifti" else ".nii"
        affine = self.settings["affine"]
        for i in range(len(data)):
            index = start + i
            name = self.names[0] if labels is None else self.names[int(labels[i])]
            where: int | str = index
            if self.format != "memmap":
                where = f"sample_{index:05d}" + ("" if labels is None else f"_{file_part(name)}") + suffix
                save_volume(data[i], affine, self.out / where)
            rows.append([index, name, f"synthetic-{index:05d}", where])
        return rows

    def finish_shard(self, k: int, start: int, count: int, rows: list[list[Any]]) -> None:
        """Make the shard's volumes durable, then mark it done (atomically)."""
        from brainkern.data.io import atomic_path

        if self.array is not None:
            self.array.flush()
        else:
            for row in rows:
                _fsync(self.out / row[3])
        with atomic_path(self._marker(k)) as tmp:
            with open(tmp, "w") as fh:
                json.dump({"shard": k, "start": start, "count": count, "rows": rows}, fh)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync(self.out / SHARDS_DIR)

    def write_table(self, shards: int) -> list[Path]:
        """Rank 0, after every shard is done: ``labels.csv`` (NIfTI) or ``index.csv`` (memmap)
        from the shard markers, in volume order; the paths :func:`sample_run` returns."""
        import csv

        from brainkern.data.io import atomic_path
        from brainkern.data.sources import Record, write_table

        rows = []
        for k in range(shards):
            if not self.done(k):
                raise RuntimeError(f"shard {k} of {self.out} is not done after every process finished")
            rows += json.loads(self._marker(k).read_text())["rows"]
        if self.format == "memmap":
            with atomic_path(self.out / "index.csv") as tmp, open(tmp, "w", newline="") as fh:
                table = csv.writer(fh, lineterminator="\n")
                table.writerow(["row", "label", "subject"])
                table.writerows(row[:3] for row in rows)
            return [self.array_path]
        paths = [self.out / row[3] for row in rows]
        write_table(
            [Record(p, row[1], row[2]) for p, row in zip(paths, rows, strict=True)], self.out / "labels.csv"
        )
        return paths


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _differences(before: Any, now: dict[str, Any]) -> str:
    if not isinstance(before, dict):
        return f"its {SETTINGS_FILE} is unreadable"
    keys = [k for k in now if before.get(k) != now[k]] + [k for k in before if k not in now]
    shown = [k for k in keys if k != "affine"] or keys
    return ", ".join(f"{k} {before.get(k)!r} there, {now.get(k)!r} here" for k in shown)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = _sample(
            args.run_dir,
            args.n,
            args.out,
            labels=args.labels,
            per_class=args.per_class,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint=args.checkpoint,
            device=args.device,
            progress=not args.quiet,
            format=args.format,
            shard_size=args.shard_size,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0
    out, written, seconds = result["out"], result["written"], result["seconds"]
    table = out / ("index.csv" if args.format == "memmap" else "labels.csv")
    where = out / "volumes.npy" if args.format == "memmap" else out
    print(
        f"{result['total']} volumes in {where} ({written} written now, "
        f"{result['total'] - written} found done), labels in {table}; "
        f"{written / max(seconds, 1e-9):.2f} volumes/s over {seconds:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
