"""Shared test helpers: tiny data trees in the exact Tiny-ImageNet layout, and the composed config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab.config import compose  # noqa: F401  (tests import it from here)
from trainlab.data.synthetic import write_tiny_imagenet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    return write_tiny_imagenet(tmp_path / "tiny-imagenet-200")


def run_cli(*args, cwd=None, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    env.pop("TRAINLAB_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
