"""`hydra/launcher=parallel`: a sweep's jobs run several at once, each in its own process with its own devices.

Hydra's basic launcher runs the jobs one after another in this process; joblib's runs them in parallel but puts
every job on the same GPU. This one gives each job `device.count` GPUs of its own through CUDA_VISIBLE_DEVICES
(`hydra.launcher.jobs_per_device` lets jobs share one), or on a CPU a share of the cores (each job's
`trainer.threads=auto`). A job runs exactly as under the basic launcher — Hydra's `run_job` with trainlab's
job wrapper, in a fresh (spawned) process — so its folder, `resume=`, one-line errors and error.txt are the same;
only its console output goes to `<sweep>/.launcher/job-<n>.log` instead of the terminal, which gets one line when a job
starts and one when it ends. Ctrl-C or SIGTERM stops every running job (each saves
interrupted.ckpt, or last.ckpt when the signal finds it past an epoch's last batch) and the sweep continues with
`trainlab train -m resume=<sweep>`; `hydra.launcher.fail_fast=true` starts no new job after the first failure.
The Hydra plugin class is hydra_plugins/trainlab_launcher.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from trainlab.cli.placement import DevicePool, Unplaceable, cpu_jobs_at_once, cpu_share, visible_gpus
from trainlab.core.errors import ConfigError
from trainlab.core.machine import usable_cores
from trainlab.record.sweep import first_line, job_ended, job_outcome, job_saved, note

log = logging.getLogger("trainlab.launcher")

CONSOLE_DIR = ".launcher"  # in the sweep folder: each job's console output (its train.log has the record)


@dataclass
class _Job:
    idx: int
    overrides: list[str]
    device: str                      # cpu | cuda
    count: int                       # GPUs it needs (cuda)
    folder: Path
    config: DictConfig               # its own config, as _plan composed it
    gpus: list[str] = field(default_factory=list)
    process: multiprocessing.Process | None = None
    conn: object = None
    started: float = 0.0
    result: JobReturn | None = None
    outcome: str = ""                # completed | pruned | failed | stopped (by a signal: it continues on resume)


class ParallelLauncher(Launcher):
    def __init__(self, jobs: int | None = None, jobs_per_device: int = 1, fail_fast: bool = False) -> None:
        self.jobs, self.jobs_per_device, self.fail_fast = jobs, int(jobs_per_device), bool(fail_fast)
        self.config: DictConfig | None = None
        self.resuming = False  # `trainlab train -m resume=<this sweep>`
        self.hydra_context = None
        self.task_function = None
        self.command = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        # trainlab's task function is the `job` method of the command's run (CommandRun in cli/hydra_job): its
        # module is what each job process runs, and a job this launcher cannot place is named among its failures.
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.command = task_function.__self__

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.utils import configure_log, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        jobs = [self._plan(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        resume = OmegaConf.select(self.config, "resume", default=None)
        self.resuming = bool(resume) and Path(str(resume)).expanduser().resolve() == sweep_dir.expanduser().resolve()
        if self.jobs_per_device < 1:
            raise ConfigError(f"hydra.launcher.jobs_per_device must be >= 1 (got {self.jobs_per_device})")
        pool = DevicePool(_gpus(), self.jobs_per_device)
        at_once, why = self._at_once(jobs, pool)
        note(sweep_dir, "launcher", {"jobs_at_once": at_once, "why": why, "gpus": pool.gpus})
        log.info("hydra/launcher=parallel: %d job(s), %d at once (%s)%s", len(jobs), at_once, why,
                 f"; each job's console output is in {sweep_dir / CONSOLE_DIR}" if at_once > 1 else "")
        if at_once == 1 and len(pool.gpus) <= 1:
            return self._one_by_one(jobs)  # nothing to split: no process to start per job
        return _Run(self, jobs, pool, at_once, sweep_dir).until_done()

    def launch_open(self, more: Callable[[], tuple[int, list[str]] | None], ended: Callable[[_Job], None],
                    at_once: int | None) -> None:
        """Jobs asked for one at a time as devices free up, with no batch barrier: `more()` gives the next job's
        (number, overrides), or None when there are no more; `ended(job)` is told as each one ends. A search's
        trials run this way (cli.search). `at_once`: the search's n_jobs, or None for this launcher's own rule."""
        from hydra.core.utils import configure_log, setup_globals

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        self.resuming = bool(OmegaConf.select(self.config, "resume", default=None))

        def following() -> _Job | None:
            asked = more()
            return self._plan(*asked) if asked is not None else None

        job = following()
        if job is None:
            return
        pool = DevicePool(_gpus(), self.jobs_per_device)
        rule, why = self._at_once([job], pool, open_ended=True)
        at_once, why = (at_once, "hydra.sweeper.n_jobs") if at_once else (rule, why)
        if at_once < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs must be >= 1 (got {at_once})")
        note(sweep_dir, "launcher", {"jobs_at_once": at_once, "why": why, "gpus": pool.gpus})
        log.info("hydra/launcher=parallel: trials %d at once (%s)%s", at_once, why,
                 f"; each trial's console output is in {sweep_dir / CONSOLE_DIR}" if at_once > 1 else "")
        if at_once == 1 and len(pool.gpus) <= 1:  # one after another in this process
            while job is not None:
                self._one_by_one([job], noun="trial")
                ended(job)
                if job.outcome == "failed" and self.fail_fast:
                    log.info("hydra.launcher.fail_fast=true: trial %d failed, so no new trial starts: continue the "
                             "search with trainlab train -m resume=%s", job.idx, sweep_dir)
                    return
                job = following()
            return
        _Run(self, [job], pool, at_once, sweep_dir, more=following, ended=ended, noun="trial").until_done()

    def _one_by_one(self, jobs: list[_Job], noun: str = "job") -> list[JobReturn]:
        """One job at a time in this process, as Hydra's basic launcher runs them (no process to start per job),
        with the same console lines and fail_fast."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import configure_log, run_job

        from trainlab.record.run_dir import ERROR_TXT

        results = []
        for n, job in enumerate(jobs):
            cfg = job.config  # composed once, by _plan
            HydraConfig.instance().set_config(cfg)
            log.info("%s %d started: %s [%s, in this process]", noun, job.idx,
                     " ".join(job.overrides) or "(no overrides)", job.device)
            started = time.monotonic()
            ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            # The job set logging up for its own train.log: the launcher's lines go to the console again.
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            results.append(ret)
            failed = ret.status != JobStatus.COMPLETED or (job.folder / ERROR_TXT).exists()
            job.result, job.outcome = ret, "failed" if failed else job_outcome(job.folder)
            status = f"failed: {first_line(job.folder / ERROR_TXT)}" if failed else job_ended(job.folder)
            log.info("%s %d %s in %.1f min", noun, job.idx, status, (time.monotonic() - started) / 60)
            if failed and self.fail_fast and n + 1 < len(jobs):
                log.info("hydra.launcher.fail_fast=true: job %d failed, so no new job starts (%d left): continue the "
                         "sweep with trainlab train -m resume=%s", job.idx, len(jobs) - n - 1,
                         self.config.hydra.sweep.dir)
                results += [_returned(j, JobStatus.COMPLETED, None) for j in jobs[n + 1:]]
                break
        return results

    def _plan(self, idx: int, overrides: list[str]) -> _Job:
        """The job's own config, composed once: its devices, its folder and, one at a time, what it runs with."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.num, cfg.hydra.job.id = idx, f"{cfg.hydra.job.name}_{idx}"
        device = str(OmegaConf.select(cfg, "device.type", default="cpu"))
        count = int(OmegaConf.select(cfg, "device.count", default=1) or 1)
        folder = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        return _Job(idx, overrides, device, count, folder, cfg)

    def _at_once(self, jobs: list[_Job], pool: DevicePool, open_ended: bool = False) -> tuple[int, str]:
        gpu_jobs = any(j.device == "cuda" for j in jobs)
        if self.jobs is not None:
            if int(self.jobs) < 1:
                raise ConfigError(f"hydra.launcher.jobs must be >= 1 (got {self.jobs})")
            return int(self.jobs), "hydra.launcher.jobs"
        if gpu_jobs and pool.slots:
            per_job = max(1, min(j.count for j in jobs if j.device == "cuda"))
            return max(1, pool.slots // per_job), (f"one per {per_job} of the {len(pool.gpus)} visible GPU(s)"
                                                    + (f", {self.jobs_per_device} per GPU"
                                                       if self.jobs_per_device > 1 else ""))
        return cpu_jobs_at_once(usable_cores(), None if open_ended else len(jobs))


class _Run:
    """One launch: starts jobs while slots and devices are free, collects them as they end, handles signals."""

    def __init__(self, launcher: ParallelLauncher, jobs: list[_Job], pool: DevicePool, at_once: int, sweep_dir: Path,
                 more: Callable[[], _Job | None] | None = None, ended: Callable[[_Job], None] | None = None,
                 noun: str = "job"):
        self.launcher, self.jobs, self.pool, self.at_once, self.sweep_dir = launcher, jobs, pool, at_once, sweep_dir
        self.waiting, self.running = list(jobs), []
        self.more, self.ended, self.noun = more, ended, noun  # a search: its next trial when a slot frees up
        self.stop_signal: int | None = None
        self.stopped_launching = False

    def until_done(self) -> list[JobReturn]:
        (self.sweep_dir / CONSOLE_DIR).mkdir(parents=True, exist_ok=True)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.waiting or self.running or self.more is not None:
                self._start_what_fits()
                self._collect()
                time.sleep(0.05 if self.running else 0)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            print(f"trainlab: the sweep stopped ({name}): each running job saved a checkpoint to continue from "
                  f"(interrupted.ckpt, or last.ckpt at an epoch's end); continue it with trainlab train -m "
                  f"resume={self.sweep_dir}", file=sys.stderr)
            sys.exit(128 + self.stop_signal)
        return [j.result for j in self.jobs]

    def _on_signal(self, signum, _frame) -> None:
        first = self.stop_signal is None
        self.stop_signal = signum
        if first:
            log.info("%s: stopping %d running job(s); no new job starts", signal.Signals(signum).name,
                     len(self.running))
        for job in self.running:  # the jobs run in their own process groups: only this forwards it
            if job.process.is_alive():
                os.kill(job.process.pid, signum)

    def _start_what_fits(self) -> None:
        while len(self.running) < self.at_once and self.stop_signal is None and not self.stopped_launching:
            if not self.waiting and self.more is not None:
                asked = self.more()
                if asked is None:
                    self.more = None
                else:
                    self.waiting.append(asked)
                    self.jobs.append(asked)
            if not self.waiting:
                break
            job = self.waiting[0]
            if self.launcher.resuming and _finished(job.folder):  # it only says so: no process to start for that
                self.waiting.pop(0)
                job.result = self.launcher._one_by_one([job], noun=self.noun)[0]
                if self.ended is not None:
                    self.ended(job)
                continue
            if job.device == "cuda":
                try:
                    gpus = self.pool.take(job.count)
                except Unplaceable as e:
                    self.waiting.pop(0)
                    self._unplaceable(job, str(e))
                    continue
                if gpus is None:
                    return  # its GPUs are busy: wait for a job to end (keeps the sweep's order)
                job.gpus = gpus
            self.waiting.pop(0)
            self._start(job)
        if self.stop_signal is not None or self.stopped_launching:
            for job in self.waiting:  # never started: a resume of the sweep runs them
                job.result = _returned(job, JobStatus.COMPLETED, None)
            self.waiting, self.more = [], None

    def _start(self, job: _Job) -> None:
        from trainlab.core.runtime import JOB_CORES  # read by the job's runtime: "cores/jobs", its share

        env = {}
        if job.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(job.gpus)
            where = f"GPU {','.join(job.gpus)}"
        else:
            threads = cpu_share(usable_cores(), self.at_once)
            where = f"cpu, {threads} thread{'s' if threads > 1 else ''}"
        env[JOB_CORES] = f"{usable_cores()}/{self.at_once}"
        console = self.sweep_dir / CONSOLE_DIR / f"job-{job.idx}.log"
        context = multiprocessing.get_context("spawn")  # a clean interpreter: its devices apply from its start
        parent, child = context.Pipe(duplex=False)
        spec = _Spawn(job.idx, job.overrides, self.launcher.hydra_context, self.launcher.config, _singleton_state(),
                      env, str(console), self.launcher.command.module)
        job.process = context.Process(target=_run_job, name=f"trainlab-job-{job.idx}", daemon=False,
                                      args=(child, spec))
        job.process.start()
        child.close()
        job.conn, job.started = parent, time.monotonic()
        self.running.append(job)
        log.info("%s %d started: %s [%s]", self.noun, job.idx, " ".join(job.overrides) or "(no overrides)", where)

    def _collect(self) -> None:
        for job in list(self.running):
            if job.process.is_alive() and not job.conn.poll():
                continue
            try:
                message = job.conn.recv() if job.conn.poll() else None
            except EOFError:  # it ended without a result: stopped by a signal, or its process died
                message = None
            job.process.join()
            self.running.remove(job)
            self.pool.give_back(job.gpus)
            minutes = (time.monotonic() - job.started) / 60
            self._finish(job, message, minutes)

    def _finish(self, job: _Job, message: dict | None, minutes: float) -> None:
        from trainlab.record.run_dir import ERROR_TXT

        code = job.process.exitcode
        # (a negative code: the forwarded signal ended a job still starting, before it could save anything)
        stopped = self.stop_signal is not None and code is not None and (code > 128 or code < 0)
        if message is None and not stopped and not (job.folder / ERROR_TXT).exists():
            # The process died without a word (a crash, a kill, out of memory): the job failed, and says why.
            reason = f"its process ended with exit code {code}; its console output is in " \
                     f"{self.sweep_dir / CONSOLE_DIR / f'job-{job.idx}.log'}"
            if job.folder.is_dir():
                (job.folder / ERROR_TXT).write_text(reason + "\n")
        failed = (job.folder / ERROR_TXT).exists() or (message or {}).get("status") == "FAILED"
        value = (message or {}).get("value")
        job.result = _returned(job, JobStatus.COMPLETED, value)
        if stopped:
            status = f"stopped ({job_saved(job.folder)})" if code > 0 else "stopped while starting"
            job.outcome = "stopped"
        elif failed:
            detail = (message or {}).get("error") or first_line(job.folder / ERROR_TXT)
            status, job.outcome = f"failed: {detail}", "failed"
        else:
            status, job.outcome = job_ended(job.folder), job_outcome(job.folder)
        log.info("%s %d %s in %.1f min", self.noun, job.idx, status, minutes)
        if self.ended is not None:
            self.ended(job)
        if failed and not stopped and self.launcher.fail_fast and not self.stopped_launching:
            self.stopped_launching = True
            log.info("hydra.launcher.fail_fast=true: %s %d failed, so no new one starts (%d left; the running ones "
                     "finish): continue the sweep with trainlab train -m resume=%s", self.noun, job.idx,
                     len(self.waiting), self.sweep_dir)

    def _unplaceable(self, job: _Job, why: str) -> None:
        message = f"job {job.idx} ({' '.join(job.overrides)}) {why}"
        print(f"trainlab: error: {message}", file=sys.stderr)
        self.launcher.command.failed.append(str(job.folder))
        job.result = _returned(job, JobStatus.COMPLETED, None)
        if self.launcher.fail_fast:
            self.stopped_launching = True


def _finished(folder: Path) -> bool:
    from trainlab.record.sweep import job_state

    return folder.is_dir() and job_state(folder) == "finished"


def _returned(job: _Job, status: JobStatus, value) -> JobReturn:
    ret = JobReturn(overrides=job.overrides, working_dir=str(job.folder), task_name="train", status=status)
    ret.return_value = value
    return ret


def _gpus() -> list[str]:
    import torch  # the launcher's process only counts them: the jobs are spawned, so nothing carries over

    return visible_gpus(dict(os.environ), torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _singleton_state():
    """Hydra's singletons for the job's process, without OmegaConf's resolvers (closures, which do not pickle):
    the job's process registers them again (Hydra's in setup_globals, trainlab's when hydra_job is imported)."""
    from hydra.core.singleton import Singleton

    state = Singleton.get_state()
    state.pop("omegaconf_resolvers")
    return state


