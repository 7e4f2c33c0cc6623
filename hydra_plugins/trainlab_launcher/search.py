"""`hydra/sweeper=search`: registered with Hydra's config store here; the sweeper is trainlab.cli.search.

Its settings are those of Hydra's Optuna sweeper (params, direction, n_trials, n_jobs, sampler, study_name,
storage), so a search file written for `hydra/sweeper=optuna` runs by changing that one line, plus the pruner.
The samplers keep the group Hydra's sweeper uses (hydra/sweeper/sampler=tpe|random|cmaes), with a subset of its
fields, so either plugin reads the same file."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in sys.modules,
# where dataclasses would look up string annotations.
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035  (OmegaConf reads these in structured configs)

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from trainlab.cli.search import SearchSweeper as _SearchSweeper


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None  # noqa: UP045
    n_startup_trials: int = 10    # random trials before the model of the good ones takes over
    multivariate: bool = False


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None  # noqa: UP045


@dataclass
class CmaEsSamplerConf:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None  # noqa: UP045


@dataclass
class SearchSweeperConf:
    _target_: str = "hydra_plugins.trainlab_launcher.search.SearchSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])  # noqa: UP006
    sampler: Any = MISSING
    direction: Optional[str] = None  # noqa: UP045  # maximize | minimize; null: as checkpoint.mode (max: maximize)
    study_name: str = "trainlab"
    storage: Optional[str] = None  # noqa: UP045  # null: <sweep dir>/optuna.journal; or a journal path, an RDB URL
    n_trials: int = 20               # in all, over every process working on the study
    n_jobs: Optional[int] = None  # noqa: UP045  # trials at once; null: hydra/launcher=parallel's rule
    pruner: str = "median"           # median | percentile | successive_halving | hyperband | none
    pruner_args: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006  # the pruner's own parameters
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006  # key: choice(...) | interval(...) | range(...)


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="search", node=SearchSweeperConf, provider="trainlab")
for name, node in (("tpe", TPESamplerConf), ("random", RandomSamplerConf), ("cmaes", CmaEsSamplerConf)):
    store.store(group="hydra/sweeper/sampler", name=name, node=node, provider="trainlab")


class SearchSweeper(_SearchSweeper):
    """Hydra instantiates plugins only from the hydra_plugins package."""
