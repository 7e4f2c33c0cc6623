"""The execution choices of a run: device, precision, memory format, threads and seeding.

"auto" settings are resolved here, once, and every choice is logged and recorded in the run
(no silent fallbacks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from trainlab.core.errors import ConfigError
from trainlab.core.machine import usable_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What a run executes with. Frozen: resolve_runtime settles the plain choices, engine.build the measured and
    data-dependent ones (`settled`) before the model is built; nothing changes it afterwards."""
    device: str
    precision: str          # 32 | bf16-mixed | 16-mixed
    channels_last: bool
    threads: int
    compile: bool
    reasons: dict
    autotune: dict | None = None   # what trainer.autotune measured (trainlab.engine.autotune.Decision), if it ran
    data_on_device: bool = False   # batches gathered from arrays on the device (set with the data: engine.build)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def autocast(self):
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
        return torch.autocast(device_type=self.torch_device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 and fp32 don't.
        return torch.amp.GradScaler(self.torch_device.type, enabled=self.precision == "16-mixed")

    def to_dict(self) -> dict:
        return asdict(self)

    def settled(self, why: dict[str, str], **choices) -> Runtime:
        """This runtime with `choices` made (precision=..., data_on_device=...) and their reasons recorded."""
        return replace(self, **choices, reasons=self.reasons | why)


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_hardware(device_type: str, precision: str) -> None:
    """Refuse, before anything is written, what this machine cannot run."""
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA GPU is visible to PyTorch; use device=cpu "
                          "(device.type=cpu for a checkpoint's run)")
    if precision == "16-mixed" and device_type == "cpu":
        raise ConfigError("trainer.precision=16-mixed needs a GPU; on a CPU use bf16-mixed or 32")


JOB_CORES = "TRAINLAB_JOB_CORES"  # set by the parallel launcher (cli/launcher.py) for each job it starts


def resolve_runtime(device_type: str, precision: str, channels_last: str, threads: str, compile: str,
                    place: tuple[int, int] = (0, 1), autotune: bool = False) -> Runtime:
    """`place`: this process's (local rank, training processes on its machine): which GPU it drives, how many cores
    it may use. `autotune`: an `auto` precision or memory format is
    measured later (`trainlab.engine.build.tune_runtime`); what is set here is only the stand-in until then.
    `compile`: auto | true | false (`auto` is a measured candidate on a GPU, off on a CPU)."""
    reasons = {}
    local_rank, processes_per_node = place
    check_hardware(device_type, precision)
    if device_type == "cuda":
        device = f"cuda:{local_rank}"
        has_bf16 = torch.cuda.is_bf16_supported()
        reasons["device"] = torch.cuda.get_device_name(local_rank)
    else:
        device = "cpu"
        has_bf16 = _cpu_has_bf16()
        reasons["device"] = f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    if precision == "auto" and autotune:
        precision = "32"
        reasons["precision"] = "auto: measured before training (trainer.autotune=true)"
    elif precision == "auto":
        precision = "bf16-mixed" if has_bf16 else "32"
        reasons["precision"] = ("auto: the hardware has native bf16, so bf16 autocast" if has_bf16
                                else "auto: no native bf16 on this hardware, so fp32")
    else:
        reasons["precision"] = "set by trainer.precision"
    if str(channels_last).lower() == "auto" and autotune:
        use_cl = False
        reasons["channels_last"] = "auto: measured before training (trainer.autotune=true)"
    elif str(channels_last).lower() == "auto":
        # channels_last speeds up convolutions with both oneDNN (CPU) and cuDNN (GPU) in mixed precision and fp32.
        use_cl = True
        reasons["channels_last"] = "auto: channels_last memory format for faster convolutions"
    else:
        use_cl = str(channels_last).lower() == "true"
        reasons["channels_last"] = "set by trainer.channels_last"
    share = os.environ.get(JOB_CORES)  # hydra/launcher=parallel: this job's share of the cores ("cores/jobs")
    if threads == "auto" and share:
        cores, jobs = (int(v) for v in share.split("/"))
        n_threads = max(1, cores // jobs // processes_per_node)
        torch.set_num_threads(n_threads)
        reasons["threads"] = (f"auto: hydra/launcher=parallel runs {jobs} jobs at once on {cores} cores"
                              + (f", each with {processes_per_node} processes" if processes_per_node > 1 else ""))
    elif threads == "auto" and processes_per_node > 1:
        # N processes with all cores each would oversubscribe the machine (torchrun sets 1 thread instead).
        n_threads = max(1, usable_cores() // processes_per_node)
        torch.set_num_threads(n_threads)
        reasons["threads"] = f"auto: {usable_cores()} cores shared by {processes_per_node} processes on this machine"
    elif threads == "auto":
        n_threads = torch.get_num_threads()
        reasons["threads"] = f"auto: torch's default of {n_threads} compute threads"
    else:
        n_threads = int(threads)
        torch.set_num_threads(n_threads)
        reasons["threads"] = "set by trainer.threads"
    compile = str(compile).lower()
    if compile == "auto" and device_type == "cuda" and autotune:
        use_compile = False
        reasons["compile"] = "auto: measured before training (trainer.autotune=true)"
    elif compile == "auto":
        use_compile = False
        reasons["compile"] = ("auto: not measured (trainer.autotune=false), so off" if device_type == "cuda" else
                              "auto: off on a CPU, where compiling ResNet-18 took ~50 s and made no measured "
                              "difference (README, Performance); trainer.compile=true forces it")
    else:
        use_compile = compile == "true"
        reasons["compile"] = "set by trainer.compile"
    if device_type == "cuda":
        # Training batches all have one shape, so cuDNN's search for the fastest convolution algorithm pays off
        # after the first step (the short last val batch costs one more search).
        torch.backends.cudnn.benchmark = True
        reasons["cudnn_benchmark"] = "on: fixed input shapes"
    runtime = Runtime(device, precision, use_cl, n_threads, use_compile, reasons)
    for key in ("device", "precision", "channels_last", "threads", "compile"):
        if not reasons[key].startswith("auto: measured"):  # those are logged once measured
            log.info("runtime: %s = %s (%s)", key, getattr(runtime, key), reasons[key])
    return runtime


def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch's randomness (shuffle, augmentation, dropout) depends only on (seed, epoch), so a run
    restarted at an epoch boundary repeats exactly; mid-epoch the generator states are checkpointed."""
    return seed * 1_000_003 + epoch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
