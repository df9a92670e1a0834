"""The machine observer's figure for Han et al.'s 2D runs: C2ST accuracy with its 95% CI.

Reads the ``evaluation.json`` of one or more 2D run directories (written at the end of a
run, or by ``python -m brainkern.evaluate RUN_DIR``) and draws, per run, the classifier
two-sample test's accuracy against held-out real slices for the model, the trivial
generators and real slices (real against real), with the 50% line (indistinguishable)
and the range of Han et al.'s physicians (53-77%, their Table 1) for reference.

    .venv/bin/python scripts/han_observer_figure.py RUN_DIR [RUN_DIR ...] --out figure.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The physicians' accuracies in Han et al.'s Table 1 (lowest and highest of the 12 rows).
HAN_RANGE = (0.53, 0.77)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="2D run directories with evaluation.json")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--labels", nargs="*", help="a label per run (default: the model names)")
    args = parser.parse_args(argv)

    from matplotlib.figure import Figure

    evaluations = [json.loads((run / "evaluation.json").read_text()) for run in args.runs]
    labels = args.labels or [e.get("model", run.name) for e, run in zip(evaluations, args.runs, strict=True)]
    if len(labels) != len(evaluations):
        parser.error(f"{len(labels)} labels for {len(evaluations)} runs")
    bars: list[tuple[str, dict]] = []
    for label, ev in zip(labels, evaluations, strict=True):
        rows = {r["source"]: r for r in ev["rows"]}
        bars.append((f"{label} ({ev.get('iterations', '?')} it.)", rows["model"]))
    # The reference rows come from the first run (all runs share the data and split).
    for name, row in {r["source"]: r for r in evaluations[0]["rows"]}.items():
        if name != "model":
            bars.append((name, row))

    fig = Figure(figsize=(7.5, 0.55 * len(bars) + 1.2), dpi=110)
    ax = fig.add_subplot()
    ys = list(range(len(bars)))[::-1]
    for y, (name, row) in zip(ys, bars, strict=True):
        acc, (low, high) = row["accuracy"], row["ci"]
        colour = "tab:blue" if "it.)" in name else ("tab:green" if "real" in name else "tab:grey")
        ax.barh(y, acc, color=colour, alpha=0.8, height=0.6)
        ax.errorbar(acc, y, xerr=[[acc - low], [high - acc]], fmt="none", ecolor="black", capsize=3)
        ax.text(high + 0.012, y, f"{100 * acc:.1f}%", va="center", fontsize=8)
    ax.axvspan(*HAN_RANGE, color="tab:orange", alpha=0.15, label="Han et al.'s physicians (53-77%)")
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label="chance (indistinguishable)")
    ax.set_yticks(ys, [name for name, _ in bars], fontsize=8)
    ax.set_xlim(0.0, 1.14)
    ax.set_xlabel("C2ST accuracy against held-out real slices (95% CI)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
