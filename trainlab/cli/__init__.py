"""The command line: the dispatch table (`main`), composing and checking a command's config before Hydra runs it
(`compose`), running Hydra jobs and claiming their folders (`hydra_job`), shell completion, and the one-line error
contract (`output`). Commands are imported only when they run."""

from trainlab.cli.main import main

__all__ = ["main"]
