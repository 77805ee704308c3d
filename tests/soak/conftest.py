"""Soak tests: long, so outside the default run. `make soak` runs them (`pytest -m soak tests/soak`)."""
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long memory/throughput soak tests (make soak; skipped by default)")


def pytest_collection_modifyitems(config, items):
    selected = "soak" in (config.option.markexpr or "")
    for item in items:
        if "/tests/soak/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.soak)
            if not selected:
                item.add_marker(pytest.mark.skip(reason="soak test: run it with `make soak` (pytest -m soak tests/soak)"))
