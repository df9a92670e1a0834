"""The training engine: one readable loop around a recipe, and the run directory.

A run directory holds::

    config.yaml          the resolved configuration (rerun with --config)
    run.json             versions, device, command, seed, start time
    metrics.jsonl        one JSON object per logged step ({"iter": ..., "loss_d": ...})
    checkpoints/last.pt  the latest state (atomic writes); best.pt: lowest check MMD^2
    samples/             NIfTI volumes on the data set's grid (its affine)
    pictures/            PNG mosaics and loss curves (written by callbacks)

Resuming (``Trainer(..., resume=True)``) restores the model, the optimisers, the
batch order and every random generator, so a resumed run computes what the
uninterrupted run would have (bit for bit on the CPU). SIGINT and SIGTERM finish
the current iteration, write a checkpoint and raise :class:`Interrupted`; a
non-finite loss raises :class:`Diverged` before anything is written, so the last
good checkpoint stays intact.

Under ``torchrun`` (:mod:`brainkern.train.distributed`) the trainer of every
process trains the same run on its slice of each global batch; rank 0 alone
writes the run directory and runs the callbacks while the others wait, losses
are averaged over the processes at logging windows, and a non-finite loss or a
signal on any process stops all of them together. A checkpoint holds the global
state, so a run resumes on any number of processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkern.train import config as config_mod
from brainkern.train import distributed
from brainkern.train.data import Batches, evaluation_indices, load_run_data, real_volumes, training_indices
from brainkern.train.recipes import Recipe, make_recipe, train_dtype
from brainkern.train.state import CheckpointError, load_checkpoint, save_checkpoint, seed_everything

# MMD tests of B=8 generated vs real volumes at each check: cheap, and stable enough to
# pick the best checkpoint.
_CHECK_TESTS = 2


class Interrupted(RuntimeError):
    """The run was stopped by SIGINT/SIGTERM after writing a checkpoint."""


class Diverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is left as it was."""


