"""Training recipes: one optimisation step of each model family.

A recipe owns the optimisers of a :class:`~brainkern.models.GenerativeModel`'s
networks and knows their update order; the engine (:mod:`brainkern.train.engine`)
feeds it batches and handles everything else (logging, checkpoints, signals).
A family exists by registering its recipe (:func:`register_recipe`); that is
the one place where a family is named: a new family is one new recipe class, and
the engine does not change.

The contract a recipe keeps with the engine:

- ``networks``: the networks a model of the family must have; ``trains``: those it
  updates. Each trained network gets its own optimiser (``train.optimizer``: Adam, or
  RMSprop as in Arjovsky et al.'s WGAN), with the run's ``train.lr`` (and, for Adam,
  ``train.betas``) unless ``train.optim.<network>`` overrides them (two time-scale
  updates). A network of the model that the recipe does not train
  must be frozen (no parameter requires a gradient): a trainable network without
  an optimiser is an error at start, never a silently idle network.
- ``step(batch)`` takes a dict: ``image`` ``(N, 1, D, H, W)``, ``label`` ``(N,)``
  where the data set has labels, and whatever else an item carries (``position``
  of a sub-volume, ``subject``, ``index``); it returns a dict of 0-d, detached
  loss tensors (no device synchronisation).
- ``draw``: a zero-argument callable giving the next batch (a dict as ``step``
  takes), or ``None``. The engine binds it to its own batches, so a recipe that
  reads more than one batch per iteration (the alpha family's ``critic_batch:
  fresh``) takes them from the same stream, and a resumed run sees the same ones.
- several processes (``torchrun``, :mod:`brainkern.train.distributed`): ``step``
  gets this process's slice of the global batch; every per-sample random draw
  (latents, the penalty's interpolation weights, reparameterisation noise) is
  made for the global batch and sliced (:meth:`Recipe._latent`,
  :meth:`Recipe._noise`, :meth:`Recipe._penalty`), and :meth:`Recipe._update`
  averages the gradients over the processes before each optimiser step, so
  the processes stay in step with each other and with a single process.
- hooks around the discriminators: ``before_critic`` hooks run before every
  discriminator is called in a step (spectral-norm power iterations), and
  ``critic_input`` hooks transform every input a discriminator sees, real and
  fake, in the generator's and the discriminator's updates alike, and inside the
  gradient penalty (differentiable augmentation). Every recipe installs two itself:
  a discriminator with spectrally normalised layers gets one grouped power iteration
  (:func:`brainkern.nn.spectral_norm_update`) before each use, and ``train.diffaugment``
  (King et al.'s DiffAugment-3D, :class:`brainkern.augment.DiffAugment3d`) augments
  every volume a discriminator sees (not the codes a code discriminator sees).
- class labels: a network takes the batch's labels when it says so
  (``takes_labels``, or ``num_classes > 0``); the generator through
  ``model.generate(z, labels)``. A model with a frozen ``classifier`` network (King et
  al.'s auxiliary classifier) gets it trained on the real training batches before the
  first step (``train.aux_iters``), then adds ``lambda_cls`` times its cross-entropy
  on the generated volumes to the generator's loss (logged as ``loss_cls``).

Families:

- ``"gan"`` (G + D): WGAN-GP or standard / hinge GAN. Per iteration the
  generator is updated ``g_updates`` times (a fresh prior sample each), then the
  discriminator ``d_updates`` times. (Kwon et al.'s WGAN-GP code updates the critic
  first, then the generator five times; across iterations the sequence is the same.)
  ``train.feature_matching`` adds Salimans et al.'s feature matching to the generator's
  loss (Seeliger et al. 2018); see :class:`GANRecipe`.
- ``"alpha"`` (E + G + D + C): the alpha-GAN of Rosca et al. (2017) as 3D
  alpha-WGAN-GP (Kwon et al. 2019, eqs. 1-3): encoder and generator trained as
  one network on ``L_E + L_G``, the generator ``g_updates`` times and the encoder
  once (Kwon et al. update the generator twice; ``train.eg_schedule`` says how),
  then the image discriminator, then the code discriminator, on a fresh real
  batch (``train.critic_batch``). See :class:`AlphaRecipe`.
- ``"vae-gan"`` (variational E + G + D): Larsen et al. (2016) as Kwon et al.'s
  code trains it: the encoder minimises ``lambda_kl * KL + lambda_rec * rec``, the
  generator ``adversarial + lambda_dec * rec`` (KL averaged over latent
  dimensions, ``rec`` the mean squared error, by default), then the
  discriminator sees real, reconstructed and sampled volumes. See
  :class:`VAEGANRecipe`.
- ``"cvae"`` (variational E + G, both conditional): the conditional VAE of Zhuang et
  al. (2019, seed 000): one update of encoder and generator together on the negative
  ELBO per iteration. See :class:`CVAERecipe`.
- ``"em"`` (G only, fitted, not trained by gradient): Zhuang et al.'s per-class
  Gaussian mixtures, fitted by EM on the whole training set in one step. See
  :class:`EMRecipe`.

- ``"ha"`` (G + D^H + D^L): Sun et al.'s hierarchical HA-GAN (2022), as King et al. train
  it (seed 003): the discriminators judge one random slab per sample (with its position)
  and the low-resolution volume, their logits averaged; the discriminators first, then
  the generator. See :class:`HARecipe`.
- ``"alpha-ha"`` (E^H + E^L + G + D^H + D^L + code discriminator): King et al.'s
  alpha-HA-GAN, their equations 1-4 in Sun et al.'s update order. See
  :class:`AlphaHARecipe`.

A recipe whose objective is not adversarial (``adversarial = False``: ``cvae``,
``em``) has no ``train.loss`` to choose: its ``loss`` is the model's own name for
its objective (``"elbo"``, ``"em"``). A recipe with ``whole_data = True`` gets every
training volume in each batch (the engine sizes its batches so).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from brainkern.models._checkpoint import FrozenBatchNormStats
from brainkern.models.ha_gan import low_resolution, slabs_at
from brainkern.nn.spectral_norm import has_spectral_norm, spectral_norm_update
from brainkern.ops import gradient_penalty
from brainkern.ops.gradient_penalty import lazy_count, set_lazy_count
from brainkern.train.distributed import World, reduce_gradients
from brainkern.train.objectives import (
    KL_REDUCTIONS,
    LOSSES,
    RECONSTRUCTIONS,
    discriminator_loss,
    generator_loss,
    kl_standard_normal,
    l1_reconstruction,
    reconstruction_loss,
)

OPTIMIZERS = ("adam", "rmsprop")

# Reconstruction losses of recipes whose generator ends in tanh ([-1, 1]): binary
# cross-entropy needs outputs in [0, 1].
SIGNED_RECONSTRUCTIONS = ("l1", "mse")

Batch = Mapping[str, torch.Tensor]
HOOKS = ("before_critic", "critic_input")


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """No parameter gradients for ``modules`` inside the block (their inputs still get them)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class _Critic(nn.Module):
    """A discriminator seen through the recipe's ``critic_input`` hooks (and its labels).

    The gradient penalty differentiates this view, so augmentation sits inside the
    penalty as it does inside the losses. It is kept per network (not rebuilt per
    call) because the lazy penalty counts calls per discriminator object.
    """

    def __init__(self, recipe: Recipe, name: str) -> None:
        super().__init__()
        self._recipe = [recipe]  # a list: not a registered submodule (no parameters twice)
        self.name = name

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, *extra: torch.Tensor
    ) -> torch.Tensor:
        """``net(x[, labels], *extra)`` on the hooked ``x`` (``extra``: further inputs the
        hooks leave alone, e.g. the slab position of HA-GAN's ``D^H``)."""
        net = self._recipe[0].model[self.name]
        x = self._hooked(x)
        return net(x, *extra) if labels is None else net(x, labels, *extra)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``net.features(x)`` on the hooked ``x``: the features the discriminator's
        feature matching compares (the network's own method: no labels)."""
        return self._recipe[0].model[self.name].features(self._hooked(x))

    def _hooked(self, x: torch.Tensor) -> torch.Tensor:
        for hook in self._recipe[0].hooks["critic_input"]:
            x = hook(x, self.name)
        return x


class Recipe:
    """Base class: networks, optimisers per network, autocast, hooks, the critic step.

    Subclasses set ``family`` (through :func:`register_recipe`), ``networks`` (what a
    model of the family must have), ``trains`` (which of them the recipe updates;
    default: all of ``networks``) and ``losses`` (the names :meth:`step` returns),
    and implement :meth:`step`.

    Args:
        model: the model.
        train: the ``train`` section of the run configuration (``lr``, ``betas``,
            ``optim``, ``optimizer``, ``weight_clip``, ``loss``, ``g_updates``,
            ``d_updates``, ``lambda_gp``, ``gp_every``, ``amp``, ``dtype``, and the
            family's own keys, ``options``). ``weight_clip = c`` clamps every parameter of
            every discriminator (each network whose name contains ``"discriminator"``) to
            ``[-c, c]`` after each of its optimiser steps (Arjovsky et al. 2017's WGAN).
            ``grad_clip = c`` rescales each updated network's gradients (after they are
            averaged over the processes) so that their joint L2 norm is at most ``c``
            before its optimiser step (Seeliger et al. 2018 clip at 10; None: off).
            A recipe that is not ``adversarial`` refuses ``train.loss``.
        device: where the model lives.
        world: the processes of the run (default: this one alone); ``step`` then
            gets ``1 / world.size`` of the global batch.

    Raises:
        ValueError: the model lacks a network the family needs, has a trainable
            network the recipe does not update, ``train.optim`` names a network
            the recipe does not train, the adversarial loss is unknown (or set for
            a recipe that is not adversarial), ``train.optimizer`` is unknown,
            ``train.weight_clip`` is set with ``wgan-gp`` (the penalty replaces clipping)
            or is not positive, ``train.grad_clip`` is not positive, or ``train.dtype`` is
            not float32 / float64 (float64 without autocast).
    """

    family = ""
    networks: tuple[str, ...] = ()
    trains: tuple[str, ...] | None = None
    # The names of the losses step() returns, in log order: the one list the engine's
    # logging window, progress bar and metrics log read.
    losses: tuple[str, ...] = ()
    # train.* keys only this family reads (its part of the schema): setting another
    # family's key to a value other than its default is an error for this one.
    options: tuple[str, ...] = ()
    # Whether the objective is an adversarial loss of objectives.LOSSES (train.loss may
    # choose it); False: the model's ``loss`` names its objective and train.loss is refused.
    adversarial: bool = True
    # Whether each batch is the whole training set (the engine reads this to size its batches).
    whole_data: bool = False

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        self.model = model
        self.cfg = train
        self.device = torch.device(device)
        self.world = world or World()
        self.dtype = train_dtype(train)
        self._check_options(train)
        if self.adversarial:
            self.loss = train.get("loss") or model.loss
            if self.loss not in LOSSES:
                raise ValueError(
                    f"{model.name}: unknown adversarial loss {self.loss!r}; choose one of {LOSSES}"
                )
        elif train.get("loss"):
            raise ValueError(
                f"train.loss={train['loss']!r}: the {self.family!r} recipe of {model.name} trains no "
                f"adversarial loss (its objective: {model.loss!r}); leave train.loss unset"
            )
        else:
            self.loss = model.loss
        self.g_updates = int(train["g_updates"])
        self.d_updates = int(train["d_updates"])
        self.lambda_gp = float(train["lambda_gp"])
        self.lambda_rec = float(train["lambda_rec"])
        self.lambda_kl = float(train["lambda_kl"])
        # Lazy regularisation: the penalty on every gp_every-th update of each critic,
        # scaled by gp_every; its call counters are part of state_dict().
        self.gp_every = int(train.get("gp_every", 1))
        amp = train.get("amp", "auto")
        if self.dtype == torch.float64 and amp == "bf16":
            raise ValueError("train.dtype=float64 computes in double precision: it excludes train.amp=bf16")
        auto_bf16 = amp == "auto" and self.device.type == "cuda" and self.dtype == torch.float32
        self.amp_dtype = torch.bfloat16 if (amp == "bf16" or auto_bf16) else None
        self.hooks: dict[str, list[Callable]] = {kind: [] for kind in HOOKS}
        self.optimizer = self._choice(train, "optimizer", OPTIMIZERS)
        self.weight_clip = self._weight_clip(train)
        self.grad_clip = self._grad_clip(train)
        self.optimizers = self._build_optimizers(train)
        self._critics: dict[str, _Critic] = {}
        self._install_spectral_norm()
        self._install_diffaugment(train)
        self.lambda_cls = float(self._option(train, "lambda_cls"))
        self.aux_iters = int(self._option(train, "aux_iters"))
        self.aux_lr = float(self._option(train, "aux_lr"))
        if self.has_classifier:
            self.losses = (*type(self).losses, "loss_cls")
        # The next batch of the run's stream, for recipes that read several per iteration;
        # the engine binds it (see the module docstring).
        self.draw: Callable[[], Batch | torch.Tensor] | None = None

    # -- contract checks and optimisers ---------------------------------------------

    @staticmethod
    def _option(train: dict[str, Any], key: str) -> Any:
        """``train[key]``, or its default where a hand-made ``train`` dict leaves it out."""
        from brainkern.train.config import DEFAULTS

        return train.get(key, DEFAULTS["train"][key])

    @staticmethod
    def _choice(train: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
        value = Recipe._option(train, key)
        if value not in allowed:
            raise ValueError(f"train.{key} must be one of {allowed}, got {value!r}")
        return value

    def _check_options(self, train: dict[str, Any]) -> None:
        from brainkern.train.config import DEFAULTS

        others = {k for cls in RECIPES.values() for k in cls.options} - set(self.options)
        for key in sorted(others):
            if key in train and train[key] != DEFAULTS["train"].get(key):
                users = sorted(f for f, cls in RECIPES.items() if key in cls.options)
                raise ValueError(
                    f"train.{key} is not used by the {self.family!r} recipe of {self.model.name} "
                    f"(only by {', '.join(map(repr, users))}); its own keys: "
                    f"{', '.join(self.options) or 'none beyond the common ones'}"
                )

    def _weight_clip(self, train: dict[str, Any]) -> float | None:
        clip = self._option(train, "weight_clip")
        if clip is None:
            return None
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
            raise ValueError(f"train.weight_clip must be a number > 0 or None, got {clip!r}")
        if self.adversarial and self.loss == "wgan-gp":
            raise ValueError(
                f"train.weight_clip={clip} with loss 'wgan-gp': the gradient penalty replaces weight "
                "clipping; use loss 'wgan' to clip, or leave weight_clip unset"
            )
        trains = self.networks if self.trains is None else self.trains
        if not any("discriminator" in name for name in trains):
            raise ValueError(
                f"train.weight_clip={clip}: the {self.family!r} recipe of {self.model.name} trains no "
                f"discriminator to clip (it trains {list(trains)}); leave weight_clip unset"
            )
        return float(clip)

    def _grad_clip(self, train: dict[str, Any]) -> float | None:
        clip = self._option(train, "grad_clip")
        if clip is None:
            return None
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < float("inf"):
            raise ValueError(f"train.grad_clip must be a finite number > 0 or None, got {clip!r}")
        return float(clip)

    def _build_optimizers(self, train: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
        model, family = self.model, self.family
        have = list(model.networks())
        missing = [n for n in self.networks if n not in have]
        if missing:
            raise ValueError(
                f"{model.name}: family {family!r} needs the networks {list(self.networks)}; "
                f"missing {missing} (the model has {have})"
            )
        trains = self.networks if self.trains is None else self.trains
        idle = [n for n in have if n not in trains and any(p.requires_grad for p in model[n].parameters())]
        if idle:
            raise ValueError(
                f"{model.name}: network(s) {idle} have trainable parameters but the {family!r} recipe "
                f"gives them no optimiser (it trains {list(trains)}); freeze them "
                "(requires_grad_(False)) or train them with a recipe that updates them"
            )
        per_net = dict(train.get("optim") or {})
        unknown = sorted(set(per_net) - set(trains))
        if unknown:
            raise ValueError(
                f"train.optim: {unknown} is not a network the {family!r} recipe trains; "
                f"it trains {list(trains)}"
            )
        optimizers = {}
        adam = self.optimizer == "adam"
        for name in trains:
            own = {k: v for k, v in (per_net.get(name) or {}).items() if v is not None}
            allowed = {"lr", "betas"} if adam else {"lr"}
            extra = sorted(set(own) - allowed)
            if extra:
                why = "" if adam else " (train.optimizer is 'rmsprop', which has no betas)"
                raise ValueError(
                    f"train.optim.{name}: unknown key(s) {extra}; allowed: {', '.join(sorted(allowed))}{why}"
                )
            lr = float(own.get("lr", train["lr"]))
            params = model[name].parameters()
            if adam:
                betas = tuple(float(b) for b in own.get("betas", train["betas"]))
                optimizers[name] = torch.optim.Adam(params, lr=lr, betas=betas)
            else:
                # Plain RMSprop (no momentum, PyTorch's smoothing 0.99), as Arjovsky et al. train
                # the WGAN: momentum-based optimisers made their critic unstable.
                optimizers[name] = torch.optim.RMSprop(params, lr=lr)
        return optimizers

    # -- hooks ------------------------------------------------------------------------

    def _install_spectral_norm(self) -> None:
        """A ``before_critic`` hook: one grouped power iteration of every SN layer of the
        discriminator about to be used; its result serves all of that use's forwards."""
        with_sn = {name for name, net in self.model.networks().items() if has_spectral_norm(net)}
        if with_sn:

            def refresh(recipe: Recipe, name: str) -> None:
                if name in with_sn:
                    spectral_norm_update(recipe.model[name], forwards=None)

            self.add_hook("before_critic", refresh)

    def _install_diffaugment(self, train: dict[str, Any]) -> None:
        """A ``critic_input`` hook applying ``train.diffaugment`` to every volume (5-d input)
        a discriminator sees, real and generated, with fresh per-sample draws made for
        the global batch and sliced to this process's part."""
        policy = list(self._option(train, "diffaugment") or [])
        if not policy:
            self.diffaugment = None
            return
        from brainkern.augment import DiffAugment3d

        background = self._option(train, "diffaugment_background")
        background = -1.0 if background is None else float(background)
        self.diffaugment = aug = DiffAugment3d(
            policy=tuple(policy), p=float(self._option(train, "diffaugment_p")), background=background
        )
        world = self.world

        def augment(x: torch.Tensor, name: str) -> torch.Tensor:  # noqa: ARG001
            if x.dim() != 5:
                return x
            params = aug.draw(x.shape[0] * world.size, tuple(x.shape[2:]), device=x.device)
            if world.size > 1:
                params = dataclasses.replace(
                    params,
                    **{f.name: world.shard(getattr(params, f.name)) for f in dataclasses.fields(params)},
                )
            return aug.apply(x, params)

        self.add_hook("critic_input", augment)

    def add_hook(self, kind: str, fn: Callable) -> Callable:
        """Register ``fn`` as a ``before_critic`` or ``critic_input`` hook; returns it.

        - ``before_critic``: ``fn(recipe, name)`` before discriminator ``name`` is
          used in a step (once per update of any network that reads it);
        - ``critic_input``: ``fn(x, name) -> x`` on every input of discriminator
          ``name`` (real and fake, in every loss and in the gradient penalty).

        Raises:
            ValueError: an unknown kind.
        """
        if kind not in HOOKS:
            raise ValueError(f"unknown hook kind {kind!r}; choose one of {HOOKS}")
        self.hooks[kind].append(fn)
        return fn

    def critic(self, name: str) -> _Critic:
        """Discriminator ``name`` seen through the ``critic_input`` hooks."""
        if name not in self._critics:
            self._critics[name] = _Critic(self, name)
        return self._critics[name]

    def _before_critic(self, *names: str) -> None:
        for name in names:
            for hook in self.hooks["before_critic"]:
                hook(self, name)

    # -- pieces of a step -------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _update(self, loss: torch.Tensor, *names: str) -> None:
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        self._step(*names)

    def _step(self, *names: str) -> None:
        """The optimiser steps of networks ``names``, their gradients first averaged
        over the processes (each process's loss is a mean over its slice, so the
        average is the gradient of the global batch's loss), then, with
        ``train.grad_clip``, each network's clipped to that total norm."""
        for name in names:
            reduce_gradients(self.model[name].parameters(), self.world)
        for name in names:
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model[name].parameters(), self.grad_clip)
            self.optimizers[name].step()
        if self.weight_clip is not None:
            self._clip(*names)

    def _clip(self, *names: str) -> None:
        """Arjovsky et al.'s weight clipping: every parameter of each discriminator among
        ``names`` clamped in place to ``[-weight_clip, weight_clip]`` (BatchNorm's too, as
        in their code)."""
        c = self.weight_clip
        with torch.no_grad():
            for name in names:
                if "discriminator" in name:
                    for p in self.model[name].parameters():
                        p.clamp_(-c, c)

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the run's dtype (out of bf16 autocast, or into float64)."""
        return x.to(self.dtype)

    def _latent(self, n: int) -> torch.Tensor:
        """``n`` prior codes ``(n, latent_dim)``: this process's slice of the global batch's."""
        z = self.world.shard(self.model.sample_latent(n * self.world.size))
        return z.to(self.device, self.dtype)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like`` ``(n, ...)``, drawn on its device for the
        global batch and sliced."""
        shape = (like.shape[0] * self.world.size, *like.shape[1:])
        return self.world.shard(torch.randn(shape, dtype=like.dtype, device=like.device))

    def _penalty(
        self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        kwargs = {} if labels is None else {"labels": labels}  # passed on to the critic
        # One interpolation weight per sample of the global batch, drawn as the penalty
        # itself would (its dtype, on its device), then sliced.
        dtype = torch.promote_types(real.dtype, fake.dtype)
        eps = self.world.shard(torch.rand(real.shape[0] * self.world.size, dtype=dtype, device=real.device))
        return gradient_penalty(
            critic, real, fake, weight=self.lambda_gp, eps=eps, every=self.gp_every, **kwargs
        )

    def _critic_step(
        self,
        name: str,
        real: torch.Tensor,
        fakes: list[torch.Tensor],
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One update of discriminator ``name`` against every fake set (WGAN-GP: a penalty per set)."""
        self._before_critic(name)
        critic = self.critic(name)
        with self.autocast():
            loss = discriminator_loss(self.loss, critic(real, labels), [critic(f, labels) for f in fakes])
            gp = torch.zeros((), device=self.device)
            if self.loss == "wgan-gp":
                gp = sum(self._penalty(critic, real, f, labels) for f in fakes)
        self._update(loss + gp, name)
        short = "d" if name == "discriminator" else "c"
        return {f"loss_{short}": loss.detach(), f"gp_{short}": gp.detach()}

    @staticmethod
    def images(batch: Batch | torch.Tensor) -> torch.Tensor:
        """The batch's ``image`` (a bare tensor is taken as the images)."""
        return batch if isinstance(batch, torch.Tensor) else batch["image"]

    def labels_for(self, name: str, labels: torch.Tensor | None) -> torch.Tensor | None:
        """``labels`` if network ``name`` takes class labels (``takes_labels``, or
        ``num_classes > 0``), else ``None``."""
        if labels is None:
            return None
        net = self.model[name]
        takes = getattr(net, "takes_labels", None)
        if takes is None:
            takes = getattr(net, "num_classes", 0) > 0
        return labels if takes else None

    def _call(self, name: str, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Network ``name`` (not a critic: no hooks) on ``x``, with the labels if it takes them."""
        labels = self.labels_for(name, labels)
        net = self.model[name]
        return net(x) if labels is None else net(x, labels)

    # -- the auxiliary classifier (King et al.) ------------------------------------------

    @property
    def has_classifier(self) -> bool:
        """Whether the model is conditional and has a ``classifier`` network (trained
        before the GAN, then frozen, giving the generator a class loss)."""
        return getattr(self.model, "conditional", False) and "classifier" in self.model.networks()

    def _prepare_classifier(self) -> None:
        """Train the auxiliary classifier on ``train.aux_iters`` real batches from
        :attr:`draw` (Adam, ``train.aux_lr``, cross-entropy) unless it is already fitted
        (its ``fitted`` buffer, kept in checkpoints); then it stays frozen.

        Raises:
            ValueError: no ``draw`` bound to read the real batches from.
        """
        if not self.has_classifier:
            return
        clf = self.model.classifier
        if bool(getattr(clf, "fitted", True)):
            return
        if self.draw is None:
            raise ValueError(
                f"{self.model.name}: the auxiliary classifier is trained on real batches read through "
                "recipe.draw, which is not bound (the Trainer binds it)"
            )
        params = list(clf.parameters())
        opt = torch.optim.Adam(params, lr=self.aux_lr)
        clf.requires_grad_(True)
        try:
            for _ in range(self.aux_iters):
                batch = self.draw()
                with self.autocast():
                    logits = clf(self.images(batch))
                loss = torch.nn.functional.cross_entropy(logits.float(), self.labels(batch))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                reduce_gradients(params, self.world)
                opt.step()
        finally:
            clf.requires_grad_(False)
        clf.fitted.fill_(True)

    def _class_loss(self, fakes: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the frozen classifier on each generated set for its labels."""
        clf = self.model.classifier
        return sum(torch.nn.functional.cross_entropy(clf(f).float(), labels) for f in fakes) / len(fakes)

    def labels(self, batch: Batch | torch.Tensor) -> torch.Tensor | None:
        """The batch's ``label`` for a conditional model, else ``None``.

        Raises:
            ValueError: a conditional model fed a batch without labels.
        """
        if not getattr(self.model, "conditional", False):
            return None
        if isinstance(batch, torch.Tensor) or "label" not in batch:
            raise ValueError(f"{self.model.name} is conditional: its batches need a 'label'")
        return batch["label"]

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One training iteration on ``batch``; returns detached 0-d losses by name."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The optimisers' states (and which optimiser, ``train.optimizer``) and the lazy
        penalty's call count per critic: what a resumed run needs to continue exactly."""
        return {
            "optimizer": self.optimizer,
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "penalty_calls": {name: lazy_count(critic) for name, critic in self._critics.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (or the optimiser-only dict of older checkpoints).

        Raises:
            KeyError: the optimiser states name other networks than this recipe trains.
            ValueError: the states are of another optimiser than ``train.optimizer``.
        """
        saved = state.get("optimizer", "adam") if "penalty_calls" in state else "adam"
        if saved != self.optimizer:
            raise ValueError(
                f"the checkpoint's optimiser states are {saved!r}, this run's train.optimizer is "
                f"{self.optimizer!r}; resume with train.optimizer={saved}"
            )
        optimizers = state.get("optimizers", state) if "penalty_calls" in state else state
        missing = set(self.optimizers) ^ set(optimizers)
        if missing:
            raise KeyError(f"optimiser states do not match the trained networks: {sorted(missing)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(optimizers[name])
        for name, count in state.get("penalty_calls", {}).items():
            set_lazy_count(self.critic(name), count)


RECIPES: dict[str, type[Recipe]] = {}

R = TypeVar("R", bound=type[Recipe])


def register_recipe(family: str) -> Callable[[R], R]:
    """Class decorator: ``cls`` drives the models whose ``family`` is ``family``.

    Raises:
        ValueError: an empty or already registered family, or a class that does not
            say which networks it needs.
    """

    def decorator(cls: R) -> R:
        if not family or family in RECIPES:
            raise ValueError(f"register_recipe: family {family!r} is empty or already registered")
        if not cls.networks or not cls.losses:
            raise ValueError(f"register_recipe({family!r}): {cls.__name__} must name its networks and losses")
        cls.family = family
        RECIPES[family] = cls
        return cls

    return decorator


@register_recipe("gan")
class GANRecipe(Recipe):
    """Generator + discriminator (``wgan-gp``, hinge SN-GANs and other plain GANs).

    Per iteration the generator ``g_updates`` times, then the discriminator
    ``d_updates`` times. A conditional model's labels reach the generator, and the
    discriminator when it takes them (ICW-GAN's, a projection discriminator); with an
    auxiliary classifier the generator's loss adds ``lambda_cls`` times its
    cross-entropy on the generated volumes (logged as ``loss_cls``).

    ``train.feature_matching = w > 0`` (Salimans et al. 2016's feature matching, which
    Seeliger et al. 2018 add on the discriminator's first layer; the weight is brainkern's,
    the paper gives none): each generator update adds ``w`` times

        ``mean_c ((mean_n f(x)[n, c] - mean_n f(G(z))[n, c]) ** 2)``

    where ``f`` is the discriminator's ``features`` ``(N, ...) -> (N, C, ...)``, seen through
    the same ``critic_input`` hooks as its logits, ``x`` the real batch (its features without
    gradient) and ``G(z)`` the update's generated batch; ``c`` runs over every feature
    position. Logged unweighted as ``loss_fm``. These two extra forwards leave the
    discriminator's BatchNorm running statistics as they were. With several processes the
    batch means are each process's (the term of its slice, gradients then averaged).

    Raises:
        ValueError: ``train.feature_matching`` negative or not finite, or > 0 with a
            discriminator that has no ``features`` method.
    """

    networks = ("generator", "discriminator")
    losses = ("loss_g", "loss_d", "gp_d")
    options = ("feature_matching",)

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        super().__init__(model, train, device, world)
        w = self._option(train, "feature_matching")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ValueError(f"train.feature_matching must be a finite number >= 0, got {w!r}")
        self.feature_matching = float(w)
        if self.feature_matching > 0:
            D = model["discriminator"]
            if not callable(getattr(D, "features", None)):
                raise ValueError(
                    f"train.feature_matching={w}: the discriminator of {model.name} "
                    f"({type(D).__name__}) has no features(x) method to match; set "
                    "train.feature_matching=0 or use a model whose discriminator has one (seeliger-dcgan)"
                )
            self.losses = (*self.losses, "loss_fm")

    def _feature_matching(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The unweighted feature-matching term of generated ``fake`` against ``real``
        (both ``(N, C, *shape)``; see the class docstring)."""
        D = self.critic("discriminator")
        net = self.model["discriminator"]
        norms = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        with FrozenBatchNormStats(norms):
            with torch.no_grad():
                f_real = D.features(real).mean(0)
            f_fake = D.features(fake).mean(0)
        return ((self._full(f_real) - self._full(f_fake)) ** 2).mean()

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        self._prepare_classifier()
        real, y = self.images(batch), self.labels(batch)
        model, D = self.model, self.critic("discriminator")
        y_d = self.labels_for("discriminator", y)
        n = real.shape[0]
        logs: dict[str, torch.Tensor] = {}
        with frozen(model.discriminator):
            for _ in range(self.g_updates):
                self._before_critic("discriminator")
                with self.autocast():
                    fake = model.generate(self._latent(n), y)
                    loss_g = generator_loss(self.loss, [D(fake, y_d)])
                    total = loss_g
                    if self.has_classifier:
                        loss_cls = self._class_loss([fake], y)
                        total = loss_g + self.lambda_cls * loss_cls
                    if self.feature_matching > 0:
                        loss_fm = self._feature_matching(real, fake)
                        total = total + self.feature_matching * loss_fm
                self._update(total, "generator")
        logs["loss_g"] = loss_g.detach()
        if self.has_classifier:
            logs["loss_cls"] = loss_cls.detach()
        if self.feature_matching > 0:
            logs["loss_fm"] = loss_fm.detach()
        for _ in range(self.d_updates):
            with torch.no_grad(), self.autocast():
                fake = self._full(model.generate(self._latent(n), y))
            logs.update(self._critic_step("discriminator", real, [fake], y_d))
        return logs


@register_recipe("alpha")
class AlphaRecipe(Recipe):
    """Encoder + generator + discriminator + code discriminator (alpha-GAN family).

    One iteration, in Kwon et al.'s order (encoder-generator, discriminator, code
    discriminator):

    1. Encoder and generator as one network on ``L_E + L_G``: the adversarial loss
       of reconstructions ``G(E(x))`` and samples ``G(z)`` against the image
       discriminator, ``lambda_rec`` times the L1 reconstruction error, and the
       encodings' adversarial loss against the code discriminator. Kwon et al.
       update the generator twice per step (``g_updates``, 2) and the encoder once;
       ``train.eg_schedule`` chooses how:

       - ``"paper"`` (default): one forward and backward of ``L_E + L_G`` updates
         both; then the generator alone is updated ``g_updates - 1`` more times, each
         on ``L_G`` computed afresh (the updated generator, new prior codes, the
         encoder run without gradients: the code term does not reach the generator).
       - ``"reference"``: the authors' code: one forward and backward, the encoder's
         optimiser steps once and the generator's ``g_updates`` times on those same
         gradients (Adam's moments move between the steps, so the steps differ).
       - ``"joint"``: encoder and generator both updated ``g_updates`` times, each on
         a fresh forward (brainkern's earlier schedule; the encoder moves twice).

    2. The image discriminator, ``d_updates`` times: real volumes against
       reconstructions and samples (with ``wgan-gp`` a gradient penalty for each).
    3. The code discriminator, once: prior codes are "real", encodings "fake".

    ``train.critic_batch``: ``"fresh"`` (default, as the authors' code) runs steps 2
    and 3 on the next real batch, taken from :attr:`Recipe.draw` (the engine binds
    it), and encodes that batch for both; an iteration then consumes two batches,
    so an epoch passes in half the iterations. ``"same"`` reuses the batch of step 1.

    Logged: ``loss_g`` and ``loss_rec`` of the generator's last update, ``loss_e``
    (the code term) of the encoder's last update.

    Raises:
        ValueError: (at construction) an unknown ``eg_schedule`` or ``critic_batch``;
            (in :meth:`step`) ``critic_batch="fresh"`` with no ``draw`` bound.
    """

    networks = ("encoder", "generator", "discriminator", "code_discriminator")
    losses = ("loss_g", "loss_rec", "loss_e", "loss_d", "gp_d", "loss_c", "gp_c")
    options = ("lambda_rec", "eg_schedule", "critic_batch")
    SCHEDULES = ("paper", "reference", "joint")
    CRITIC_BATCHES = ("fresh", "same")

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        super().__init__(model, train, device, world)
        self.eg_schedule = self._choice(train, "eg_schedule", self.SCHEDULES)
        self.critic_batch = self._choice(train, "critic_batch", self.CRITIC_BATCHES)

    def _eg_losses(
        self, real: torch.Tensor, y: torch.Tensor | None, *, encoder: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The adversarial, reconstruction, code and class terms of ``L_E + L_G`` on ``real``
        (labels ``y`` for a conditional model); ``encoder=False``: the encoder runs without
        gradients and the code term (``None``) is left out. The class term is ``None``
        without an auxiliary classifier."""
        G = self.model
        D, C = self.critic("discriminator"), self.critic("code_discriminator")
        y_d, y_c = self.labels_for("discriminator", y), self.labels_for("code_discriminator", y)
        self._before_critic("discriminator", *(("code_discriminator",) if encoder else ()))
        with self.autocast():
            with contextlib.nullcontext() if encoder else torch.no_grad():
                z_e = self._call("encoder", real, y)
            x_rec, x_rand = G.generate(z_e, y), G.generate(self._latent(real.shape[0]), y)
            adv = generator_loss(self.loss, [D(x_rec, y_d), D(x_rand, y_d)])
            rec = l1_reconstruction(real, x_rec)
            code = generator_loss(self.loss, [C(z_e, y_c)]) if encoder else None
            cls = self._class_loss([x_rec, x_rand], y) if self.has_classifier else None
        return adv, rec, code, cls

    def _eg_total(self, adv, rec, code, cls) -> torch.Tensor:
        total = adv + self.lambda_rec * rec
        if code is not None:
            total = total + code
        if cls is not None:
            total = total + self.lambda_cls * cls
        return total

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.critic_batch == "fresh" and self.draw is None:
            raise ValueError(
                "train.critic_batch='fresh' reads a second real batch per iteration through "
                "recipe.draw, which is not bound: set recipe.draw to a function returning the next "
                "batch (the Trainer does), or use train.critic_batch='same'"
            )
        self._prepare_classifier()
        real, y = self.images(batch), self.labels(batch)
        logs: dict[str, torch.Tensor] = {}
        # 1. encoder and generator (see the class docstring for the schedules).
        with frozen(self.model.discriminator, self.model.code_discriminator):
            adv, rec, code, cls = self._eg_losses(real, y, encoder=True)
            self._update(self._eg_total(adv, rec, code, cls), "encoder", "generator")
            for _ in range(self.g_updates - 1):
                if self.eg_schedule == "reference":
                    # The gradients are already averaged over the processes: step on them again.
                    self.optimizers["generator"].step()
                elif self.eg_schedule == "joint":
                    adv, rec, code, cls = self._eg_losses(real, y, encoder=True)
                    self._update(self._eg_total(adv, rec, code, cls), "encoder", "generator")
                else:
                    adv, rec, _, cls = self._eg_losses(real, y, encoder=False)
                    self._update(self._eg_total(adv, rec, None, cls), "generator")
        logs.update(loss_g=adv.detach(), loss_rec=rec.detach(), loss_e=code.detach())
        if cls is not None:
            logs["loss_cls"] = cls.detach()
        # 2. the image discriminator: real against reconstructions and samples.
        if self.critic_batch == "fresh":
            second = self.draw()
            real, y = self.images(second), self.labels(second)
        n = real.shape[0]
        with torch.no_grad(), self.autocast():
            z_e = self._full(self._call("encoder", real, y))
            x_rec = self._full(self.model.generate(z_e, y))
            x_rand = self._full(self.model.generate(self._latent(n), y))
        y_d = self.labels_for("discriminator", y)
        for _ in range(self.d_updates):
            logs.update(self._critic_step("discriminator", real, [x_rec, x_rand], y_d))
        # 3. the code discriminator: prior samples are "real", encodings "fake".
        y_c = self.labels_for("code_discriminator", y)
        logs.update(self._critic_step("code_discriminator", self._latent(n), [z_e], y_c))
        return logs


@register_recipe("vae-gan")
class VAEGANRecipe(Recipe):
    """Variational encoder + generator + discriminator (VAE-GAN, Larsen et al. 2016).

    Per iteration, ``g_updates`` times: the encoder on ``lambda_kl * KL +
    lambda_rec * rec`` and the generator on ``adversarial + lambda_dec * rec``
    (one forward; each network's loss reaches only its own parameters); then the
    discriminator ``d_updates`` times on real, reconstructed and sampled volumes.

    The defaults are those of Kwon et al.'s VAE-GAN code: ``kl_reduction="mean"``
    (the KL averaged over batch and latent dimensions), ``reconstruction="mse"``,
    ``lambda_kl`` 1, ``lambda_rec`` 10, ``lambda_dec`` 20. That code updates the
    discriminator first and gives the generator the saturating minimax loss;
    brainkern keeps its encoder-generator-first order and the non-saturating loss.

    Raises:
        ValueError: an unknown ``kl_reduction`` or ``reconstruction`` (``"bce"`` too:
            Kwon et al.'s generator ends in tanh, [-1, 1], outside a probability's range).
    """

    networks = ("encoder", "generator", "discriminator")
    losses = ("loss_g", "loss_rec", "loss_kl", "loss_d", "gp_d")
    options = ("lambda_rec", "lambda_kl", "lambda_dec", "kl_reduction", "reconstruction")

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        super().__init__(model, train, device, world)
        self.lambda_dec = float(self._option(train, "lambda_dec"))
        self.kl_reduction = self._choice(train, "kl_reduction", KL_REDUCTIONS)
        self.reconstruction = self._choice(train, "reconstruction", SIGNED_RECONSTRUCTIONS)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        real = self.images(batch)
        E, G, D = self.model.encoder, self.model.generator, self.critic("discriminator")
        n = real.shape[0]
        logs: dict[str, torch.Tensor] = {}
        with frozen(self.model.discriminator):
            for _ in range(self.g_updates):
                self._before_critic("discriminator")
                with self.autocast():
                    mu, logvar = E(real)
                    z_e = mu + self._noise(mu) * (0.5 * logvar).exp()
                    x_rec, x_rand = G(z_e), G(self._latent(n))
                    adv = generator_loss(self.loss, [D(x_rec), D(x_rand)])
                    rec = reconstruction_loss(self.reconstruction, real, x_rec)
                    kl = kl_standard_normal(mu, logvar, self.kl_reduction)
                    loss_e = self.lambda_kl * kl + self.lambda_rec * rec
                    loss_g = adv + self.lambda_dec * rec
                for opt in (self.optimizers["encoder"], self.optimizers["generator"]):
                    opt.zero_grad(set_to_none=True)
                # The encoder learns from the prior and reconstruction terms only, the
                # generator from reconstruction and the discriminator (Larsen et al.).
                loss_e.backward(inputs=list(E.parameters()), retain_graph=True)
                loss_g.backward(inputs=list(G.parameters()))
                self._step("encoder", "generator")
        logs.update(loss_g=adv.detach(), loss_rec=rec.detach(), loss_kl=kl.detach())
        with torch.no_grad(), self.autocast():
            mu, logvar = E(real)
            z_e = self._full(mu + self._noise(mu) * (0.5 * logvar).exp())
            x_rec, x_rand = self._full(G(z_e)), self._full(G(self._latent(n)))
        for _ in range(self.d_updates):
            logs.update(self._critic_step("discriminator", real, [x_rec, x_rand]))
        return logs


@register_recipe("cvae")
class CVAERecipe(Recipe):
    """Conditional variational encoder + generator (CVAE; Zhuang et al. 2019, seed 000).

    Per iteration one Adam update of encoder and generator together on the negative
    ELBO of the batch: with ``(mu, logvar) = E(x, y)`` and ``z = mu + sigma * e``
    (reparameterised, ``e`` from :meth:`Recipe._noise`),

        ``loss = rec(x, G(z, y)) + lambda_kl * KL(N(mu, sigma^2) || N(0, I))``

    where ``rec`` is summed over each volume's voxels (``train.reconstruction``:
    ``"bce"``, the Bernoulli log-likelihood of [0, 1] maps under a sigmoid
    generator, brainkern's preset choice; or ``"mse"`` / ``"l1"``), the KL summed
    over the latent dimensions, both averaged over the batch. ``lambda_kl`` 1 is
    the ELBO itself. Logged: ``loss`` and its two terms ``loss_rec``, ``loss_kl``.

    Raises:
        ValueError: an unknown ``train.reconstruction``; a ``train.loss``.
    """

    networks = ("encoder", "generator")
    losses = ("loss", "loss_rec", "loss_kl")
    options = ("lambda_kl", "reconstruction")
    adversarial = False

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        super().__init__(model, train, device, world)
        self.reconstruction = self._choice(train, "reconstruction", RECONSTRUCTIONS)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        real, y = self.images(batch), self.labels(batch)
        with self.autocast():
            mu, logvar = self.model.encoder(real, y)
            z = mu + self._noise(mu) * (0.5 * logvar).exp()
            rec = reconstruction_loss(self.reconstruction, real, self.model.generate(z, y), "sum")
            kl = kl_standard_normal(mu, logvar, "sum")
            loss = rec + self.lambda_kl * kl
        self._update(loss, "encoder", "generator")
        return {"loss": loss.detach(), "loss_rec": rec.detach(), "loss_kl": kl.detach()}


@register_recipe("em")
class EMRecipe(Recipe):
    """A generator fitted in one step on the whole training set (Zhuang et al.'s GMMs).

    Nothing is trained by gradient (``trains = ()``: no optimiser; the generator has
    no parameters, only buffers). ``whole_data = True``: the engine gives every
    training volume in each batch, and :meth:`step` calls ``generator.fit(image,
    label)`` (for ``gmm``: PCA of the brain-masked voxels, then one mixture per
    class by EM), which writes the fitted buffers. One iteration is the whole
    training (``train.iters: 1``); another refits on the same volumes. Logged:
    ``loss_nll``, the fit's mean negative log-likelihood per volume.

    Raises:
        ValueError: a generator without a ``fit(volumes, labels)``, several processes
            (the fit is not distributed), a ``train.loss``; from :meth:`step`, what
            the fit raises (too few volumes for the PCA or a class's mixture).
    """

    networks = ("generator",)
    trains = ()
    losses = ("loss_nll",)
    adversarial = False
    whole_data = True

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        super().__init__(model, train, device, world)
        if not callable(getattr(model.generator, "fit", None)):
            raise ValueError(
                f"{model.name}: the 'em' recipe fits the generator with generator.fit(volumes, labels), "
                f"which {type(model.generator).__name__} lacks"
            )
        if self.world.size > 1:
            raise ValueError(
                f"{model.name}: the 'em' recipe fits on the whole training set in one process; "
                f"run it without torchrun (got {self.world.size} processes)"
            )

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        labels = self.labels(batch) if getattr(self.model, "conditional", False) else None
        args = (self.images(batch),) if labels is None else (self.images(batch), labels)
        nll = self.model.generator.fit(*args)
        return {"loss_nll": torch.tensor(float(nll), dtype=torch.float64, device=self.device)}


class _HierarchicalRecipe(Recipe):
    """What the hierarchical families share: slab starts, the real slabs and low-resolution
    volumes, and the averaged discriminator ``D(x, c) = (D^H(x^H, c) + D^L(x^L)) / 2``.

    Slab starts: one per sample, uniform over every plane ``0 .. D - d``, drawn for the
    global batch by the CPU's global generator and sliced (as the latent codes are); the
    position ``D^H`` sees is the start over ``D - d``. Each update draws its own starts;
    within an update the real and generated slabs of sample ``i`` share a start. The real
    low-resolution volume is the real volume average-pooled by 4
    (:func:`brainkern.models.ha_gan.low_resolution`).

    Both discriminators are reached through :meth:`Recipe.critic`, so the spectral-norm
    refresh and DiffAugment apply to each (DiffAugment to slabs and low-resolution volumes
    alike, with its own draws for each), and both are stepped together on one loss.

    Raises:
        ValueError: (at construction) ``train.loss=wgan-gp`` (no gradient penalty for the
            two-input averaged critic), or a generator without slab training.
    """

    networks = ("generator", "discriminator_high", "discriminator_low")
    CRITICS = ("discriminator_high", "discriminator_low")

    def __init__(
        self, model: nn.Module, train: dict[str, Any], device: torch.device, world: World | None = None
    ) -> None:
        super().__init__(model, train, device, world)
        if self.loss == "wgan-gp":
            raise ValueError(
                f"{model.name}: the {self.family!r} recipe trains the standard or hinge loss; "
                "train.loss=wgan-gp needs a gradient penalty the averaged slab and volume critics do not have"
            )
        generator = model.generator
        if not callable(getattr(generator, "forward_train", None)) or not hasattr(generator, "sub_depth"):
            raise ValueError(
                f"{model.name}: the {self.family!r} recipe needs a hierarchical generator "
                f"(forward_train(z, starts), sub_depth), not {type(generator).__name__}"
            )
        self.depth, self.sub_depth = int(model.shape[0]), int(generator.sub_depth)

    def _starts(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` slab starts ``(n,)`` int64 and their positions ``(n,)`` in [0, 1] (this process's slice)."""
        last = self.depth - self.sub_depth
        starts = self.world.shard(torch.randint(0, last + 1, (n * self.world.size,), dtype=torch.int64))
        starts = starts.to(self.device)
        return starts, starts.to(self.dtype) / max(last, 1)

    def _real(self, real: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The real slabs at ``starts`` and the real low-resolution volumes."""
        return slabs_at(real, starts, self.sub_depth), low_resolution(real)

    def _fake(self, z: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated slabs at ``starts`` and low-resolution volumes for codes ``z``."""
        return self.model.generator.forward_train(z, starts)

    def _score(self, parts: tuple[torch.Tensor, torch.Tensor], position: torch.Tensor) -> torch.Tensor:
        """The averaged logit ``(N, 1)`` of (slabs, low-resolution volumes) at ``position``."""
        slab, low = parts
        high = self.critic("discriminator_high")(slab, None, position)
        return (high + self.critic("discriminator_low")(low)) / 2

    def _critics_step(
        self,
        real: tuple[torch.Tensor, torch.Tensor],
        fakes: list[tuple[torch.Tensor, torch.Tensor]],
        position: torch.Tensor,
    ) -> torch.Tensor:
        """One update of both discriminators on the averaged logit; returns the detached loss."""
        self._before_critic(*self.CRITICS)
        with self.autocast():
            loss = discriminator_loss(
                self.loss, self._score(real, position), [self._score(f, position) for f in fakes]
            )
        self._update(loss, *self.CRITICS)
        return loss.detach()

    def _detached(self, parts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(self._full(p) for p in parts)


@register_recipe("ha")
class HARecipe(_HierarchicalRecipe):
    """Hierarchical generator + slab and low-resolution discriminators (HA-GAN; Sun et al. 2022).

    Per iteration, in Sun et al.'s order:

    1. the discriminators ``d_updates`` times, together: real (slab, low-resolution
       volume) pairs against generated ones from fresh prior codes (generated without
       autograd), on the adversarial loss of the averaged logit;
    2. the generator ``g_updates`` times, each on fresh codes and starts: the
       adversarial (non-saturating, for ``standard``) loss of the averaged logit of its
       slabs and low-resolution volumes.

    Logged: ``loss_d`` and ``loss_g`` of the last updates.
    """

    losses = ("loss_d", "loss_g")

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        real = self.images(batch)
        n = real.shape[0]
        logs: dict[str, torch.Tensor] = {}
        for _ in range(self.d_updates):
            starts, position = self._starts(n)
            with torch.no_grad(), self.autocast():
                fake = self._detached(self._fake(self._latent(n), starts))
            logs["loss_d"] = self._critics_step(self._real(real, starts), [fake], position)
        with frozen(self.model.discriminator_high, self.model.discriminator_low):
            for _ in range(self.g_updates):
                self._before_critic(*self.CRITICS)
                starts, position = self._starts(n)
                with self.autocast():
                    loss_g = generator_loss(
                        self.loss, [self._score(self._fake(self._latent(n), starts), position)]
                    )
                self._update(loss_g, "generator")
        logs["loss_g"] = loss_g.detach()
        return logs


@register_recipe("alpha-ha")
class AlphaHARecipe(_HierarchicalRecipe):
    """The alpha-HA-GAN (King et al. 2024, seed 003, supplement eqs. 1-4): the HA-GAN with a
    slab encoder ``E^H``, a volume encoder ``E^L`` and a code discriminator ``C``.

    Per iteration, in the order of Sun et al.'s code (discriminators, generator, encoders),
    with King et al.'s code discriminator last. ``X^H`` are real slabs at per-sample starts
    ``c``, ``X^L`` the real volumes at low resolution, ``z_e = E^L(f)`` with ``f`` the ``E^H``
    features of all non-overlapping slabs of each real volume, concatenated along depth
    (computed once per iteration, without autograd, before ``E^H`` is updated):

    1. ``D^H`` and ``D^L`` (eq. 3), ``d_updates`` times: real against ``G(z_e, c)`` and
       ``G(z_r, c)`` (both generated without autograd), the real term counted twice.
    2. The generator and ``E^L`` together, ``g_updates`` times (one optimiser step of each per
       update; eq. 2): ``lambda_rec * (|G^H(z_e, c) - X^H|_1 + |G^L(z_e) - X^L|_1)`` (mean
       absolute errors) plus the adversarial losses of ``G(z_e, c)`` and ``G(z_r, c)`` and the
       code term of ``z_e`` against ``C``. ``E^H`` gets no gradient here.
    3. ``E^H`` (eq. 1): ``|G^H(E^H(X^H)) - X^H|_1``, ``G^H`` run on the slab's own features
       (no context beyond it), the generator frozen: no parameter gradient and, although
       it runs in training mode, no change to its BatchNorm running statistics. The
       gradient flows through ``G^H`` to ``E^H`` only.
    4. ``C`` (eq. 4), once: prior codes real, the codes ``z_e`` of step 2 fake.

    Logged: ``loss_d``, ``loss_g`` (adversarial), ``loss_rec`` (the two L1 terms, unweighted),
    ``loss_e`` (the code term), ``loss_eh``, ``loss_c``.
    """

    networks = (
        "generator",
        "discriminator_high",
        "discriminator_low",
        "encoder_high",
        "encoder_low",
        "code_discriminator",
    )
    losses = ("loss_d", "loss_g", "loss_rec", "loss_e", "loss_eh", "loss_c")
    options = ("lambda_rec",)

    def step(self, batch: Batch) -> dict[str, torch.Tensor]:
        real = self.images(batch)
        n = real.shape[0]
        G, E_low = self.model.generator, self.model.encoder_low
        logs: dict[str, torch.Tensor] = {}
        with torch.no_grad(), self.autocast():
            feats = self._full(self.model.encoder_high.encode_volume(real))
        # 1. the discriminators (eq. 3)
        for _ in range(self.d_updates):
            starts, position = self._starts(n)
            with torch.no_grad(), self.autocast():
                fake_e = self._detached(self._fake(self._full(E_low(feats)), starts))
                fake_r = self._detached(self._fake(self._latent(n), starts))
            logs["loss_d"] = self._critics_step(self._real(real, starts), [fake_e, fake_r], position)
        # 2. the generator and E^L (eq. 2)
        C = self.critic("code_discriminator")
        nets = self.model
        with frozen(nets.discriminator_high, nets.discriminator_low, nets.code_discriminator):
            for _ in range(self.g_updates):
                self._before_critic(*self.CRITICS, "code_discriminator")
                starts, position = self._starts(n)
                real_slab, real_low = self._real(real, starts)
                with self.autocast():
                    z_e = E_low(feats)
                    slab_e, low_e = self._fake(z_e, starts)
                    fake_r = self._fake(self._latent(n), starts)
                    adv = generator_loss(
                        self.loss, [self._score((slab_e, low_e), position), self._score(fake_r, position)]
                    )
                    rec = l1_reconstruction(real_slab, slab_e) + l1_reconstruction(real_low, low_e)
                    code = generator_loss(self.loss, [C(z_e)])
                    total = adv + self.lambda_rec * rec + code
                self._update(total, "generator", "encoder_low")
        logs.update(loss_g=adv.detach(), loss_rec=rec.detach(), loss_e=code.detach())
        # 3. E^H (eq. 1) through the frozen generator
        starts, _ = self._starts(n)
        real_slab = slabs_at(real, starts, self.sub_depth)
        norms = [m for m in G.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        with frozen(G), FrozenBatchNormStats(norms), self.autocast():
            loss_eh = l1_reconstruction(real_slab, G.high_planes(self.model.encoder_high(real_slab)))
        self._update(loss_eh, "encoder_high")
        logs["loss_eh"] = loss_eh.detach()
        # 4. the code discriminator (eq. 4)
        step = self._critic_step("code_discriminator", self._latent(n), [self._full(z_e.detach())])
        logs["loss_c"] = step["loss_c"]
        return logs


def train_dtype(train: dict[str, Any]) -> torch.dtype:
    """The dtype of ``train.dtype`` (float32 unless set).

    Raises:
        ValueError: neither ``"float32"`` nor ``"float64"``.
    """
    name = train.get("dtype") or "float32"
    if name not in ("float32", "float64"):
        raise ValueError(f"train.dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def make_recipe(
    model: nn.Module, train: dict[str, Any], device: torch.device | str, world: World | None = None
) -> Recipe:
    """The recipe for ``model.family``, its contract with the model checked
    (``world``: the processes of the run, see :class:`Recipe`).

    Raises:
        ValueError: a family without a recipe, or a model that breaks the family's
            contract (see :class:`Recipe`).
    """
    try:
        cls = RECIPES[model.family]
    except KeyError:
        raise ValueError(
            f"no training recipe for model family {model.family!r}; known: {sorted(RECIPES)}"
        ) from None
    return cls(model, train, torch.device(device), world)
