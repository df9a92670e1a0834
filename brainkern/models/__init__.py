"""Generative models of brain images and classifiers, and one registry to build them by name.

``build_model("alpha-wgan-gp", shape=(64, 64, 64))`` returns a
:class:`GenerativeModel`: its named networks (generator, discriminator, and an
encoder and code discriminator where the model has them), its latent prior,
(class-conditional) sampling, and the ``family`` and ``loss`` the training engine
picks its recipe by. Classifiers register under ``kind="classifier"`` and build
into a :class:`~brainkern.models.classifier.Classifier` (``fit``, ``predict``,
``predict_proba``, ``save``, ``load``).

Registered so far (:func:`model_summaries`; ``python -m brainkern.train --list``):
Kwon et al. (2019)'s ``alpha-wgan-gp`` and their baselines ``alpha-gan``,
``wgan-gp`` and ``vae-gan`` (:mod:`brainkern.models.kwon`); Zhuang et al.
(2019)'s class-conditional ``icw-gan``, ``cvae`` and ``gmm``
(:mod:`brainkern.models.zhuang`); King et al. (2024)'s ``sn-gan`` and
``alpha-sn-gan`` with their conditioning schemes (:mod:`brainkern.models.king`) and
their hierarchical ``ha-gan`` (Sun et al. 2022) and ``alpha-ha-gan``
(:mod:`brainkern.models.ha_gan`); Han et al. (2018)'s 2D ``dcgan2d`` and ``wgan2d`` on
multi-sequence slices (:mod:`brainkern.models.han`); Seeliger et al. (2018)'s ``seeliger-dcgan``,
the image prior of their reconstructions of seen images from fMRI (:mod:`brainkern.models.seeliger`);
the classifiers ``svm``, ``dnn3d`` and ``vgg3d`` (:mod:`brainkern.models.classifiers`).
"""

# ``ha_gan``, ``han``, ``king``, ``kwon``, ``seeliger``, ``zhuang`` and ``classifiers`` register their
# models on import (each imports the registry itself).
from brainkern.models import classifiers, ha_gan, han, king, kwon, seeliger, zhuang
from brainkern.models.base import GenerativeModel
from brainkern.models.classifier import Classifier, SklearnClassifier, TorchClassifier
from brainkern.models.registry import (
    build_model,
    model_kind,
    model_names,
    model_parameters,
    model_summaries,
    register_model,
)

__all__ = [
    "Classifier",
    "GenerativeModel",
    "SklearnClassifier",
    "TorchClassifier",
    "build_model",
    "classifiers",
    "ha_gan",
    "han",
    "king",
    "kwon",
    "model_kind",
    "model_names",
    "model_parameters",
    "model_summaries",
    "register_model",
    "seeliger",
    "zhuang",
]
