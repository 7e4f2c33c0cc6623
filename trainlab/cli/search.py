"""`hydra/sweeper=search`: a hyper-parameter search that keeps every device busy and stops bad trials early.

Configured like Hydra's Optuna sweeper (`params:` in Hydra's override syntax, direction, n_trials, n_jobs, sampler,
study_name, storage) plus `pruner`/`pruner_args`. Unlike it, trials are not run in batches: through
hydra/launcher=parallel's device placement up to `n_jobs` run at once, and when one ends its value is told to the
study and the next trial starts on the freed device at once. Each trial reports its monitored metric after every
epoch (engine.fit, through record.study.TrialReport), and the pruner may stop it there: it keeps its folder,
checkpoints and record, with `stopped: pruned`.

The study is an ordinary Optuna study (record.study), in the sweep folder by default. Several processes may work
on one: each one that asks for a trial does so under a lock in the sweep folder and counts every trial of the study
first, so `n_trials` is reached once in all; each holds a lock of its own for as long as it lives, so a trial whose
process died (kill -9, a node lost) is known as such and the next `trainlab train -m resume=<sweep>` continues it
from its checkpoint, while trials other live processes run are left to them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from trainlab.core.errors import ConfigError
from trainlab.core.fs import FileLock
from trainlab.record import study as studies

log = logging.getLogger("trainlab.search")

SEARCH = "hydra_plugins.trainlab_launcher.search.SearchSweeper"  # hydra/sweeper=search's _target_


def search_space(params: dict | None, arguments: list[str]) -> tuple[dict, dict[str, str]]:
    """(distributions, fixed values) of the search: `params` (key: Hydra's override syntax) and the command line's
    own overrides, read as Hydra's Optuna sweeper reads them — choice(...) and range(..., shuffle) are categorical,
    range(a, b, step) is a stepped int or float (b included, as there), interval(a, b) a uniform one, and
    tag(log, interval(a, b)) a log-uniform one (ints when both ends are ints)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from hydra.errors import HydraException

    distributions = studies.optuna().distributions
    space, fixed = {}, {}
    overrides = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as e:
            why = " ".join(str(e).split()).split(" See https:")[0]
            raise ConfigError(f"cannot read {text!r} of the search space ({why}): write it in Hydra's syntax, e.g. "
                              "optimizer.lr: tag(log, interval(0.0001, 0.1))") from None
    for override in parsed:
        key, value = override.get_key_element(), override.value()
        if not override.is_sweep_override():
            fixed[key] = override.get_value_element_as_str()
        elif override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
            space[key] = distributions.CategoricalDistribution(
                list(override.sweep_iterator(transformer=Transformer.encode)))
        elif override.is_range_sweep():
            if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
                space[key] = distributions.FloatDistribution(value.start, value.stop, step=value.step)
            else:
                space[key] = distributions.IntDistribution(int(value.start), int(value.stop), step=int(value.step))
        elif override.is_interval_sweep():
            ints = isinstance(value.start, int) and isinstance(value.end, int)
            kind = distributions.IntDistribution if ints else distributions.FloatDistribution
            space[key] = kind(value.start, value.end, log="log" in value.tags)
        else:
            raise ConfigError(f"{key}={override.get_value_element_as_str()} is not a search space: use choice(...), "
                              "range(...), interval(...) or tag(log, interval(...))")
    for key in fixed:
        space.pop(key, None)  # a fixed value given on the command line wins over the file's search space
    return space, fixed


def check(cfg: DictConfig, arguments: list[str]) -> None:
    """For hydra/sweeper=search: its own settings and its space (`params` and the command line's task overrides,
    `arguments`), before anything is written (cli.compose's preflight): one line each."""
    sweeper = OmegaConf.select(cfg, "hydra.sweeper")
    if OmegaConf.select(cfg, "hydra.sweeper._target_", default="") != SEARCH:
        return
    studies.optuna()
    if OmegaConf.select(cfg, "hydra.launcher._target_", default="") != \
            "hydra_plugins.trainlab_launcher.parallel.ParallelLauncher":
        raise ConfigError("hydra/sweeper=search runs its trials through hydra/launcher=parallel (it places each "
                          "trial on a free device as one ends): add hydra/launcher=parallel")
    if int(sweeper.n_trials) < 1:
        raise ConfigError(f"hydra.sweeper.n_trials must be >= 1 (got {sweeper.n_trials})")
    if sweeper.n_jobs is not None and int(sweeper.n_jobs) < 1:
        raise ConfigError(f"hydra.sweeper.n_jobs must be >= 1 or null (got {sweeper.n_jobs})")
    if sweeper.direction not in (None, "maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction must be maximize, minimize or null (as checkpoint.mode) "
                          f"(got {sweeper.direction})")
    studies.make_pruner(sweeper.pruner, OmegaConf.to_container(sweeper.pruner_args))
    space, _ = search_space(OmegaConf.to_container(sweeper.params) if sweeper.params else None, arguments)
    if not space:
        raise ConfigError("the search has nothing to search: give hydra.sweeper.params (e.g. optimizer.lr: "
                          "tag(log, interval(0.0001, 0.1))) or a search space on the command line, e.g. "
                          "'optimizer.lr=interval(0.001,0.1)'")


def trial_for_job(hydra_cfg) -> studies.TrialReport | None:
    """The trial a training job of a search reports to (the job's number is its trial's), or None outside one."""
    sweeper = hydra_cfg.sweeper
    if OmegaConf.select(sweeper, "_target_", default="") != SEARCH:
        return None
    return studies.TrialReport(storage=studies.storage_url(sweeper.storage, Path(hydra_cfg.sweep.dir)),
                               study=str(sweeper.study_name), number=int(hydra_cfg.job.num),
                               pruner=str(sweeper.pruner), pruner_args=OmegaConf.to_container(sweeper.pruner_args))


class SearchSweeper(Sweeper):
    def __init__(self, sampler, direction: str | None, study_name: str, storage: str | None, n_trials: int,
                 n_jobs: int | None, pruner: str, pruner_args: DictConfig, params: DictConfig | None) -> None:
        self.sampler, self.direction, self.study_name, self.storage = sampler, direction, study_name, storage
        self.n_trials, self.n_jobs, self.pruner, self.pruner_args = int(n_trials), n_jobs, pruner, pruner_args
        self.params = OmegaConf.to_container(params) if params else None
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        if not hasattr(self.launcher, "launch_open"):  # cli.launcher.ParallelLauncher: trials one at a time
            raise ConfigError("hydra/sweeper=search runs its trials through hydra/launcher=parallel: add "
                              "hydra/launcher=parallel")

    def sweep(self, arguments: list[str]) -> None:
        Search(self, arguments).run()


class Search:
    """One process's part in a search: asks the study for trials while devices are free, tells it how they ended."""

    def __init__(self, sweeper: SearchSweeper, arguments: list[str]):
        optuna = studies.optuna()
        self.sweeper, self.launcher = sweeper, sweeper.launcher
        self.sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
        self.space, self.fixed = search_space(sweeper.params, arguments)
        mode = OmegaConf.select(sweeper.config, "checkpoint.mode", default="max")
        self.direction = sweeper.direction or ("maximize" if mode == "max" else "minimize")
        self.url = studies.storage_url(sweeper.storage, self.sweep_dir)
        try:
            self.study = optuna.create_study(study_name=sweeper.study_name, storage=studies.open_storage(self.url),
                                             sampler=sweeper.sampler, direction=self.direction, load_if_exists=True)
        except ValueError as e:  # an RDB URL Optuna cannot open
            raise ConfigError(f"hydra.sweeper.storage={sweeper.storage}: {e}") from None
        self.study.sampler = self._sampler(len(self.study.get_trials(deepcopy=False)))
        if self.study.direction.name.lower() != self.direction:
            raise ConfigError(f"the study {sweeper.study_name!r} in {self.url} is to "
                              f"{self.study.direction.name.lower()}, not {self.direction}: set hydra.sweeper.direction "
                              "to match or name another study")
        workers = self.sweep_dir / studies.WORKERS
        workers.mkdir(parents=True, exist_ok=True)
        self.name = studies.worker_name()
        self.alive = FileLock(workers / f"{self.name}.lock")  # held while this process lives
        self.alive.acquire()
        self.asking = FileLock(workers / "ask.lock")
        self.at_once = sweeper.n_jobs

    def _sampler(self, before: int):
        """The configured sampler, its seed moved on by the trials the study already has: a continued search, or a
        second process joining one, draws new points rather than the first ones again (and still the same ones for
        the same seed and study)."""
        from hydra.utils import instantiate

        conf = OmegaConf.select(self.sweeper.config, "hydra.sweeper.sampler")
        if not before or conf is None or OmegaConf.select(conf, "seed") is None:
            return self.sweeper.sampler
        seed = int(conf.seed) + before
        log.info("search: the study has %d trial(s) already: the sampler's seed is %d + %d = %d", before, conf.seed,
                 before, seed)
        return instantiate(OmegaConf.merge(conf, {"seed": seed}))

    def run(self) -> None:
        log.info("search: study %r in %s, %s, %d trials in all, %s sampler, %s pruner; %d parameter(s): %s",
                 self.study.study_name, self.url, self.direction, self.sweeper.n_trials,
                 type(self.sweeper.sampler).__name__, self.sweeper.pruner, len(self.space), ", ".join(self.space))
        try:
            self.launcher.launch_open(self.next_trial, self.ended, self.at_once)
        finally:
            self.alive.release()
            studies.write_record(self.study, self.sweep_dir)
        self.say_best("search done")

    def next_trial(self) -> tuple[int, list[str]] | None:
        """The next trial to run: one whose process died (it continues), else a new one while the study has fewer
        than n_trials; None when it has them all."""
        optuna = studies.optuna()
        with self.asking:
            trials = self.study.get_trials(deepcopy=False)
            for trial in trials:
                if trial.state == optuna.trial.TrialState.RUNNING and self._orphan(trial):
                    self.study._storage.set_trial_user_attr(trial._trial_id, "worker", self.name)
                    log.info("trial %d: its process is gone; this one continues it", trial.number)
                    return trial.number, self._overrides(trial.params)
            if len(trials) >= self.sweeper.n_trials:
                return None
            trial = self.study.ask(self.space)
            trial.set_user_attr("worker", self.name)
            trial.set_user_attr("folder", str(self.sweep_dir.resolve() / str(trial.number)))
            return trial.number, self._overrides(trial.params)

    def _orphan(self, trial) -> bool:
        worker, folder = trial.user_attrs.get("worker"), trial.user_attrs.get("folder")
        if worker == self.name or folder is None or Path(folder).parent != self.sweep_dir.resolve():
            return False
        lock = FileLock(self.sweep_dir / studies.WORKERS / f"{worker}.lock")
        if not lock.acquire():
            return False  # its process lives (here or on another machine sharing the folder)
        lock.release()
        return True

    def _overrides(self, params: dict) -> list[str]:
        return [f"{k}={v}" for k, v in params.items()] + [f"{k}={v}" for k, v in self.fixed.items()]

    def ended(self, job) -> None:
        """Tell the study how the trial ended; a trial stopped by a signal stays running (a resume continues it)."""
        from hydra.core.utils import JobStatus

        state = studies.optuna().trial.TrialState
        ret = job.result
        value = ret._return_value if ret is not None and ret.status == JobStatus.COMPLETED else None
        if job.outcome == "pruned":
            self.study.tell(job.idx, state=state.PRUNED)
        elif job.outcome == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            self.study.tell(job.idx, float(value))
        elif job.outcome in ("completed", "failed"):
            self.study.tell(job.idx, state=state.FAIL)
        studies.write_record(self.study, self.sweep_dir)
        if job.outcome != "stopped":
            self.say_best("best so far")

    def say_best(self, heading: str) -> None:
        try:
            best = self.study.best_trial
        except ValueError:  # no trial completed yet
            return
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        log.info("%s: trial %d, value %.4f, %s (%s)", heading, best.number, best.value, params,
                 best.user_attrs.get("folder", ""))
