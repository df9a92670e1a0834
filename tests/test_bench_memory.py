"""The byte accounting of the memory benchmark (benchmarks/bench_memory.py)."""

from __future__ import annotations

import json

import torch

from benchmarks._util import SavedTensorMeter, adam_state_bytes
from benchmarks.bench_memory import CONFIGS, build_cell, markdown_table, trained_parameters


def test_meter_counts_each_storage_once_and_releases_after_backward():
    torch.manual_seed(0)
    w = torch.randn(1000, requires_grad=True)
    x = torch.randn(1000, requires_grad=True)
    with SavedTensorMeter(exclude=[w]) as meter:
        # mul saves both operands: x (counted) and w (excluded); the view of x and x
        # itself share one storage.
        y = (x * w).sum() + (x.view(10, 100) * x.view(10, 100)).sum()
        assert meter.live == x.numel() * 4
        y.backward()
        assert meter.live == 0
        # A second graph after the first was freed: the peak is the larger graph, not the sum.
        z = x.exp()  # saves its output: a new storage
        assert meter.live == 4000
        z.sum().backward()
    assert meter.live == 0 and meter.peak == 4000 and meter.total == 8000


def test_meter_sees_the_double_backward_graph():
    x = torch.randn(64, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (x.square() * x).sum()
        before = meter.live
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        assert meter.live > before  # the gradient's graph saves tensors too
        g.square().sum().backward()
        # create_graph keeps y's graph (and its saved tensors) while y and g are referenced.
        assert meter.live > 0
        del y, g
    assert meter.live == 0 and meter.peak > before


def test_state_bytes_are_the_optimisers_tensors():
    iteration, recipe = build_cell(
        CONFIGS["alpha-wgan-gp-64"], "plain", smoke=True, device=torch.device("cpu")
    )
    torch.manual_seed(1)
    iteration()
    held = 0
    for opt in recipe.optimizers.values():
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state[p]
                held += sum(t.nbytes for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"]))
    assert held == adam_state_bytes(trained_parameters(recipe)) > 0


def test_table_factors():
    rows = [
        {
            "config": "sn-gan-64",
            "variant": v,
            "saved_bytes": b * 2**20,
            "state_bytes": 2**20,
            "seconds": 1.0,
            "peak_bytes": 3 * 2**20,
            "repeat": v != "bf16",
        }
        for v, b in (("plain", 40), ("checkpoint", 10), ("bf16", 20), ("eager-ops", 100))
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 2 + 4
    plain, ckpt, bf16, eager = lines[2:]
    assert plain.startswith("| sn-gan-64 | plain | 40.0 | 1.0 | 41.0 | 3.0 | 1.00 |")
    assert ckpt.endswith("|  | 4.00x |") and eager.endswith("| 2.50x |  |")
    assert "3.0* | 1.00* |  | 2.00x |" in bf16


def test_table_run_measures_each_cell_in_its_own_process(tmp_path, capsys):
    from benchmarks.bench_memory import main

    out = tmp_path / "memory.json"
    args = ["--smoke", "--configs", "sn-gan-64", "--variants", "plain", "--threads", "1", "--out", str(out)]
    assert main([*args, "--single", "sn-gan-64:plain"]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["config"] == "sn-gan-64" and row["variant"] == "plain" and row["repeat"] is False
    assert row["saved_bytes"] > 0 and row["seconds"] == row["first_seconds"]
    assert main(["--table", str(out)]) == 0
    assert "| sn-gan-64 | plain |" in capsys.readouterr().out
