"""Benchmark session: smoke mode in CI, and a ratio table per group at the end.

``./dev test`` (and any plain pytest run, see the repository's ``conftest.py``) runs
each benchmark once at small sizes (smoke mode), checking every provider against the
reference before timing, so none of them rots. ``./dev bench`` times them at full
size; the summary lists, per group, each provider's median time, its ratio to
brainkern's (baseline time / brainkern time: above 1 means brainkern is faster)
and the memory figures the benchmark recorded.
"""

from __future__ import annotations

import os

import pytest

from benchmarks._util import is_smoke


@pytest.fixture
def smoke(request) -> bool:
    """True in smoke mode: use small sizes, run once."""
    return is_smoke(request.config)


def _rows(config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return {}
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if not getattr(bench, "stats", None):
            continue
        groups.setdefault(bench.group or bench.name, []).append(bench)
    return groups


def _table(groups) -> list[str]:
    lines = []
    for group, benches in sorted(groups.items()):
        ref = next((b for b in benches if b.extra_info.get("provider") == "brainkern"), None)
        ref_median = ref.stats.median if ref else None
        lines.append(f"\n### {group}\n")
        lines.append(
            "| provider | median (ms) | baseline / brainkern | peak memory (MiB) | saved activations (MiB) |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for b in sorted(benches, key=lambda b: b.stats.median):
            info = b.extra_info
            ratio = f"{b.stats.median / ref_median:.2f}x" if ref_median else "-"
            peak = info.get("peak_bytes")
            saved = info.get("saved_bytes")
            lines.append(
                f"| {info.get('provider', b.name)} | {b.stats.median * 1e3:.3f} | {ratio} | "
                f"{'-' if peak is None else f'{peak / 2**20:.1f}'} | "
                f"{'-' if saved is None else f'{saved / 2**20:.1f}'} |"
            )
        extras = {k: v for k, v in (ref or benches[0]).extra_info.items() if k.startswith("ceiling")}
        for key, value in extras.items():
            lines.append(f"\n{key}: {value}")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    groups = _rows(config)
    if not groups:
        return
    lines = _table(groups)
    terminalreporter.write_sep("=", "brainkern: ratios measured side by side")
    for line in lines:
        terminalreporter.write_line(line)
    path = os.environ.get("BRAINKERN_BENCH_MD")
    if path:
        with open(path, "a") as fh:
            fh.write("\n".join(lines) + "\n")
