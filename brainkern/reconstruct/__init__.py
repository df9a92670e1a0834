"""Seeliger et al. (2018): reconstructing seen images from brain responses through a fixed GAN."""