@dataclass
class _Spawn:
    """What a job's process is handed (pickled): its number and overrides, Hydra's context, config and singletons,
    the environment it gets (its devices, its share of the cores), its console file and the command it runs."""
    idx: int
    overrides: list[str]
    hydra_context: object
    config: DictConfig
    singleton_state: dict
    env: dict
    console: str
    command: str
    parent: int = field(default_factory=os.getpid)  # the launcher's process


def _stop_with(parent: int) -> None:
    """Linux: when the launcher's process dies without a word (kill -9, out of memory), its jobs are sent SIGTERM,
    as Ctrl-C would send them: each saves its checkpoint and stops, and a resume continues it. (Elsewhere a job
    runs on to its end.)"""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before this process could ask
        os.kill(os.getpid(), signal.SIGTERM)


def _run_job(conn, spec: _Spawn) -> None:
    """A job's process: Hydra's run_job with trainlab's job wrapper, as the basic launcher would run it here."""
    idx, overrides, hydra_context, config = spec.idx, spec.overrides, spec.hydra_context, spec.config
    singleton_state, env, console, command = spec.singleton_state, spec.env, spec.console, spec.command
    os.setpgrp()  # Ctrl-C reaches the launcher only; it forwards the signal, once, to every job
    _stop_with(spec.parent)
    os.environ.update(env)  # its devices or its share of the cores (set before torch is imported here)
    out = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf.basecontainer import BaseContainer

    from trainlab.cli.hydra_job import CommandRun

    setup_globals()
    Singleton.set_state({**singleton_state, "omegaconf_resolvers": BaseContainer._resolvers})
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.num, sweep_config.hydra.job.id = idx, f"{sweep_config.hydra.job.name}_{idx}"
    HydraConfig.instance().set_config(sweep_config)
    this = CommandRun(command)
    message: dict = {"status": "COMPLETED"}
    try:
        ret = run_job(hydra_context=hydra_context, task_function=this.job,
                      config=sweep_config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        message["status"] = ret.status.name
        if ret.status == JobStatus.COMPLETED:
            value = ret._return_value
            message["value"] = value if isinstance(value, (int, float, type(None))) else None
        else:
            message["error"] = " ".join(f"{type(ret._return_value).__name__}: {ret._return_value}".split())
            print(f"trainlab: error: job {idx}: {message['error']}", file=sys.stderr)
            error_txt = Path(ret.working_dir or ".") / "error.txt"
            if ret.working_dir and not error_txt.exists():
                error_txt.write_text(message["error"] + "\n")
    finally:
        this.release()
    conn.send(message)
    conn.close()
