"""trainlab: a command-line experiment runner for PyTorch image classification."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainlab")  # one place: pyproject.toml
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
