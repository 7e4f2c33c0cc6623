"""trainlab: a command-line experiment runner for PyTorch image classification."""

__version__ = "0.1.0"
