"""Everything trainlab does with `torch.distributed`: joining a process group (started by torchrun, or by
trainlab's own elastic launch for `device.count > 1`), wrapping the model in DDP, and the handful of
collectives the training loop calls. With one process every helper is a plain pass-through, so the loop
has no `if distributed` branches.

Launching uses PyTorch's elastic agent (`torch.distributed.launcher.api.elastic_launch`, what torchrun
runs) from inside the already-running Hydra job: the workers get the resolved config as an argument and
never re-run Hydra, so a run (or a sweep job) keeps one directory and one metrics.csv.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainlab.core.errors import ConfigError, RunStopped, TrainlabError
from trainlab.core.runtime import check_hardware

log = logging.getLogger(__name__)

# Environment variables torchrun (and any elastic agent) sets in each worker.
_WORLD_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Group:
    """This process's place in the training group; `world_size == 1` for a plain single-process run."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    nodes: int = 1
    backend: str | None = None
    launcher: str = "single process"   # single process | trainlab (elastic) | torchrun
    _control: Any = None               # a gloo group for host-side agreement (the stop flag) when NCCL trains

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the logs, the record and the checkpoints."""
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.world_size, "nodes": self.nodes, "processes_per_node": self.local_world_size,
                "backend": self.backend, "launcher": self.launcher}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: DDP averages the gradients across ranks during backward."""
        if self.world_size == 1:
            return model
        device_ids = [model_device(model)] if model_device(model).type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one: the ranks must leave the step loop at the same step,
        or the next gradient all-reduce would wait forever for the rank that left."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        return bool(value.item())

    def sum(self, value: float) -> float:
        """A host number summed over the ranks (the images each rank trained on)."""
        if self.world_size == 1:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(total, group=self._control)
        return float(total.item())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Device tensor averaged over the ranks (the logged step loss)."""
        if self.world_size == 1:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def max(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return values
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's copy of a picklable object, on every rank (the epoch row: every rank then takes the
        same best-epoch, early-stopping and scheduler decisions)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's object, in rank order (per-rank state for a mid-epoch checkpoint). Tensors go to the CPU."""
        obj = _to_cpu(obj)
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self._control)
        return out

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's BatchNorm statistics before validation. BatchNorm normalises each rank's
        own shard during training, so the running statistics drift apart between ranks; validation and the
        checkpoint must use the same (rank 0's) model."""
        if self.world_size == 1:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first, the others after it (decoding the image cache once, not N times at once)."""
        if self.world_size > 1 and not self.is_main:
            dist.barrier(group=self._control)
        yield
        if self.world_size > 1 and self.is_main:
            dist.barrier(group=self._control)



SINGLE = Group()


def check_batch(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ConfigError(f"dataset.batch_size={batch_size} is the global batch and must be divisible by the "
                          f"{processes} training processes; pick a multiple of {processes}")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def torchrun_world() -> int | None:
    """The world size when this process was started by torchrun (or another elastic agent), else None."""
    if all(k in os.environ for k in _WORLD_ENV):
        return int(os.environ["WORLD_SIZE"])
    return None


def _join(device_type: str, launcher: str) -> Group:
    """Join the process group described by the torchrun environment variables."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device_type == "cuda":
        check_hardware(device_type, "auto")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"{local_world} processes on this node but only {torch.cuda.device_count()} CUDA "
                              "GPU(s) are visible; start at most one process per GPU")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    # A generous timeout: the other ranks wait at a barrier while rank 0 decodes a new data set's image cache.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    nodes = max(1, world // max(local_world, 1))
    return Group(rank, world, local_rank, local_world, nodes, backend, launcher, control)


def run(fn: Callable, device_type: str, count: int, batch_size: int, *args: Any, **kwargs: Any) -> Any:
    """Call `fn(*args, group=..., **kwargs)` in the right processes:
    - started by torchrun: join its group here;
    - `count == 1`: in this process;
    - `count > 1`: start `count` workers on this machine through torch's elastic agent and wait for them.
    A TrainlabError in a worker comes back here as the same one-line error (rank 0's if it has one)."""
    world = torchrun_world()
    if world is not None:
        if count not in (1, int(os.environ.get("LOCAL_WORLD_SIZE", count))):
            log.warning("device.count=%d is ignored: torchrun started %s processes per node", count,
                        os.environ.get("LOCAL_WORLD_SIZE"))
        group = _join(device_type, "torchrun")
        if not group.is_main:
            quiet_rank(group.rank)
        try:
            return fn(*args, group=group, **kwargs)
        finally:
            dist.destroy_process_group()
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if tasks > 1:
        raise ConfigError(f"this SLURM step runs {tasks} tasks and each would run the whole job: use one task per "
                          "node (hydra.launcher.tasks_per_node=1) with device.count=<GPUs per node>, or torchrun "
                          "for several nodes")
    if count == 1:
        return fn(*args, group=SINGLE, **kwargs)
    _check_devices(device_type, count)
    check_batch(batch_size, count)
    return _launch(fn, device_type, count, args, kwargs)


