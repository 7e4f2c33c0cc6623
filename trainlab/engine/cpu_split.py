"""How many of a sweep's jobs run at once on a CPU by default (`hydra/launcher=parallel`, `hydra.launcher.jobs`
unset): measured for the sweep's model on this machine, not assumed.

Whether N jobs with cores/N threads each train more images per second in all than one job with every core depends
on the machine (cores, memory bandwidth, caches) and on the model (a small model leaves threads idle, a big one
keeps them busy); nothing read from the hardware predicts it. So N processes, each stepping its own copy of the
sweep's model with its share of the threads, are timed side by side for N = 2, 4, ... (up to the cores, the jobs
and MAX_SPLIT), and so is how long such a process takes to start (a job run at once with others starts its own
process, forked from the forkserver that imported torch and trainlab once: trainlab.engine.processes); one job at
a time runs in the launcher's process, so N = 1 is timed there, with nothing to start. The sweep's expected time
is then worked out for each N: with the job's images per run where its config says them (`dataset.train_size` or
`trainer.limit_train_batches`, times `trainer.epochs`), or, for jobs of unknown length, from the images/s alone;
N at once is chosen only when it comes out more than GAIN faster than one at a time.
The timings are cached per machine, model and input in autotune's cache file, so a sweep pays for them once.

Timed in fp32, contiguous memory, plain SGD (as autotune's steps): the ranking between splits is what is wanted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import queue
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from trainlab.engine import autotune, processes

log = logging.getLogger(__name__)

GAIN = 0.10        # N at once must train this much faster than one job, for the processes' start-up to pay
MAX_SPLIT = 8      # the most jobs at once the measurement tries (and so the default chooses)
SECONDS = 2.0      # each process's timed stretch (at least MIN_STEPS steps)
MIN_STEPS = 2
BATCH = 64         # at most this batch: enough for threads to have work, short steps on one core
TIMEOUT = 300.0    # a measurement that has not ended by then is abandoned (and said so)
CACHE_KIND = "cpu_split-forkserver-2"  # (the start-up timed when jobs were spawned was ~7 s: not what it is now)


@dataclass(frozen=True)
class Workload:
    """The sweep's model (its `model` config, weights left out) on batches of `batch` inputs of `input_shape`."""
    model: dict
    input_shape: tuple[int, int, int]
    num_classes: int
    batch: int

    @property
    def label(self) -> str:
        name = self.model.get("arch") or str(self.model.get("_target_", "the model")).rsplit(".", 1)[-1]
        return f"{name} on {'x'.join(map(str, self.input_shape))} inputs, batch {self.batch}"


@dataclass
class Timing:
    """What was measured for one workload: training images/s of n jobs at once (all of them together), and the
    seconds a job's process took to start and take its first step when n started together (from a ready forkserver),
    and the seconds that server took to get ready (once per sweep: it imports torch and trainlab)."""
    rates: dict[int, float]
    startup: dict[int, float]
    server: float = 0.0
    cached: bool = False
    seconds: float = 0.0       # what measuring took (0 when cached)


