"""Checkpoints are atomic and readable; random state round-trips exactly."""

import random

import numpy as np
import pytest
import torch

from brainkern.train.state import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state


def test_checkpoint_round_trip_creates_parents(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint({"model": model.state_dict(), "iter": 7}, tmp_path / "a" / "b" / "last.pt")
    state = load_checkpoint(path)
    assert state["iter"] == 7
    torch.testing.assert_close(state["model"]["weight"], model.weight.detach())
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint({"iter": 1}, tmp_path / "last.pt")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"iter": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["iter"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pt could not be read"):
        load_checkpoint(bad)


def test_rng_state_round_trip(tmp_path):
    seed_everything(3)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    path = save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    set_rng_state(load_checkpoint(path)["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert first[0] == second[0] and first[1] == second[1]
    torch.testing.assert_close(first[2], second[2], rtol=0, atol=0)
