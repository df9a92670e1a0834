"""Triton kernels, one module per op; called only from :mod:`brainkern.ops`.

Importing a module here imports Triton, so :mod:`brainkern.ops` imports them
lazily, on the first call that runs the ``triton`` backend. Kernels must be
accepted by Triton 3.6 (the GPU image) and the Triton installed for the CPU
interpreter.
"""
