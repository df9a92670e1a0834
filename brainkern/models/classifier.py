"""Classifiers behind one small interface: ``fit``, ``predict``, ``predict_proba``, ``save``, ``load``.

The augmentation experiments (Zhuang et al. 2019; King et al.) train the same
classifier on real and on real + synthetic volumes and test it on held-out real
volumes. Some of their classifiers are scikit-learn estimators (a linear SVM on
masked voxels), others torch networks (3D CNNs); the experiment code sees only
:class:`Classifier`. Volumes come in as ``(N, 1, D, H, W)`` float32 tensors or
arrays, labels as ``(N,)`` integers ``0 .. C-1``.

- :class:`SklearnClassifier` wraps an estimator (or pipeline) that takes flat
  feature rows; it flattens volumes itself.
- :class:`TorchClassifier` wraps an ``nn.Module`` mapping volumes to ``(N, C)``
  logits and trains it with Adam or AdamW on the cross-entropy, seeded, in
  mini-batches of a fixed set (optionally augmented afresh each batch) or of a
  stream of fresh batches (:meth:`TorchClassifier.fit_stream`).

``fit(x, y, validation=(x_val, y_val))`` takes held-out real volumes for model
selection only, as Zhuang et al. (2019) pick their classifiers on a validation
split: a scikit-learn classifier chooses among candidate hyper-parameters (its
``grid``) by validation accuracy, a torch classifier keeps the weights of its best
epoch (by validation accuracy, or by validation loss as King et al. 2024 do). The
validation volumes are never trained on. Both save to a single file
and load back into an equal classifier, with what the selection recorded.
"""

from __future__ import annotations

import abc
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Classifier", "SklearnClassifier", "TorchClassifier"]

# (x_val, y_val): held-out volumes (N, 1, D, H, W) and their labels (N,).
Validation = tuple[Any, Any]


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(y: Any, n: int) -> np.ndarray:
    y = _array(y).astype(np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} volumes")
    return y


def _validation_pair(validation: Validation | None, classes: np.ndarray) -> tuple[Any, np.ndarray] | None:
    """The validation volumes and labels, checked against the training classes."""
    if validation is None:
        return None
    try:
        x_val, y_val = validation
    except (TypeError, ValueError):
        raise TypeError("validation must be a pair (x_val, y_val)") from None
    n = _array(x_val).shape[0]
    if n == 0:
        raise ValueError("validation has no volumes")
    y_val = _labels(y_val, n)
    unseen = np.setdiff1d(y_val, classes)
    if unseen.size:
        raise ValueError(
            f"validation labels {unseen.tolist()} do not occur in the training labels {classes.tolist()}"
        )
    return x_val, y_val


class Classifier(abc.ABC):
    """What the experiments need of a classifier.

    Attributes:
        name: the registry name (set by :func:`brainkern.models.build_model`).
        config: the keyword arguments that rebuild it.
        classes_: ``(C,)`` the class labels seen in :meth:`fit`, sorted.
    """

    name: str = ""
    config: dict[str, Any]
    classes_: np.ndarray

    @abc.abstractmethod
    def fit(self, x: Any, y: Any, *, validation: Validation | None = None) -> Classifier:
        """Train on volumes ``x`` ``(N, 1, D, H, W)`` with labels ``y`` ``(N,)``; returns self.

        Args:
            validation: ``(x_val, y_val)``, held-out real volumes and their labels,
                used for model selection only (never trained on).

        Raises:
            ValueError: labels that do not match the volumes, or validation labels
                of a class the training labels lack.
        """

    @abc.abstractmethod
    def predict_proba(self, x: Any) -> np.ndarray:
        """``(N, C)`` class probabilities, columns in the order of ``classes_``."""

    def predict(self, x: Any) -> np.ndarray:
        """``(N,)`` predicted labels."""
        return self.classes_[np.argmax(self.predict_proba(x), axis=1)]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted classifier to one file; returns its path."""
        from brainkern.data.io import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save({"class": type(self).__name__, "state": self._state()}, fh)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classifier:
        """Read a classifier written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            RuntimeError: the file is not a saved brainkern classifier.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no classifier at {path}")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            kind = {c.__name__: c for c in (SklearnClassifier, TorchClassifier)}[blob["class"]]
        except Exception as exc:  # noqa: BLE001  (pickle, zip, key errors alike)
            raise RuntimeError(f"{path} is not a saved brainkern classifier: {exc}") from exc
        return kind._from_state(blob["state"])

    @abc.abstractmethod
    def _state(self) -> dict[str, Any]: ...

    @classmethod
    @abc.abstractmethod
    def _from_state(cls, state: dict[str, Any]) -> Classifier: ...


