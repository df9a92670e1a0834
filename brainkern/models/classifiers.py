"""The registered classifiers (being written)."""