@dataclass
class Choice:
    jobs: int                  # jobs at once
    timing: Timing
    cores: int
    sweep_s: dict[int, float] | None  # n -> the sweep's expected seconds (None: the jobs' length is unknown)

    def reason(self, what: str) -> str:
        """Why `jobs` at once, for the launcher's log line and sweep.json: what was measured and the rule."""
        t = self.timing
        each = {n: threads(self.cores, n) for n in t.rates}
        rates = "; ".join(f"{n} job{'s' if n > 1 else ''} x {each[n]} thread{'s' if each[n] > 1 else ''} {ips:.0f}"
                          for n, ips in sorted(t.rates.items()))
        how = "cached for this machine and model" if t.cached else f"measured in {t.seconds:.0f} s"
        if self.sweep_s:
            best = min(self.sweep_s, key=self.sweep_s.get)
            expected = ", ".join(f"{n} at once {s:.0f} s" for n, s in sorted(self.sweep_s.items()))
            if self.jobs > 1:
                rule = f"expected sweep time {expected}: {self.jobs} at once is fastest"
            elif best > 1:
                rule = f"expected sweep time {expected}: {best} at once would gain under {GAIN:.0%}"
            else:
                rule = (f"expected sweep time {expected} (jobs at once wait ~{t.server:.0f} s for their process "
                        f"server, then each starts in ~{max(t.startup.values()):.0f} s; one at a time runs in this "
                        "process)")
        else:
            best = max(t.rates, key=t.rates.get)
            gain = t.rates[best] / t.rates[1] - 1
            rule = (f"{self.jobs} at once trained {gain:.0%} faster (the jobs' length is not in their config, so the "
                    "processes' start-up is taken as paid)" if self.jobs > 1 else
                    f"{best} at once trained only {gain:.0%} faster, under {GAIN:.0%}" if best > 1 else
                    "splitting the cores trained slower")
        return (f"measured on this CPU for {what}, training images/s: {rates}; {rule} ({how}; "
                "hydra.launcher.jobs=N sets it)")


def workload(cfg) -> tuple[Workload | None, int | None]:
    """What a job of the sweep trains, from its config: its model (weights left out: timing needs the
    architecture) on `dataset.image_size` inputs in batches of `dataset.batch_size`, and the images it trains on in
    all where the config says (None: unknown). (None, None) where the config does not resolve: that job then fails
    by itself, with its own message. The classifier is a small part of a step, so a data set that does not name its
    classes is timed with 10."""
    from omegaconf import OmegaConf

    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        model.pop("weights", None)
        size, batch = int(cfg.dataset.image_size), int(cfg.dataset.batch_size)
        work = Workload(model, (int(model.get("in_channels") or 3), size, size),
                        int(OmegaConf.select(cfg, "dataset.num_classes", default=None) or 10), batch)
        per_epoch = [int(v) for v in (OmegaConf.select(cfg, "dataset.train_size", default=None),) if v]
        limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=None)
        per_epoch += [int(limit) * batch] if limit else []
        return work, (min(per_epoch) * int(cfg.trainer.epochs) if per_epoch else None)
    except Exception:  # noqa: BLE001 - any unresolvable or missing key: the job reports it
        return None, None


def jobs_at_once(works: list[tuple[Workload, int | None]], cores: int, jobs: int) -> tuple[int, str]:
    """Jobs at once for a sweep of `jobs` jobs on `cores` cores, given what each trains ((workload, images) per job),
    and why (the launcher's log line and sweep.json). A sweep of several models takes the fewest jobs at once any of
    them chose, so that the split pays for each; a measurement that fails is said, and the sweep runs one job at a
    time."""
    unique: dict[str, tuple[Workload, int | None]] = {}
    for work, images in works:
        unique.setdefault(json.dumps(asdict(work), sort_keys=True, default=str), (work, images))
    if jobs < 2 or cores < 2 or not unique:
        return 1, "one job or one core: nothing to split"
    choices = []
    for work, images in unique.values():
        try:
            choice = choose(work, cores, jobs, images)
        except (RuntimeError, OSError, EOFError, queue.Empty) as e:
            why = str(e) or type(e).__name__
            log.warning("hydra/launcher=parallel: could not measure how many jobs at once train fastest (%s): one "
                        "at a time; hydra.launcher.jobs=N sets it", why)
            return 1, f"the measurement failed ({why}), so one at a time"
        choices.append((choice.jobs, choice.reason(work.label)))
    return min(n for n, _ in choices), "; ".join(why for _, why in choices)


