"""Fixtures shared by the test modules (helpers to import are in helpers.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from trainlab.data.testing import write_tiny_imagenet


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory):
    """trainlab's cache folder (autotune decisions, the digits) is a fresh one for the test session, never the
    user's: the tests neither read a decision measured outside them nor leave theirs behind."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path_factory.mktemp("trainlab-cache")))
        yield


@pytest.fixture(autouse=True)
def same_threads():
    """A run in this process may set torch's thread count (trainer.threads=1, the cores shared by DDP ranks);
    the next test starts with the count it would have had alone."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_stale_log_handlers():
    """A command run in this process logs to the stderr pytest captured for that test; once the capture is
    closed, a later library warning through that handler would print a 'Logging error' traceback."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """A miniature tiny-imagenet-200 tree in the official layout."""
    return write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
