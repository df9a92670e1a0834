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
  logits and trains it with Adam on the cross-entropy, seeded, in mini-batches.

Both save to a single file and load back into an equal classifier.
"""

from __future__ import annotations

import abc
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Classifier", "SklearnClassifier", "TorchClassifier"]


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(y: Any, n: int) -> np.ndarray:
    y = _array(y).astype(np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} volumes")
    return y


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
    def fit(self, x: Any, y: Any) -> Classifier:
        """Train on volumes ``x`` ``(N, 1, D, H, W)`` with labels ``y`` ``(N,)``; returns self."""

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
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.config = {}

    @staticmethod
    def _rows(x: Any) -> np.ndarray:
        x = _array(x)
        return x.reshape(x.shape[0], -1).astype(np.float32, copy=False)

    def fit(self, x: Any, y: Any) -> SklearnClassifier:
        rows = self._rows(x)
        self.estimator.fit(rows, _labels(y, rows.shape[0]))
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
        return {"estimator": pickle.dumps(self.estimator), "config": self.config, "name": self.name}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> SklearnClassifier:
        out = cls(pickle.loads(state["estimator"]))  # noqa: S301  (the user's own file)
        out.config, out.name = state["config"], state["name"]
        out.classes_ = np.asarray(out.estimator.classes_)
        return out


class TorchClassifier(Classifier):
    """An ``nn.Module`` (volumes ``(N, 1, D, H, W)`` -> logits ``(N, C)``) trained by Adam.

    Args:
        module: the network; its output width is the number of classes.
        epochs: passes over the training data.
        batch_size: mini-batch size.
        lr: Adam's learning rate; ``weight_decay``: its L2 term.
        seed: seeds the order of the mini-batches (the module's initial weights are
            the caller's: build it under a seed).
        device: where to train (``"auto"``: CUDA when present).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        epochs: int = 10,
        batch_size: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        self.module = module
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.weight_decay, self.seed, self.device = float(weight_decay), int(seed), device
        self.config = {}

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @staticmethod
    def _tensor(x: Any) -> torch.Tensor:
        return torch.as_tensor(_array(x), dtype=torch.float32)

    def fit(self, x: Any, y: Any) -> TorchClassifier:
        x = self._tensor(x)
        y = torch.as_tensor(_labels(y, x.shape[0]))
        self.classes_ = np.unique(y.numpy())
        target = torch.as_tensor(np.searchsorted(self.classes_, y.numpy()))
        device = self._device()
        net = self.module.to(device).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            for idx in torch.randperm(x.shape[0], generator=gen).split(self.batch_size):
                loss = nn.functional.cross_entropy(net(x[idx].to(device)), target[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        x = self._tensor(x)
        device = self._device()
        net = self.module.to(device).eval()
        with torch.no_grad():
            out = [net(part.to(device)).softmax(1).cpu() for part in x.split(self.batch_size)]
        return torch.cat(out).double().numpy()

    def _state(self) -> dict[str, Any]:
        settings = {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "seed")}
        return {
            "module": self.module.cpu(),
            "settings": settings,
            "classes": self.classes_,
            "config": self.config,
            "name": self.name,
        }

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> TorchClassifier:
        out = cls(state["module"], **state["settings"])
        out.classes_, out.config, out.name = state["classes"], state["config"], state["name"]
        return out
