"""`hydra/launcher=parallel`: registered with Hydra's config store here; the launcher is trainlab.cli.launcher."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in sys.modules,
# where dataclasses would look up string annotations.
from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore

from trainlab.cli.launcher import ParallelLauncher as _ParallelLauncher


@dataclass
class ParallelLauncherConf:
    _target_: str = "hydra_plugins.trainlab_launcher.parallel.ParallelLauncher"
    jobs: Optional[int] = None  # noqa: UP045  # at once; null: one per visible GPU (device.count), on a CPU measured
    jobs_per_device: int = 1      # jobs that may share one GPU
    fail_fast: bool = False       # true: no new job starts after the first failure


ConfigStore.instance().store(group="hydra/launcher", name="parallel", node=ParallelLauncherConf, provider="trainlab")


class ParallelLauncher(_ParallelLauncher):
    """Hydra instantiates plugins only from the hydra_plugins package."""
