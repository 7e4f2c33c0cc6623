"""Which devices each job of a parallel sweep gets (`hydra/launcher=parallel`): plain bookkeeping, no torch, so
it is tested with device lists this machine does not have.

A GPU job takes `device.count` GPUs of the visible ones, each shared by at most `jobs_per_device` jobs (1: a GPU is
one job's); a CPU job takes a share of the cores. `DevicePool.take` returns None while the devices a job needs are
busy, and `Unplaceable` when they could never be had, so that job fails with one line and the others run.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Unplaceable(Exception):
    """The job needs more devices than the machine shows: it can never start."""


@dataclass
class DevicePool:
    gpus: list[str]              # the visible GPUs, as CUDA_VISIBLE_DEVICES names them
    jobs_per_device: int = 1     # how many jobs may share one GPU
    _load: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.jobs_per_device < 1:
            raise ValueError(f"hydra.launcher.jobs_per_device must be >= 1 (got {self.jobs_per_device})")
        self._load = {gpu: 0 for gpu in self.gpus}

    def take(self, count: int) -> list[str] | None:
        """`count` GPUs for one job, the least loaded first (then in visible order), or None while they are busy."""
        if count > len(self.gpus):
            raise Unplaceable(f"needs {count} GPU(s) (device.count={count}) but {len(self.gpus)} "
                              f"{'is' if len(self.gpus) == 1 else 'are'} visible: lower device.count or run it "
                              "where more GPUs are")
        free = sorted((load, i, gpu) for i, (gpu, load) in enumerate(self._load.items())
                      if load < self.jobs_per_device)
        if len(free) < count:
            return None
        chosen = [gpu for _, _, gpu in free[:count]]
        for gpu in chosen:
            self._load[gpu] += 1
        return chosen

    def give_back(self, gpus: list[str]) -> None:
        for gpu in gpus:
            self._load[gpu] -= 1

    @property
    def slots(self) -> int:
        """Jobs of one GPU that can run at once: the default of hydra.launcher.jobs on a GPU machine."""
        return len(self.gpus) * self.jobs_per_device


def visible_gpus(environ: dict, count: int) -> list[str]:
    """The GPUs a job may be given, named as CUDA_VISIBLE_DEVICES names them: the launcher's own
    CUDA_VISIBLE_DEVICES when it is set (a job only ever sees a subset of what trainlab was given), else 0..count-1."""
    if count <= 0:
        return []
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"][:count]
    return [str(i) for i in range(count)]


def cpu_share(cores: int, jobs: int) -> int:
    """Threads of each of `jobs` CPU jobs running at once on `cores` cores."""
    return max(1, cores // max(1, jobs))


# torch's CPU kernels for the models of a typical sweep use up to about this many threads well; past it, another
# job gains more than more threads for one (a rule of thumb: hydra.launcher.jobs=N sets it for a sweep).
THREADS_PER_CPU_JOB = 8


def cpu_jobs_at_once(cores: int, jobs: int | None) -> tuple[int, str]:
    """(jobs at once, why) for a sweep of `jobs` CPU jobs on `cores` cores: one per THREADS_PER_CPU_JOB cores, so a
    laptop or a small VM runs them one after another (in the launcher's own process) and a many-core server several
    at once, each with its share of the cores."""
    at_once = max(1, min(jobs or cores, cores // THREADS_PER_CPU_JOB))  # jobs None: as many as come (a search)
    return at_once, (f"{cores} cores, one job per {THREADS_PER_CPU_JOB}; hydra.launcher.jobs=N to choose")
