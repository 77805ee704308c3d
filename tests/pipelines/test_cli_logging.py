"""pipelines.cli.configure_logging: INFO progress lines show even when an import (Beam's
does) has already set the root logger up at WARNING, which makes basicConfig a no-op."""
import logging

from chromabeam.pipelines.cli import configure_logging


def test_info_shows_after_an_import_configured_the_root_logger():
    root = logging.getLogger()
    saved = root.level
    try:
        root.setLevel(logging.WARNING)  # what a root-level warning at import time leaves
        configure_logging(verbose=False)
        assert logging.getLogger("chromabeam.train.restorer").isEnabledFor(logging.INFO)
        assert not logging.getLogger("chromabeam.x").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("gcsfs").isEnabledFor(logging.WARNING)  # quietened
        configure_logging(verbose=True)
        assert logging.getLogger("chromabeam.x").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("gcsfs").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(saved)
        for noisy in ("apache_beam", "gcsfs", "s3fs", "aiobotocore", "botocore", "urllib3", "fsspec"):
            logging.getLogger(noisy).setLevel(logging.NOTSET)