def _check_devices(device_type: str, count: int) -> None:
    if device_type != "cuda":
        return
    check_hardware(device_type, "auto")
    if count > torch.cuda.device_count():
        raise ConfigError(f"device.count={count} but only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                          f"use device.count<={torch.cuda.device_count()}")


def _launch(fn: Callable, device_type: str, count: int, args: tuple, kwargs: dict) -> Any:
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The agent logs its launch configuration, and every worker's exit with a traceback of its own
    # bookkeeping; a user error is reported once below, and a crash still raises with the worker's traceback.
    for name in ("torch.distributed.launcher.api", "torch.distributed.elastic", "torch.multiprocessing.spawn"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    backend = "nccl" if device_type == "cuda" else "gloo"
    log.info("launching %d training processes (%s backend) through torch's elastic agent", count, backend)
    errors = Path(tempfile.mkdtemp(prefix="trainlab-ranks-"))
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=count, run_id=f"trainlab-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0",  # port 0: the agent picks a free one (torchrun --standalone)
        max_restarts=0, start_method="spawn", monitor_interval=0.1,  # each rank a clean interpreter
        shutdown_timeout=120,  # on a signal, workers get time to finish the step and save interrupted.ckpt
        logs_specs=DefaultLogsSpecs(log_dir=str(errors / "agent")),  # the agent's files go with ours, not left in /tmp
    )
    log_files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    requeue = _RequeueAsTerm()
    try:
        with requeue:
            results = elastic_launch(config, _worker)(fn, device_type, args, kwargs, log_files, str(errors))
    except SignalException as e:  # the agent forwarded the signal; the workers saved what they could
        name = signal.Signals(e.sigval).name
        stopped = _first_error(errors) or RunStopped(f"interrupted by {name}; the training processes saved no "
                                                     "checkpoint this time", 128 + e.sigval)
        if requeue.received and isinstance(stopped, RunStopped):  # the job's own handler then requeues it
            stopped.exit_code = 128 + requeue.received
        raise stopped from None
    except ChildFailedError:
        error = _first_error(errors)
        if error is None:
            raise  # not a user error: torch's own report names the failed rank and its traceback
        raise error from None
    finally:
        shutil.rmtree(errors, ignore_errors=True)
    return results[0]


class _RequeueAsTerm:
    """Under submitit, the requeue signal (USR2) reaches only the job's own process, where the elastic agent runs:
    it becomes a SIGTERM to this process, which the agent forwards to every training process (each finishes its
    step and saves interrupted.ckpt), and the run ends as stopped by USR2, so that the job then hands over to
    submitit's requeue as a single-process job does (cli.hydra_job)."""

    def __init__(self) -> None:
        from trainlab.engine.interrupt import requeue_signal

        self.signum, self.received, self._previous = requeue_signal(), None, None

    def __enter__(self):
        if self.signum and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            self.received = signum
            log.warning("%s: stopping the training processes (they save interrupted.ckpt), then submitit "
                        "requeues this job", signal.Signals(signum).name)
            os.kill(os.getpid(), signal.SIGTERM)  # the agent's own handler forwards it to the workers

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)  # submitit's handler, for the requeue that follows


def _first_error(folder: Path) -> TrainlabError | None:
    """The lowest rank's TrainlabError, rebuilt from the file that rank wrote before exiting."""
    files = sorted(folder.glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if not files:
        return None
    record = json.loads(files[0].read_text())
    if record["type"] == "RunStopped":
        return RunStopped(record["message"], exit_code=record["exit_code"])
    error = TrainlabError(record["message"])
    error.exit_code = record["exit_code"]
    return error


def _worker(fn: Callable, device_type: str, args: tuple, kwargs: dict, log_files: list[str], errors: str) -> Any:
    """One training process started by the elastic agent (a fresh process with the launching process's environment
    and the agent's RANK, WORLD_SIZE, ...: it sets its logging up anew)."""
    rank = int(os.environ["RANK"])
    _setup_worker_logging(rank, log_files)
    try:
        group = _join(device_type, "trainlab (elastic)")
        try:
            return fn(*args, group=group, **kwargs)
        finally:
            dist.destroy_process_group()
    except TrainlabError as e:
        # Exit non-zero (not return) so the agent stops the other ranks instead of letting them wait.
        record = {"type": type(e).__name__, "message": str(e), "exit_code": e.exit_code}
        Path(errors, f"rank{rank}.json").write_text(json.dumps(record))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)  # torch.multiprocessing treats a KeyboardInterrupt as success otherwise


def _setup_worker_logging(rank: int, log_files: list[str]) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        root.addHandler(console)
        for name in log_files:  # the Hydra job's log file: rank 0 appends to it
            handler = logging.FileHandler(name, mode="a")
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
            root.addHandler(handler)
        root.setLevel(logging.INFO)
    else:
        quiet_rank(rank)


def quiet_rank(rank: int) -> None:
    """Ranks other than 0 print warnings and errors only (prefixed with their rank) and no progress bar."""
    from trainlab.core import progress

    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(f"[%(asctime)s][rank {rank}] %(message)s", datefmt="%H:%M:%S"))
    root.setLevel(logging.WARNING)
    logging.getLogger("trainlab").setLevel(logging.WARNING)
    progress.silence()
