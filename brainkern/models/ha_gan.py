"""HA-GAN and alpha-HA-GAN: hierarchical (sub-volume) 3D GANs (Sun et al. 2022; King et al. 2024, seed 003).

Under construction: the models register here.
"""

from __future__ import annotations