class Callback:
    """Hooks the engine calls; pictures and reports plug in here (see ``brainkern.experiment.kwon``)."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_check(self, trainer: Trainer, it: int) -> None: ...

    def on_end(self, trainer: Trainer) -> None: ...


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is the first CUDA device when there is one, else the CPU."""
    return distributed.resolve_device(name, distributed.World())


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def versions(device: torch.device) -> dict[str, Any]:
    """What produced a run: package versions, commit, device."""
    import numpy

    from brainkern import _ext

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "brainkern_commit": _git_commit(),
        "extension": _ext.extension_status(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far: allocated on a CUDA device, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def build_run_model(cfg: dict[str, Any], device: torch.device, log=None):
    """The model a configuration describes, on ``device`` (weights from ``cfg["seed"]``).

    Keys of the ``model`` section that the chosen model does not take (a preset's
    ``code_hidden`` after ``--model wgan-gp``) are left out, with a note to ``log``.
    """
    from brainkern.models import build_model, model_parameters

    model_cfg = dict(cfg["model"])
    name = model_cfg.pop("name")
    accepted = model_parameters(name)
    for key in ("checkpoint", "gradfix"):
        if key in accepted:
            model_cfg.setdefault(key, bool(cfg["train"][key]))
        elif cfg["train"][key] and log is not None:
            log(f"note: {name} does not take {key} (train.{key}); left out")
    unused = sorted(k for k in model_cfg if k not in accepted)
    if unused and log is not None:
        log(f"note: {name} does not take model.{', model.'.join(unused)}; left out")
    model_cfg = {k: v for k, v in model_cfg.items() if k in accepted}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = build_model(name, **model_grid(cfg["data"]), **model_cfg)
    return model.to(device)


def model_grid(data: dict[str, Any]) -> dict[str, Any]:
    """What a model is built for from the ``data`` section: ``{"shape": (D, H, W)}`` for a 3D
    run, ``{"shape": (S, S), "channels": C}`` for a 2D run (``data.slices``; one channel per
    sequence; ``data.images``: one channel).

    Raises:
        ValueError: a 2D run without ``data.slices.size``.
    """
    if data.get("images"):  # a stimulus image domain: grey images
        return {"shape": (int(data["images"].get("size", 64)),) * 2, "channels": 1}
    slices = data.get("slices")
    if slices is None:
        return {"shape": tuple(data["shape"])}
    if not slices.get("size"):
        raise ValueError("data.slices.size: a 2D run needs the side of its square images (e.g. 64)")
    return {"shape": (int(slices["size"]),) * 2, "channels": len(data.get("sequences") or ("t1",))}


def with_num_classes(cfg: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """``cfg`` with ``model.num_classes`` set to the number of the data set's ``classes``
    when the model's factory takes ``num_classes`` (a class-conditional model) and the
    configuration leaves it unset; otherwise ``cfg`` itself. Labels are indices into all
    of the data set's classes (also when ``data.classes`` trains on some of them), so
    the model needs all of them.

    Raises:
        ValueError: a ``model.num_classes`` other than the data set's class count.
    """
    from brainkern.models import model_parameters

    name = cfg["model"]["name"]
    if "num_classes" not in model_parameters(name):
        return cfg
    given, n = cfg["model"].get("num_classes"), len(classes)
    if given is None:
        return {**cfg, "model": {**cfg["model"], "num_classes": n}}
    if int(given) != n:
        raise ValueError(
            f"model.num_classes={given}, but the data set has {n} classes ({', '.join(map(str, classes))}); "
            "leave model.num_classes unset to take it from the data"
        )
    return cfg


def recipe_train(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` section as the recipe gets it: ``diffaugment_background`` filled in from
    ``data.scale`` (-1 for ``[-1,1]``, 0 for ``[0,1]``) where left unset."""
    train = dict(cfg["train"])
    if train.get("diffaugment_background") is None:
        train["diffaugment_background"] = 0.0 if cfg["data"].get("scale") == "[0,1]" else -1.0
    return train


def file_part(text: str) -> str:
    """``text`` with every character outside ``[A-Za-z0-9._-]`` as ``_`` (a class name in a file name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)) or "_"


def load_run(run_dir: str | os.PathLike, which: str = "last", device: str = "auto"):
    """The trained model of a run directory, for sampling and evaluation.

    Args:
        run_dir: a run directory written by :class:`Trainer`.
        which: ``"last"`` or ``"best"`` checkpoint.
        device: where to put the model (``"auto"``: CUDA when there is one).

    Returns:
        ``(model, cfg, checkpoint)``: the model in eval mode, the run's configuration,
        and the checkpoint dict (``"iter"``, ``"affine"`` of the training grid, ...).

    Raises:
        FileNotFoundError: not a run directory, or no such checkpoint.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not a brainkern run directory")
    ckpt = load_checkpoint(run_dir / "checkpoints" / f"{which}.pt")
    cfg = ckpt["config"]
    dev = resolve_device(device)
    model = build_run_model(cfg, dev)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, ckpt


class Trainer:
    """Trains the model of a configuration, writing a run directory.

    Args:
        cfg: a resolved configuration (:func:`brainkern.train.config.resolve`).
        run_dir: the run directory (created).
        resume: continue where the run stopped: ``True`` or ``"last"`` from
            ``checkpoints/last.pt``, ``"previous"`` from the checkpoint written
            before it (kept for when ``last.pt`` is damaged); ``cfg`` may raise
            ``train.iters`` to train longer.
        progress: show the progress bar (and cohort/preprocessing bars).
        callbacks: :class:`Callback` objects (pictures, evaluation).
        log: where to print messages (``None`` for silence).

    Under ``torchrun`` every process makes a ``Trainer`` with the same arguments;
    ``train.batch_size`` is then the global batch, messages, progress bars and
    callbacks come from rank 0 only.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint.
        CheckpointError: the checkpoint to resume from cannot be read (one line
            naming the file, and the previous checkpoint when there is one).
        ValueError: ``train.batch_size`` not a multiple of the number of processes,
            or a ``train.device`` that does not fit them.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        run_dir: str | os.PathLike,
        *,
        resume: bool | str = False,
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        log=print,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.world = world = distributed.setup()
        self.progress = progress and world.is_main
        self.callbacks = list(callbacks)
        self.log = (log if world.is_main else None) or (lambda *a, **k: None)
        self.device = distributed.resolve_device(cfg["train"]["device"], world)
        distributed.local_batch(cfg["train"]["batch_size"], world.size)  # fail before any data work
        model_grid(cfg["data"])  # likewise: a 2D run without its image size
        dtype = train_dtype(cfg["train"])
        if cfg["train"].get("threads"):
            torch.set_num_threads(int(cfg["train"]["threads"]))
        ckpt = None
        if resume:
            which = "last" if resume is True else str(resume)
            ckpt = world.on_main(lambda: self._load_resume_checkpoint(which))
            self._resumed_from = self.checkpoint_path(which)

        # The split comes first: preprocessing fits its trimming box and mask on the
        # training part only, and the generator never sees a held-out subject.
        with world.local_main_first():  # one process per host simulates and caches the data
            self.split, self.dataset = load_run_data(cfg["data"], progress=self.progress)
        self.indices = training_indices(self.dataset, cfg["data"]["classes"], self.split)
        self.cfg = cfg = with_num_classes(cfg, self.dataset.classes)
        self.model = build_run_model(cfg, self.device, log=self.log)
        if dtype != torch.float32:
            _compute_in(self.model, dtype)
        if cfg["train"].get("sync_batchnorm"):
            distributed.convert_sync_batchnorm(self.model)
        self.recipe: Recipe = make_recipe(self.model, recipe_train(cfg), self.device, world)
        data = cfg["data"]
        # A recipe that fits on the whole training set (the "em" family) gets all of it per batch.
        self.batch_size = len(self.indices) if self.recipe.whole_data else int(cfg["train"]["batch_size"])
        self.batches = Batches(
            self.dataset,
            self.indices,
            self.batch_size,
            seed=cfg["seed"],
            flip=bool(data["flip"]),
            intensity=tuple(data["intensity"]) if data["intensity"] else None,
            device=self.device,
            rank=world.rank,
            world_size=world.size,
            dtype=None if dtype == torch.float32 else dtype,
        )
        # A recipe that reads a second batch per iteration takes it from the same stream,
        # so the batches' state in a checkpoint covers it.
        self.recipe.draw = lambda: next(self.batches)
        self.iteration = 0  # iterations completed
        self.best: dict[str, Any] = {"iter": None, "check_mmd2": math.inf}
        self.elapsed = 0.0  # training seconds over all sessions of the run
        if ckpt is not None:
            self._restore(ckpt)
        self._stop_signal: int | None = None

    # ---------------------------------------------------------------- run directory

    def checkpoint_path(self, which: str = "last") -> Path:
        return self.run_dir / "checkpoints" / f"{which}.pt"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config_mod.dump(self.cfg))
        info = {
            "seed": self.cfg["seed"],
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_iter": self.iteration,
            "versions": versions(self.device),
            "data": {
                "n_volumes": len(self.dataset),
                "n_training": len(self.indices),
                "classes": self.dataset.classes,
                "shape": list(self.dataset.shape),
                "preprocessing": self.dataset.config,
            },
            "parameters": self.model.parameter_counts(),
        }
        path = self.run_dir / "run.json"
        if self.iteration and path.is_file():  # a resumed run keeps its first record
            first = json.loads(path.read_text())
            first.setdefault("resumes", []).append(
                {k: info[k] for k in ("command", "started", "resumed_from_iter", "versions")}
            )
            info = first
        path.write_text(json.dumps(info, indent=2, default=str) + "\n")
        self._write_split()
        # Steps logged after the checkpoint we resume from never happened in this history.
        if self.metrics_path.exists():
            kept = []
            for line in self.metrics_path.read_text().splitlines():
                try:
                    if json.loads(line)["iter"] <= self.iteration:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue
            self.metrics_path.write_text("".join(f"{line}\n" for line in kept))

    def evaluation_indices(self) -> tuple[np.ndarray, str]:
        """The real volumes samples are compared with at the end of the run
        (:func:`brainkern.train.data.evaluation_indices`): ``(indices, description)``."""
        return evaluation_indices(self.dataset, self.cfg["data"]["classes"], self.split)

    def _write_split(self) -> None:
        """``split.json``: the subject ids and volumes of each part, so leakage can be checked."""
        paths = [str(p) for p in self.dataset.paths]
        if self.split is None:
            record = {"method": "none", "parts": {"train": list(range(len(paths)))}}
        else:
            record = dict(self.split)
        record["classes"] = self.cfg["data"]["classes"]
        record["files"] = {part: [paths[i] for i in idx] for part, idx in record["parts"].items()}
        record["trained_on"] = self.indices.tolist()
        (self.run_dir / "split.json").write_text(json.dumps(record, indent=1) + "\n")

    def _state(self) -> dict[str, Any]:
        return {
            "iter": self.iteration,
            "model": self.model.state_dict(),
            "model_config": self.model.config,
            "recipe": self.recipe.state_dict(),  # optimisers and the lazy penalty's counters
            "batches": self.batches.state_dict(),
            "rng": distributed.rng_state(self.device),
            "best": dict(self.best),
            "elapsed": self.elapsed,
            "config": self.cfg,
            "affine": self.dataset.affine.tolist(),
        }

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.recipe.load_state_dict(ckpt["recipe"] if "recipe" in ckpt else ckpt["optimizers"])
        self.batches.load_state_dict(ckpt["batches"])
        self.iteration = int(ckpt["iter"])
        self.best = dict(ckpt["best"])
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        self._resume_rng = ckpt["rng"]

    def _load_resume_checkpoint(self, which: str) -> dict[str, Any]:
        if which not in ("last", "previous"):
            raise ValueError(f"resume from 'last' or 'previous', got {which!r}")
        path = self.checkpoint_path(which)
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            previous = self.checkpoint_path("previous")
            hint = (
                f"; resume from the checkpoint before it ({previous}) with --resume-from previous"
                if which == "last" and previous.is_file()
                else ""
            )
            raise CheckpointError(f"{exc}{hint}") from None
        self._resumed_from = path
        return ckpt

    def save(self, which: str = "last") -> Path:
        """Write the current state to ``checkpoints/<which>.pt`` (atomically).

        Writing ``last`` first moves the existing ``last.pt`` to ``previous.pt``,
        so the run keeps one earlier good checkpoint to resume from should the
        newest be damaged later (a full disk, a copy cut short).
        """
        path = self.checkpoint_path(which)
        if not self.world.is_main:  # rank 0 writes for the run
            return path
        if which == "last" and path.is_file():
            os.replace(path, self.checkpoint_path("previous"))
        return save_checkpoint(self._state(), path)

    def save_samples(self, n: int, folder: str | os.PathLike | None = None, *, seed: int = 0) -> list[Path]:
        """``n`` generated volumes as NIfTI on the data set's grid: ``samples/sample_###.nii.gz``,
        or for a conditional model ``samples/sample_###_<class>.nii.gz``, the classes in turn
        (sample ``i`` of class ``i % num_classes``). A 2D model's images go to
        ``samples/sample_###.png`` (its channels side by side) and ``samples/samples.npy``
        ``(n, C, S, S)``."""
        folder = Path(folder) if folder is not None else self.run_dir / "samples"
        gen = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % self.model.num_classes if self.model.conditional else None
        volumes = self.model.sample(
            n, labels, generator=gen, batch_size=self.cfg["train"]["batch_size"], device=self.device
        )
        names = [f"sample_{i:03d}" for i in range(n)]
        if labels is not None:
            classes = [file_part(self.dataset.classes[int(k)]) for k in labels]
            names = [f"{name}_{cls}" for name, cls in zip(names, classes, strict=True)]
        if len(self.model.shape) == 2:  # 2D images: PNG (channels side by side) and one array of all
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / "samples.npy", volumes.numpy())
            low = 0.0 if self.cfg["data"]["scale"] == "[0,1]" else -1.0
            return [
                self.dataset.save(v, folder / f"{name}.png", value_range=(low, 1.0))
                for name, v in zip(names, volumes, strict=True)
            ]
        return [
            self.dataset.save(v[0].numpy(), folder / f"{name}.nii.gz")
            for name, v in zip(names, volumes, strict=True)
        ]

    # ---------------------------------------------------------------- checks

    def check(self) -> float:
        """Linear batch MMD^2 between fixed-latent samples and fixed real volumes
        (up to 2 tests of B=8; the best checkpoint is the lowest). A conditional model
        generates for the classes of the real volumes it is compared with, volume by volume."""
        from brainkern.ops import mmd2_batched

        b = min(8, len(self.indices))
        tests = max(1, min(_CHECK_TESTS, len(self.indices) // b))
        gen = torch.Generator().manual_seed(self.cfg["seed"] + 1)
        if self.model.conditional:
            # Sorted: real_volumes reads in file order, so sample i gets real volume i's class.
            pick = np.sort(
                self.indices[torch.randperm(len(self.indices), generator=gen)[: tests * b].numpy()]
            )
            labels = torch.as_tensor(self.dataset.labels[pick], dtype=torch.int64)
            fake = self.model.sample(tests * b, labels, generator=gen, batch_size=b, device=self.device)
        else:
            fake = self.model.sample(tests * b, generator=gen, batch_size=b, device=self.device)
            pick = self.indices[torch.randperm(len(self.indices), generator=gen)[: tests * b].numpy()]
        real = real_volumes(self.dataset, pick)
        return float(mmd2_batched(real.view(tests, b, -1), fake.view(tests, b, -1)).mean())

    # ---------------------------------------------------------------- signals

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum, frame):  # noqa: ARG001
            if self._stop_signal is not None:  # a second signal: stop now (checkpoints are atomic)
                raise KeyboardInterrupt
            self._stop_signal = signum
            self.log(
                f"\n{signal.Signals(signum).name}: finishing iteration {self.iteration + 1}, then saving"
            )

        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ---------------------------------------------------------------- the loop

    def fit(self) -> Path:
        """Train until ``train.iters``; returns the run directory.

        The device is read (synchronised) only at logging windows and before
        anything is written, never per iteration.

        Raises:
            Interrupted: SIGINT/SIGTERM (a checkpoint was written first).
            Diverged: a NaN or infinite loss (nothing written since it appeared).
        """
        self._start()
        window = _Window(self.recipe.losses, self.device, self.world)
        # Rank 0 writes the metrics log; the others take part in its collectives only.
        log_file = open(self.metrics_path, "a") if self.world.is_main else contextlib.nullcontext(_Discard())
        with self._signals(), self._progress_bar() as bar, log_file as metrics:
            while self.iteration < self.total:
                start = time.perf_counter()
                losses = self.recipe.step(next(self.batches))
                self.iteration += 1
                self.elapsed += time.perf_counter() - start
                window.add(losses, self.iteration)
                bar.update(1)
                if self._due("every"):
                    self._log_window(window, metrics, bar)
                if self._due("picture_every"):
                    self._periodic_check(window, metrics)
                if self._due("checkpoint_every"):
                    self._save_checked(window, "last")
                if self._stop_requested():
                    self._stop(window)
        return self._finish()

    # ---------------------------------------------------------------- pieces of the loop

    @property
    def total(self) -> int:
        return int(self.cfg["train"]["iters"])

    def _due(self, key: str) -> bool:
        return self.iteration % int(self.cfg["log"][key]) == 0 or self.iteration == self.total

    def _start(self) -> None:
        cfg, tcfg, world = self.cfg, self.cfg["train"], self.world
        batch = f"batch {self.batch_size}" + (" (the whole training set)" if self.recipe.whole_data else "")
        if world.distributed:
            batch += f" ({world.size} processes x {tcfg['batch_size'] // world.size})"

        def begin() -> None:
            self._prepare_run_dir()
            if cfg["data"].get("images"):  # a stimulus domain's grey images
                grid, items = f"images {'x'.join(map(str, self.dataset.shape))}", "training images"
            else:
                grid, items = f"grid {tuple(cfg['data']['shape'])}", "training volumes"
            self.log(
                f"model {self.model.name} on {self.device} | {grid} | "
                f"{len(self.indices)} {items} | {batch} | seed {cfg['seed']}"
            )
            self.log(self.model.describe())
            for cb in self.callbacks:
                cb.on_start(self)

        world.on_main(begin)
        if hasattr(self, "_resume_rng"):
            distributed.set_rng_state(self._resume_rng, self.device)
            del self._resume_rng
            self.log(f"resumed at iteration {self.iteration} from {self._resumed_from}")
        else:
            # Data loading may or may not have drawn random numbers (a cached cohort does
            # not): start every fresh run from the same state.
            seed_everything(self.cfg["seed"])
        self.model.train()

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(
            total=self.total,
            initial=self.iteration,
            disable=not self.progress,
            unit="it",
            dynamic_ncols=True,
        )

    def _log_window(self, window: _Window, metrics, bar) -> None:
        """Write the window's mean losses to the metrics log (the one place losses are read)."""
        self._raise_if_diverged(window)
        record = {"iter": self.iteration, "time": round(self.elapsed, 3), **window.means()}  # a collective
        record["it_per_s"] = window.rate()
        record["peak_mem_gib"] = round(peak_memory_gib(self.device), 4)
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        bar.set_postfix({k: f"{record[k]:.3g}" for k in self.recipe.losses if k in record})
        window.reset()

    def _periodic_check(self, window: _Window, metrics) -> None:
        """Check MMD^2, pictures (callbacks), and the best checkpoint."""
        self._raise_if_diverged(window)

        def check_and_report() -> float:
            value = self.check()
            metrics.write(json.dumps({"iter": self.iteration, "check_mmd2": value}) + "\n")
            metrics.flush()
            for cb in self.callbacks:
                cb.on_check(self, self.iteration)
            return value

        # Rank 0 checks; every rank gets its value, so all agree on the best iteration.
        value = self.world.on_main(check_and_report, sync_rng=True)
        if value < self.best["check_mmd2"]:
            self.best = {"iter": self.iteration, "check_mmd2": value}
            self.world.on_main(lambda: self.save("best"))

    def _save_checked(self, window: _Window, which: str) -> Path:
        self._raise_if_diverged(window)
        return self.world.on_main(lambda: self.save(which))

    def _raise_if_diverged(self, window: _Window) -> None:
        bad = window.first_nonfinite()  # synchronises: called at windows and before writes only
        if bad is None:
            return
        names, it = bad
        last = self.checkpoint_path("last")
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        raise Diverged(
            f"{', '.join(names)} became non-finite at iteration {it}; {kept}. "
            "Try a lower train.lr, train.amp=off, or a different seed."
        )

    def _stop_requested(self) -> bool:
        if not self.world.distributed:
            return self._stop_signal is not None
        # The processes agree at logging windows (a signal reaches them at different
        # moments of an iteration), so all of them stop after the same one.
        return self._due("every") and self.world.any(self._stop_signal is not None)

    def _stop(self, window: _Window) -> None:
        path = self._save_checked(window, "last")
        what = (
            "a signal to another process"
            if self._stop_signal is None
            else signal.Signals(self._stop_signal).name
        )
        raise Interrupted(
            f"{what} at iteration {self.iteration}: checkpoint written to {path}; "
            f"continue with --resume {self.run_dir}"
        )

    def _finish(self) -> Path:
        where = self.run_dir / "checkpoints"
        self.log(f"trained {self.iteration} iterations in {self.elapsed:.1f} s; checkpoints in {where}")

        def end() -> None:
            if self.cfg["log"]["n_samples"]:
                paths = self.save_samples(int(self.cfg["log"]["n_samples"]))
                what = "images (PNG, samples.npy)" if len(self.model.shape) == 2 else "volumes (NIfTI)"
                self.log(f"{len(paths)} sample {what} in {paths[0].parent}")
            for cb in self.callbacks:
                cb.on_end(self)

        self.world.on_main(end)  # the other ranks wait here for rank 0's report
        return self.run_dir


class _Discard:
    """A file that forgets what is written (the metrics log of ranks other than 0)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None: ...


def _compute_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Parameters and buffers of ``model`` in ``dtype`` (in place), and every network's
    floating-point inputs cast to it on the way in: the model's own sampling draws
    float32 latents, which a float64 network would refuse."""

    def cast(module, args):  # noqa: ARG001
        return tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
        )

    model.to(dtype)
    for net in model.networks().values():
        net.register_forward_pre_hook(cast)


class _Window:
    """Losses of the iterations since the last log line, kept on the device.

    Sums and the first iteration at which each loss became non-finite are tensor
    operations, so adding an iteration never waits for the device; reading them
    (:meth:`means`, :meth:`first_nonfinite`) does, at logging windows only.
    """

    def __init__(
        self, names: Sequence[str], device: torch.device, world: distributed.World | None = None
    ) -> None:
        self.names = tuple(names)
        self.device = device
        self.world = world or distributed.World()
        # 0: finite so far; else the first iteration with a non-finite value (over the whole run).
        self.bad = torch.zeros(len(self.names), dtype=torch.int64, device=device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        self.count = 0
        self.started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], it: int) -> None:
        if set(losses) != set(self.names):
            raise RuntimeError(
                f"the recipe returned losses {sorted(losses)} but declares {sorted(self.names)} "
                "(Recipe.losses): make them agree"
            )
        values = torch.stack([losses[k].detach().double().reshape(()) for k in self.names])
        finite = torch.isfinite(values)
        self.bad = torch.where((self.bad == 0) & ~finite, torch.full_like(self.bad, it), self.bad)
        self.sums += values
        self.count += 1

    def means(self) -> dict[str, float]:
        """Mean of each loss over the window (and over the processes, which all call this)."""
        sums = self.sums
        if self.world.distributed:
            sums = self.world.all_reduce_(sums.clone()) / self.world.size
        sums = sums.tolist()
        return {k: v / max(self.count, 1) for k, v in zip(self.names, sums, strict=True)}

    def rate(self) -> float:
        return self.count / max(time.perf_counter() - self.started, 1e-9)

    def first_nonfinite(self) -> tuple[list[str], int] | None:
        """The losses that first became non-finite and that iteration, on any process
        (all of them call this and get the same answer), or ``None``."""
        if self.world.distributed:
            never = torch.full_like(self.bad, torch.iinfo(torch.int64).max)
            earliest = self.world.all_reduce_(torch.where(self.bad == 0, never, self.bad), "min")
            self.bad = torch.where(earliest == never, torch.zeros_like(self.bad), earliest)
        bad = self.bad.tolist()
        hits = [b for b in bad if b > 0]
        if not hits:
            return None
        first = min(hits)
        return [k for k, b in zip(self.names, bad, strict=True) if b == first], first