class SklearnClassifier(Classifier):
    """A scikit-learn estimator on flattened volumes.

    Args:
        estimator: an unfitted estimator or pipeline with ``fit`` / ``predict`` and
            ``predict_proba`` or ``decision_function`` (a linear SVM's decision
            values become probabilities through a softmax; for calibrated ones wrap
            it in ``CalibratedClassifierCV``).
        grid: candidate hyper-parameters, ``{"<step>__<param>": [values, ...]}`` as
            ``estimator.set_params`` takes them (e.g. ``{"linearsvc__C": [0.1, 1]}``).
            With more than one combination, :meth:`fit` fits a copy of the estimator
            on the training volumes for each and keeps the one with the highest
            validation accuracy (the first in grid order on a tie); it then needs
            ``validation``.

    Attributes:
        selection_: after :meth:`fit` with validation, one
            ``{"params": {...}, "val_accuracy": float}`` per candidate, in grid order.
        best_params_: the chosen combination (``{}`` without a grid).
    """

    def __init__(self, estimator: Any, *, grid: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.estimator = estimator
        self.grid = {k: list(v) for k, v in (grid or {}).items()}
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid[{key!r}] has no values")
        self.config = {}
        self.selection_: list[dict[str, Any]] = []
        self.best_params_: dict[str, Any] = {}

    @staticmethod
    def _rows(x: Any) -> np.ndarray:
        x = _array(x)
        return x.reshape(x.shape[0], -1).astype(np.float32, copy=False)

    def _candidates(self) -> list[dict[str, Any]]:
        from sklearn.model_selection import ParameterGrid

        # ParameterGrid sorts the keys, so the order of the candidates is stable.
        return list(ParameterGrid(self.grid)) if self.grid else [{}]

    def fit(self, x: Any, y: Any, *, validation: Validation | None = None) -> SklearnClassifier:
        """Fit on the training volumes; with a grid, choose by validation accuracy (see the class).

        Raises:
            ValueError: a grid of several candidates without ``validation``, labels
                that do not match the volumes, or unseen validation classes.
        """
        from sklearn.base import clone

        rows = self._rows(x)
        y = _labels(y, rows.shape[0])
        classes = np.unique(y)
        pair = _validation_pair(validation, classes)
        candidates = self._candidates()
        if len(candidates) > 1 and pair is None:
            raise ValueError(
                f"{len(candidates)} candidate settings ({self.grid}) to choose from: "
                "give validation=(x_val, y_val)"
            )
        best, best_score, selection = None, -np.inf, []
        for params in candidates:
            estimator = clone(self.estimator).set_params(**params)
            estimator.fit(rows, y)
            if pair is not None:
                score = float(np.mean(estimator.predict(self._rows(pair[0])) == pair[1]))
                selection.append({"params": dict(params), "val_accuracy": score})
            else:
                score = 0.0
            if score > best_score:
                best, best_score = (estimator, params), score
        self.estimator, self.best_params_ = best[0], dict(best[1])
        self.selection_ = selection
        self.classes_ = np.asarray(self.estimator.classes_)
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        rows = self._rows(x)
        if hasattr(self.estimator, "predict_proba"):
            return np.asarray(self.estimator.predict_proba(rows))
        scores = np.asarray(self.estimator.decision_function(rows), dtype=np.float64)
        if scores.ndim == 1:  # binary: the score of the second class against the first
            scores = np.stack([-scores, scores], axis=1) / 2
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(self.estimator.predict(self._rows(x)))

    def _state(self) -> dict[str, Any]:
        return {
            "estimator": pickle.dumps(self.estimator),
            "grid": self.grid,
            "selection": self.selection_,
            "best_params": self.best_params_,
            "config": self.config,
            "name": self.name,
        }

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> SklearnClassifier:
        out = cls(pickle.loads(state["estimator"]), grid=state.get("grid"))  # noqa: S301  (the user's own file)
        out.config, out.name = state["config"], state["name"]
        out.selection_ = list(state.get("selection", []))
        out.best_params_ = dict(state.get("best_params", {}))
        out.classes_ = np.asarray(out.estimator.classes_)
        return out


class TorchClassifier(Classifier):
    """An ``nn.Module`` (volumes ``(N, 1, D, H, W)`` -> logits ``(N, C)``) trained by Adam or AdamW.

    Every :meth:`fit` starts from the module's weights as they were when the
    classifier was built, so fitting twice with the same data and seed gives the
    same network. Training runs under a forked random state seeded with ``seed``
    (mini-batch order, dropout), which leaves the caller's global generators as
    they were.

    With ``validation``, the network is evaluated (eval mode) on the validation
    volumes after every epoch, and the weights of the best epoch are restored at
    the end. ``select="accuracy"`` (the default) ranks epochs by the highest
    validation accuracy, ties broken by the lower validation cross-entropy (then the
    earlier epoch); ``select="loss"`` by the lowest validation cross-entropy, ties
    broken by the higher accuracy (then the earlier epoch): King et al. (2024) keep
    their diagnosis classifier at its minimum validation loss. ``patience`` stops
    training after that many epochs without a better one.

    :meth:`fit_stream` trains on a stream of batches instead of a fixed set (King et
    al.'s "Infinite" training set: a fresh synthetic batch each iteration), evaluating
    every ``eval_every`` iterations.

    Args:
        module: the network; its output width must be the number of classes in the
            training labels.
        epochs: passes over the training data.
        batch_size: mini-batch size (a last batch of one volume joins the one before
            it: BatchNorm cannot normalise a single volume on a 1^3 grid).
        lr: the optimiser's learning rate; ``weight_decay``: Adam's L2 term, or AdamW's
            decoupled weight decay.
        seed: seeds the order of the mini-batches and dropout (the module's initial
            weights are the caller's: build it under a seed).
        patience: stop after this many epochs (evaluations, in :meth:`fit_stream`)
            without a better validation score (``None``: train to the end); needs
            ``validation``.
        device: where to train (``"auto"``: CUDA when present).
        optimizer: ``"adam"`` or ``"adamw"``.
        select: ``"accuracy"`` or ``"loss"``: how validation ranks the epochs.

    Attributes:
        history: one dict per epoch trained: ``epoch`` (from 1), ``loss`` (mean
            training cross-entropy) and, with validation, ``val_accuracy`` and
            ``val_loss``; after :meth:`fit_stream` one per evaluation, keyed
            ``iteration`` instead of ``epoch``.
        best_epoch: the epoch (after :meth:`fit_stream`: the iteration) whose weights
            the network holds (the last one without validation); ``0`` before fitting.
    """

    OPTIMIZERS = ("adam", "adamw")
    SELECTIONS = ("accuracy", "loss")

    def __init__(
        self,
        module: nn.Module,
        *,
        epochs: int = 10,
        batch_size: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        patience: int | None = None,
        device: str = "auto",
        optimizer: str = "adam",
        select: str = "accuracy",
    ) -> None:
        self.module = module
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.weight_decay, self.seed, self.device = float(weight_decay), int(seed), device
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        if optimizer not in self.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {self.OPTIMIZERS}, got {optimizer!r}")
        if select not in self.SELECTIONS:
            raise ValueError(f"select must be one of {self.SELECTIONS}, got {select!r}")
        self.patience = None if patience is None else int(patience)
        self.optimizer, self.select = optimizer, select
        self.config = {}
        self.history: list[dict[str, float]] = []
        self.best_epoch = 0
        self._initial = _cpu_state(module)

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @staticmethod
    def _tensor(x: Any) -> torch.Tensor:
        return torch.as_tensor(_array(x), dtype=torch.float32)

    def _batches(self, n: int, gen: torch.Generator) -> list[torch.Tensor]:
        parts = list(torch.randperm(n, generator=gen).split(self.batch_size))
        if len(parts) > 1 and parts[-1].numel() == 1:
            parts[-2:] = [torch.cat(parts[-2:])]
        return parts

    def _evaluate(self, net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
        """Accuracy and mean cross-entropy of ``net`` (eval mode) on ``x``."""
        device = self._device()
        net.eval()
        loss, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        with torch.no_grad():
            for idx in torch.arange(x.shape[0]).split(self.batch_size):
                logits = net(x[idx].to(device)).float()
                t = target[idx].to(device)
                loss += nn.functional.cross_entropy(logits, t, reduction="sum")
                correct += (logits.argmax(1) == t).sum()
        net.train()
        return float(correct) / x.shape[0], float(loss) / x.shape[0]

    def _score(self, row: dict[str, float]) -> tuple[float, float]:
        """The validation ranking of an epoch: larger is better."""
        if self.select == "loss":
            return (-row["val_loss"], row["val_accuracy"])
        return (row["val_accuracy"], -row["val_loss"])

    def _record(self, net: nn.Module, val, row: dict[str, float], at: int, best: _Best) -> None:
        """Complete a history row with the validation figures (when there is validation) and
        keep the network's state in ``best`` if it ranks above the best so far."""
        if val is not None:
            row["val_accuracy"], row["val_loss"] = self._evaluate(net, *val)
            score = self._score(row)
            if best.score is None or score > best.score:
                best.score, best.at, best.state = score, at, _cpu_state(net)
        best.history.append(row)

    def _finish(self, net: nn.Module, best: _Best, last: int) -> None:
        """Restore the best state (or keep the last, without validation), in eval mode."""
        if best.state is not None:
            net.load_state_dict(best.state)
        self.history, self.best_epoch = best.history, best.at if best.state is not None else last
        net.eval()

    def _start(self) -> tuple[nn.Module, torch.optim.Optimizer, torch.device]:
        """The network back at its initial weights, in train mode on the device, and its optimiser."""
        device = self._device()
        self.module.load_state_dict(self._initial)
        net = self.module.to(device).train()
        kind = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return net, kind(net.parameters(), lr=self.lr, weight_decay=self.weight_decay), device

    def _step(
        self, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """One optimiser step on the batch ``x`` ``(B, 1, D, H, W)``; returns the batch's summed loss."""
        logits = net(x)
        if logits.shape[-1] != len(self.classes_):
            raise ValueError(
                f"the network gives {logits.shape[-1]} logits but the training labels "
                f"have {len(self.classes_)} classes {self.classes_.tolist()}"
            )
        loss = nn.functional.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach() * x.shape[0]

    def _validation_tensors(self, pair) -> tuple[torch.Tensor, torch.Tensor] | None:
        if pair is None:
            return None
        return self._tensor(pair[0]), torch.as_tensor(np.searchsorted(self.classes_, pair[1]))

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        validation: Validation | None = None,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ) -> TorchClassifier:
        """Train from the initial weights; with validation, keep the best epoch (see the class).

        Args:
            transform: applied to every training mini-batch ``(B, 1, D, H, W)`` on the
                CPU before the step, with a CPU generator seeded from ``seed`` (so each
                epoch sees freshly augmented volumes, reproducibly); e.g. a
                :class:`brainkern.augment.DiffAugment3d`. Never applied to validation.

        Raises:
            ValueError: ``patience`` without ``validation``; labels that do not
                match the volumes; unseen validation classes; a network whose
                output width is not the number of training classes.
        """
        x = self._tensor(x)
        y = _labels(y, x.shape[0])
        self.classes_ = np.unique(y)
        pair = _validation_pair(validation, self.classes_)
        if self.patience is not None and pair is None:
            raise ValueError("patience needs validation=(x_val, y_val) to stop on")
        target = torch.as_tensor(np.searchsorted(self.classes_, y))
        val = self._validation_tensors(pair)
        net, opt, device = self._start()
        gen = torch.Generator().manual_seed(self.seed)
        aug_gen = torch.Generator().manual_seed(self.seed + 1)
        best = _Best()
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            for epoch in range(1, self.epochs + 1):
                total = torch.zeros((), device=device)
                for idx in self._batches(x.shape[0], gen):
                    xb = x[idx] if transform is None else transform(x[idx], aug_gen)
                    total += self._step(net, opt, xb.to(device), target[idx].to(device))
                self._record(net, val, {"epoch": epoch, "loss": float(total) / x.shape[0]}, epoch, best)
                if self.patience is not None and best.at and epoch - best.at >= self.patience:
                    break
        self._finish(net, best, epoch)
        return self

    def fit_stream(
        self,
        draw: Callable[[], tuple[Any, Any]],
        iterations: int,
        *,
        classes: Sequence[int],
        validation: Validation | None = None,
        eval_every: int = 100,
    ) -> TorchClassifier:
        """Train from the initial weights on a stream of batches, one fresh batch per step.

        King et al. (2024)'s "Infinite" training set: ``draw()`` is called once per
        iteration and returns a new batch ``(x, y)`` (``(B, 1, D, H, W)`` volumes and
        ``(B,)`` labels, e.g. generated on the fly); nothing is kept after its step.
        ``batch_size`` and ``epochs`` are not used: the batch is what ``draw`` returns.
        With ``validation``, the network is evaluated every ``eval_every`` iterations
        (and after the last) and the best state by ``select`` is restored at the end;
        ``patience`` counts evaluations. The same seed and the same stream give the same
        network (dropout under the forked, seeded random state; the stream's own
        randomness is the caller's).

        Args:
            draw: returns the next training batch.
            iterations: optimiser steps.
            classes: the class labels the stream can produce (the network's outputs in
                this order); labels outside them are an error.
            validation: held-out ``(x_val, y_val)`` for model selection.
            eval_every: iterations between evaluations (and history rows).

        Raises:
            ValueError: ``iterations`` or ``eval_every`` below 1, ``patience`` without
                validation, a batch label outside ``classes``, unseen validation
                classes, or a network whose output width is not ``len(classes)``.
        """
        if int(iterations) < 1 or int(eval_every) < 1:
            raise ValueError(f"iterations and eval_every must be >= 1, got {iterations} and {eval_every}")
        self.classes_ = np.unique(_array(classes).astype(np.int64))
        pair = _validation_pair(validation, self.classes_)
        if self.patience is not None and pair is None:
            raise ValueError("patience needs validation=(x_val, y_val) to stop on")
        val = self._validation_tensors(pair)
        net, opt, device = self._start()
        best = _Best()
        cuda = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            total, seen = torch.zeros((), device=device), 0
            for it in range(1, int(iterations) + 1):
                xb, yb = draw()
                xb = self._tensor(xb)
                yb = _labels(yb, xb.shape[0])
                unknown = np.setdiff1d(yb, self.classes_)
                if unknown.size:
                    raise ValueError(
                        f"the stream gave labels {unknown.tolist()} outside classes {self.classes_.tolist()}"
                    )
                target = torch.as_tensor(np.searchsorted(self.classes_, yb))
                total += self._step(net, opt, xb.to(device), target.to(device))
                seen += xb.shape[0]
                if it % int(eval_every) and it != int(iterations):
                    continue
                self._record(net, val, {"iteration": it, "loss": float(total) / seen}, it, best)
                total, seen = torch.zeros((), device=device), 0
                stale = sum(1 for r in best.history if r["iteration"] > best.at)
                if self.patience is not None and stale >= self.patience:
                    break
        self._finish(net, best, it)
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        x = self._tensor(x)
        device = self._device()
        net = self.module.to(device).eval()
        with torch.no_grad():
            out = [net(part.to(device)).softmax(1).cpu() for part in x.split(self.batch_size)]
        return torch.cat(out).double().numpy()

    def _state(self) -> dict[str, Any]:
        keys = ("epochs", "batch_size", "lr", "weight_decay", "seed", "patience", "optimizer", "select")
        return {
            "module": self.module.cpu(),
            "initial": self._initial,
            "settings": {k: getattr(self, k) for k in keys},
            "classes": self.classes_,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "config": self.config,
            "name": self.name,
        }

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> TorchClassifier:
        out = cls(state["module"], **state["settings"])
        out.classes_, out.config, out.name = state["classes"], state["config"], state["name"]
        out.history, out.best_epoch = list(state.get("history", [])), int(state.get("best_epoch", 0))
        if "initial" in state:
            out._initial = state["initial"]
        return out


class _Best:
    """Model selection while training: the best validation score so far, where it was reached
    (epoch or iteration), the network's state there, and the history rows."""

    def __init__(self) -> None:
        self.score: tuple[float, float] | None = None
        self.at = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state dict on the CPU (not a view of the live weights)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
