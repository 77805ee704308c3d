"""Shared test setup: tests/ on sys.path (for ``servers``) and the loopback object-store
fixtures (gcs_emulator, s3_server and their session-scoped *_process servers)."""
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # also under --import-mode=importlib, which does not add it
    sys.path.insert(0, _HERE)

pytest_plugins = ["servers"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "objectstore: needs the loopback GCS emulator or moto S3 server (tests/servers.py)"
    )


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one thread is as fast and leaves the other core to other work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
