"""Zhuang et al. (2019)'s conditional generative models of fMRI maps (being written)."""
