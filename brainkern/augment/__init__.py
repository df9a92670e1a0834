"""Differentiable 3D augmentation for GAN training and classifier data sets.

King et al. (2024) train their 3D GANs with DiffAugment (Zhao et al. 2020)
adapted to volumes: every discriminator input, real or generated, is translated
(by up to 1/8 of each axis), has a box of at most half of each side cut out, and
has its intensity multiplied by a factor in ``[0.7, 1]``, each with probability
1/3 per sample; the augmentations are differentiable, so the generator learns
through them. They reuse the same three augmentations, with the same ranges and
probabilities, to build the classifier's "Augmented" training set.

brainkern's form (see :mod:`brainkern.augment.diffaugment` for every choice):
augmentation is relative to a ``background`` value (``-1`` for data in
``[-1, 1]``, ``0`` for ``[0, 1]``), so translation fills with background, cutout
sets background and intensity scales the distance to background; the draw
(:meth:`DiffAugment3d.draw`) is separate from its application
(:meth:`DiffAugment3d.apply`), which is one fused pass
(:func:`brainkern.ops.diff_augment3d`) with gradients of any order.

Example::

    augment = DiffAugment3d(background=-1.0)        # King et al.: p = 1/3, all three
    logits_real = D(augment(real))
    logits_fake = D(augment(G(z)))
"""

from brainkern.augment.diffaugment import POLICIES, AugmentParams, DiffAugment3d, diff_augment

__all__ = ["POLICIES", "AugmentParams", "DiffAugment3d", "diff_augment"]
