"""Layers built on :mod:`brainkern.ops`."""
