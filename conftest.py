"""Repository-wide pytest set-up: the pytest-benchmark default for every test run.

Any pytest run in this repository (``./dev test``, ``pytest benchmarks``, one
benchmark file) executes each benchmark once at small sizes (smoke mode)
unless ``--benchmark-enable``, ``--benchmark-disable`` or ``--benchmark-only``
says otherwise. It is set here, not in pyproject's ``addopts``, so that pytest
still starts where the pytest-benchmark plugin is not installed (a bare GPU
image); ``./dev bench`` passes ``--benchmark-enable`` for full-size timings.
"""


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("benchmark"):
        return
    given = ("benchmark_enable", "benchmark_disable", "benchmark_only")
    if not any(config.getoption(name) for name in given):
        config.option.benchmark_disable = True
