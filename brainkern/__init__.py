"""brainkern: fused kernels and training code for 3D generative models of brain images.

Importing brainkern needs neither the compiled extension, nor Triton, nor a GPU:
what is missing surfaces only when a backend that needs it is asked for (see
:func:`brainkern.ops.backends`).
"""

__version__ = "0.1.0"
