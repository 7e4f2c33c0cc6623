"""`auto` speed switches chosen by measurement: precision and memory format.

Which of fp32 / bf16 autocast (/ fp16 on a GPU) and channels-last is fastest depends on the machine
(native bf16 or not, AMX, cuDNN) and on the model; nothing read from the hardware's flags predicts it
reliably. So when `trainer.precision` or `trainer.channels_last` is `auto` (and `trainer.autotune` is on),
a few optimizer steps of a copy of the run's own model are timed for each candidate, and the fastest is
taken; ties go to the numerically safer choice. The decision is cached per machine, model and input in
the cache folder, so later runs start at once. The run's own model, optimizer and random streams are
never touched: the copy is built and stepped inside a forked RNG.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from trainlab.core.fs import atomic_write_text, cache_home
from trainlab.record.environment import cpu_name

log = logging.getLogger(__name__)

SAFETY = {"32": 0, "bf16-mixed": 1, "16-mixed": 2}  # tie-break order: fp32 first, then bf16
TIE = 0.03             # candidates within 3% of the fastest count as equally fast
BATCH = 16             # a smaller batch than the run's keeps calibration short; the ranking holds
WARMUP_STEPS, STEPS = 1, 2
HOPELESS = 4.0         # on a CPU, a first step this many times slower than the best steady rate so far cannot win
PROBE, PROBE_HOPELESS = 2, 10.0  # ... nor a first step of 2 images at a tenth of it (a small first step is slower)
CACHE_NAME = "autotune.json"


@dataclass(frozen=True)
class Candidate:
    precision: str
    channels_last: bool
    compile: bool = False

    @property
    def label(self) -> str:
        return (f"precision={self.precision} channels_last={str(self.channels_last).lower()}"
                + (" compile=true" if self.compile else ""))


def candidates(device: str, precision: str, channels_last: str) -> list[Candidate]:
    """Every combination the settings leave open (`auto`), the given value where they fix one."""
    if precision == "auto":
        precisions = ["32", "bf16-mixed"] + (["16-mixed"] if device.startswith("cuda") else [])
    else:
        precisions = [precision]
    layouts = [False, True] if str(channels_last).lower() == "auto" else [str(channels_last).lower() == "true"]
    return [Candidate(p, c) for p in precisions for c in layouts]


def pick(speeds: dict[Candidate, float]) -> Candidate:
    """The fastest; among those within TIE of it, the uncompiled (no compile time at start), then the
    numerically safest, then contiguous memory."""
    best = max(speeds.values())
    close = [c for c, ips in speeds.items() if ips >= best * (1 - TIE)]
    return min(close, key=lambda c: (c.compile, SAFETY[c.precision], c.channels_last))


@dataclass(frozen=True)
class Workload:
    """What is timed: batches of `batch` random inputs of `input_shape` with `num_classes` labels, `steps` timed
    steps after `warmup` untimed ones."""
    input_shape: tuple[int, int, int]
    num_classes: int
    batch: int
    steps: int = STEPS
    warmup: int = WARMUP_STEPS


def measure_step(make_model: Callable[[], nn.Module], candidate: Candidate, device: torch.device, work: Workload,
                 best: float = 0.0, make_optimizer: Callable[..., torch.optim.Optimizer] | None = None) -> float:
    """Training images/s of a fresh copy of the model under `candidate` (forward, backward, SGD step) on one
    fixed random batch, over `work.steps` steps after `work.warmup` untimed ones. `best`: the
    fastest rate measured so far; a CPU candidate hopelessly slower than it is not timed further (emulated bf16 runs
    at a tenth of fp32's speed, and would take most of the calibration time). `make_optimizer(params)`: plain SGD if
    None."""
    batch, steps, warmup = work.batch, work.steps, work.warmup
    fmt = torch.channels_last if candidate.channels_last else torch.contiguous_format
    model = make_model().to(device, memory_format=fmt).train()
    optimizer = (make_optimizer or (lambda params: torch.optim.SGD(params, lr=1e-3)))(model.parameters())
    if candidate.compile:  # the first steps compile (forward, then backward): excluded from the rate, logged
        model, warmup = torch.compile(model), warmup + 1
    x = torch.randn(batch, *work.input_shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, work.num_classes, (batch,), device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(candidate.precision)
    criterion = nn.CrossEntropyLoss()
    if device.type == "cpu" and best > 0 and not candidate.compile and batch > PROBE:
        # One step of PROBE images first: an emulated bf16 takes seconds for even one full batch (the calibration's
        # longest part), and a probe this much slower than the fastest rate so far cannot win.
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            criterion(model(x[:PROBE]), y[:PROBE]).backward()
        model.zero_grad(set_to_none=True)
        probe_rate = PROBE / (time.perf_counter() - start)
        if probe_rate * PROBE_HOPELESS < best:
            return probe_rate
    start = first = time.perf_counter()
    step = 0
    while step < warmup + steps:
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
            first_rate = warmup * batch / (start - first)
            if candidate.compile:
                log.info("autotune: compiling %s took %.1f s (not counted in its images/s)", candidate.label,
                         start - first)
            elif device.type == "cpu" and first_rate * HOPELESS < best:
                return first_rate
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    _sync(device)
    return (step - warmup) * batch / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> str:
    """What decides speed besides the model: the processor, its instruction set, threads, torch."""
    if torch.cuda.is_available() and torch.cuda.device_count():
        gpu = torch.cuda.get_device_name(0)
    else:
        gpu = "none"
    return (f"cpu={cpu_name()}; isa={torch.backends.cpu.get_cpu_capability()}; threads={torch.get_num_threads()}; "
            f"gpu={gpu}; torch={torch.__version__}")


def cache_key(device: str, model_config: dict, input_shape: tuple[int, int, int], batch: int,
              options: list[Candidate], try_compile: bool = False) -> str:
    described = {"machine": machine(), "device": device, "model": model_config, "input": list(input_shape),
                 "batch": batch, "candidates": [c.label for c in options]}
    if try_compile:  # (absent otherwise, so the decisions cached before compile was a candidate still apply)
        described["compile"] = True
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:24]


def read_cache() -> dict:
    path = cache_home() / CACHE_NAME
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # no cache yet, or one that is not ours to trust: measure again


def write_cache(key: str, entry: dict) -> None:
    path = cache_home() / CACHE_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_cache()
        data[key] = entry
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    except OSError as e:  # a read-only home: the decision still holds for this run, it is measured next time
        log.warning("autotune: could not cache the decision in %s (%s)", path, e.strerror or e)


@dataclass
class Decision:
    choice: Candidate
    speeds: dict[str, float]   # candidate label -> measured training images/s
    cached: bool
    seconds: float             # what measuring took (0 when cached)

    def to_dict(self) -> dict:
        return {"precision": self.choice.precision, "channels_last": self.choice.channels_last,
                "compile": self.choice.compile,
                "images_per_s": self.speeds, "cached": self.cached, "seconds": round(self.seconds, 2)}


def decide(make_model: Callable[[], nn.Module], model_config: dict, device: torch.device, options: list[Candidate],
           work: Workload, measure: Callable[..., float] | None = None, try_compile: bool = False) -> Decision:
    """The cached decision for this machine, model and input, or a fresh measurement of every option.
    `try_compile`: then also time the fastest option under torch.compile (one compilation, not one per option:
    compiling takes tens of seconds); it wins only by more than TIE. `measure` is injectable (tests make one
    candidate artificially slower)."""
    measure = measure or measure_step
    work = replace(work, batch=min(work.batch, BATCH))
    key = cache_key(str(device), model_config, work.input_shape, work.batch, options, try_compile)
    entry = read_cache().get(key)
    known = options + ([Candidate(o.precision, o.channels_last, True) for o in options] if try_compile else [])
    labels = {c.label: c for c in known}
    if isinstance(entry, dict) and entry.get("choice") in labels:
        return Decision(labels[entry["choice"]], dict(entry.get("images_per_s", {})), True, 0.0)
    start = time.perf_counter()
    speeds: dict[Candidate, float] = {}
    # The copies, their optimizer and random inputs draw from a forked RNG: the run's streams stay as they were.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for option in options:
            speeds[option] = measure(make_model, option, device, work, best=max(speeds.values(), default=0.0))
        if try_compile:
            fastest = pick(speeds)
            compiled = Candidate(fastest.precision, fastest.channels_last, True)
            speeds[compiled] = measure(make_model, compiled, device, work, best=max(speeds.values()))
    choice = pick(speeds)
    decision = Decision(choice, {c.label: round(ips, 1) for c, ips in speeds.items()}, False,
                        time.perf_counter() - start)
    write_cache(key, {"choice": choice.label, "images_per_s": decision.speeds, "machine": machine(),
                       "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return decision