def threads(cores: int, jobs: int) -> int:
    """Threads of each of `jobs` jobs running at once on `cores` cores; one job at a time runs in the launcher's
    process, with its threads (torch's default, or OMP_NUM_THREADS)."""
    import torch

    return torch.get_num_threads() if jobs == 1 else max(1, cores // jobs)


def splits(cores: int, jobs: int) -> list[int]:
    """The numbers of jobs at once worth timing: 1, 2, 4, ... up to the cores, the sweep's jobs and MAX_SPLIT."""
    found, n = [1], 2
    while n <= min(cores, jobs, MAX_SPLIT):
        found.append(n)
        n *= 2
    return found


def choose(work: Workload, cores: int, jobs: int, images: int | None = None,
           measure: Callable[[Workload, int, int], tuple[float, float, float]] | None = None) -> Choice:
    """How many of `jobs` jobs, each training on `images` images in all (None: unknown), to run at once, from the
    cached timing for this machine and workload or a fresh one. `measure(work, n, cores)` -> (images/s of n jobs
    at once, seconds for their processes to start, seconds their process server took to get ready first: 0 once
    it is), injectable (tests give it made-up numbers)."""
    options = splits(cores, jobs)
    if len(options) == 1:
        return Choice(1, Timing({1: 0.0}, {1: 0.0}), cores, None)
    timing = measured(Workload(work.model, tuple(work.input_shape), work.num_classes, min(work.batch, BATCH)),
                      cores, options, measure or measure_split)
    sweep_s = expected_seconds(timing, jobs, images) if images else None
    return Choice(pick(timing.rates, sweep_s), timing, cores, sweep_s)


def measured(work: Workload, cores: int, options: list[int],
             measure: Callable[[Workload, int, int], tuple[float, float, float]]) -> Timing:
    """The timing of `work` for each number of jobs at once in `options`: from the cache, or measured (and cached).
    Stops at the first split slower than the one before: splitting the cores further will not turn faster."""
    key = _key(work, cores, options)
    entry = autotune.read_cache().get(key)
    if isinstance(entry, dict) and isinstance(entry.get("rates"), dict) and isinstance(entry.get("startup"), dict):
        rates = {int(n): float(v) for n, v in entry["rates"].items()}
        startup = {int(n): float(v) for n, v in entry["startup"].items()}
        if 1 in rates and set(rates) == set(startup):
            return Timing(rates, startup, float(entry.get("server", 0.0)), cached=True)
    log.info("hydra/launcher=parallel: timing %s with 1 to %d jobs at once on %d cores, to run the sweep's jobs "
             "as fast as this CPU allows (once for this machine and model; hydra.launcher.jobs=N skips it)",
             work.label, options[-1], cores)
    start = time.perf_counter()
    rates, startup, server = {}, {}, 0.0
    for n in options:
        rates[n], startup[n], ready = measure(work, n, cores)
        server = max(server, ready)
        if n > 1 and rates[n] < rates[n // 2]:
            break
    timing = Timing({n: round(v, 1) for n, v in rates.items()}, {n: round(v, 1) for n, v in startup.items()},
                    round(server, 1), seconds=time.perf_counter() - start)
    autotune.write_cache(key, {"rates": timing.rates, "startup": timing.startup, "server": timing.server,
                               "machine": autotune.machine(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return timing


def expected_seconds(timing: Timing, jobs: int, images: int) -> dict[int, float]:
    """The sweep's expected seconds for each number of jobs at once n: one at a time trains each job at the rate of
    one in this process (nothing to start); n at once wait once for their process server to be ready, then run
    ceil(jobs / n) rounds, each starting n processes and training at n's rate shared between them."""
    found = {1: jobs * images / timing.rates[1]}
    for n, rate in timing.rates.items():
        if n > 1:
            found[n] = timing.server + math.ceil(jobs / n) * (timing.startup[n] + images * n / rate)
    return {n: round(s, 1) for n, s in found.items()}


def pick(rates: dict[int, float], sweep_s: dict[int, float] | None = None) -> int:
    """The fastest number of jobs at once if it beats one at a time by more than GAIN, else 1: by the sweep's
    expected seconds where known, else by images/s."""
    if sweep_s:
        best = min(sweep_s, key=sweep_s.get)
        return best if best > 1 and sweep_s[best] * (1 + GAIN) < sweep_s[1] else 1
    best = max(rates, key=rates.get)
    return best if best > 1 and rates[best] > rates.get(1, 0.0) * (1 + GAIN) else 1


def _key(work: Workload, cores: int, options: list[int]) -> str:
    described = {"kind": CACHE_KIND, "machine": autotune.machine(), "cores": cores, "splits": options,
                 **asdict(work), "input_shape": list(work.input_shape)}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:24]


def measure_split(work: Workload, n: int, cores: int) -> tuple[float, float, float]:
    """Training images/s of n processes stepping side by side, each with its share of the threads, the seconds
    they took to start (forked from the ready server, each builds its model and takes a first step; they wait for
    each other, then each times its steps for SECONDS), and the seconds the server took to get ready first."""
    if n == 1:  # one job at a time runs in the launcher's process: timed here, with nothing to start
        return _steps(work, threads(cores, 1))[0], 0.0, 0.0
    context = processes.context(cuda=False)  # the launcher's jobs start the same way
    before = time.perf_counter()
    processes.wait_ready()  # the server's imports: paid once per sweep, not by each job's start
    server = time.perf_counter() - before
    ready = context.Barrier(n)
    results = context.Queue()
    started = time.time()  # (wall clock: compared with the processes' own)
    env = processes.environment()
    timers = [context.Process(target=_step_side_by_side, args=(work, threads(cores, n), started, ready, results, env),
                              name=f"trainlab-split-{n}-{i}", daemon=True) for i in range(n)]
    for p in timers:
        p.start()
    rates, startups, deadline = [], [], time.monotonic() + TIMEOUT
    try:
        while len(rates) < n:
            try:
                outcome = results.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in timers if p.exitcode not in (None, 0)]
                if dead:  # it ended without a word (killed, out of memory): the others would wait for it
                    raise RuntimeError(f"a timing process ended with exit code {dead[0].exitcode}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the timing processes took over {TIMEOUT:.0f} s") from None
                continue
            if isinstance(outcome, str):
                raise RuntimeError(outcome)
            rates.append(outcome[0])
            startups.append(outcome[1])
    finally:
        for p in timers:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return sum(rates), max(startups), server


def _step_side_by_side(work: Workload, n_threads: int, started: float, ready, results, env: dict) -> None:
    """One of the processes measure_split starts: its model's training steps on its share of the threads."""
    processes.adopt(env)
    try:
        import trainlab.engine.fit  # noqa: F401 - what a job's process imports (data, metrics, record): timed too

        rate, first_step_done = _steps(work, n_threads, ready)
        results.put((rate, first_step_done - started))
    except Exception as e:  # noqa: BLE001 - said by the launcher, which then runs one job at a time
        ready.abort()  # the others stop waiting for this one
        results.put(f"{type(e).__name__}: {e}")


def _steps(work: Workload, n_threads: int, ready=None) -> tuple[float, float]:
    """Training images/s of a copy of the work's model on `n_threads` threads (autotune's timed steps, fp32, for at
    least SECONDS), and when (time.time()) its warm-up step was done; `ready`: the barrier the processes timed side by
    side wait at. This process's thread count and random streams are left as they were."""
    import torch
    from omegaconf import OmegaConf

    from trainlab.engine.build import architecture

    warmed_at = []

    def warmed() -> None:
        warmed_at.append(time.time())
        if ready is not None:
            ready.wait(timeout=TIMEOUT)

    def make_model() -> torch.nn.Module:
        return architecture(OmegaConf.create({"model": work.model}), work.num_classes, work.input_shape[0],
                            pretrained=False)

    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            timed = autotune.Workload(work.input_shape, work.num_classes, work.batch, steps=MIN_STEPS, warmup=1,
                                      seconds=SECONDS)
            rate = autotune.measure_step(make_model, autotune.Candidate("32", False), torch.device("cpu"), timed,
                                         warmed=warmed)
        return rate, warmed_at[0]
    finally:
        torch.set_num_threads(before)
