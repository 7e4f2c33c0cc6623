"""Fixtures shared by the test modules (helpers to import are in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainlab.testing import write_tiny_imagenet


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    """A miniature tiny-imagenet-200 tree in the official layout."""
    return write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
