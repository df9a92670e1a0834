"""Generative models of 3D brain images, and a registry to build them by name.

``build_model("alpha-wgan-gp", shape=(64, 64, 64))`` returns a
:class:`GenerativeModel`: its networks (generator, discriminator, and an encoder
and code discriminator where the model has them), its latent prior, sampling,
and the ``family`` and ``loss`` the training engine picks its recipe by.

Registered so far (:func:`model_names`): Kwon et al. (2019)'s ``alpha-wgan-gp``
and their baselines ``alpha-gan``, ``wgan-gp`` and ``vae-gan``
(:mod:`brainkern.models.kwon`).
"""

# ``kwon`` registers its models on import (it imports the registry itself).
from brainkern.models import kwon
from brainkern.models.base import GenerativeModel
from brainkern.models.registry import build_model, model_names, model_parameters, register_model

__all__ = ["GenerativeModel", "build_model", "kwon", "model_names", "model_parameters", "register_model"]
