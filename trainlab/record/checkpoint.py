"""Checkpoint files: plain dicts of tensors and builtins, written atomically, read with weights_only=True,
and found again by `resume=<run_dir | file.ckpt | latest | YYYY-MM-DD>`."""

from __future__ import annotations

import pickle
import random
import re
import shutil
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

import trainlab
from trainlab.core.errors import CheckpointError, TrainlabError
from trainlab.core.fs import atomic_write_with
from trainlab.record.exports import exported_weights
from trainlab.record.run_dir import OUTPUTS_ROOT

FORMAT = "trainlab-checkpoint-v1"
RESUME_NAMES = ("interrupted.ckpt", "last.ckpt")  # a run resumes from the newer of these
EVALUATE_NAMES = ("best.ckpt", "last.ckpt")        # a run is evaluated with the first of these that exists


@dataclass
class TrainingState:
    """What a training checkpoint holds, all plain tensors and builtins so `torch.load(weights_only=True)`
    reads it (saved as a dict with `payload()`; `from_payload` reads one back, ignoring keys it does not know)."""
    epoch: int                    # the last completed epoch
    step: int                     # optimizer steps so far
    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    best: dict                    # BestTracker state: the monitored metric's best value and epoch
    early_stopping: dict
    rng: dict                     # capture_rng(): python, numpy, torch (and cuda) generators
    classes: list[str]
    class_names: list[str]
    normalization: dict           # {"mean": [r, g, b], "std": [r, g, b]} the model's inputs were normalised with
    config: dict                  # the resolved config of the run
    choices: dict                 # the config group options picked (Hydra's runtime.choices)
    history: list[dict]           # the metrics.csv rows so far
    elapsed_s: float
    position: dict | None = None  # a mid-epoch checkpoint only: the epoch and every rank's place in it
    speed: dict | None = None     # the precision and channels_last the run trains with (a resume keeps them)
    ema: dict | None = None       # trainer.ema_decay: the averaged weights (AveragedModel's state dict)

    def payload(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("position", "ema"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_payload(cls, payload: dict[str, Any], path: Path) -> TrainingState:
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(payload) - {"position", "speed", "ema"})
        if missing:
            raise CheckpointError(f"{path} holds no training state to resume ({', '.join(missing[:3])} missing); "
                                  "start a new run from its weights with model.weights=<file.ckpt>")
        return cls(**{k: v for k, v in payload.items() if k in names})


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash at any instant leaves the previous
    file intact and loadable, and a failed write (a full disk, a quota) is one line with the temporary file gone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "trainlab_version": trainlab.__version__, "torch_version": str(torch.__version__),
               **payload}
    try:
        atomic_write_with(path, lambda f: torch.save(payload, f), durable=True)
    except TrainlabError as e:
        raise TrainlabError(f"{e} (the previous checkpoints are intact)") from None


def _atomic_copy(source: Path, target: Path) -> None:
    def copy(dst) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, dst, length=16 << 20)

    try:
        atomic_write_with(target, copy, durable=True)
    except TrainlabError as e:
        raise TrainlabError(f"{e} (the previous checkpoints are intact)") from None


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a trainlab checkpoint without ever unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        text = " ".join(str(e).split())
        reason = "it holds pickled objects other than tensors and builtins" if "Unsupported global" in text \
            else (text[:120] or type(e).__name__)
        raise CheckpointError(f"{path} is not a loadable trainlab checkpoint (truncated or corrupt, or holds "
                              f"pickled code, which trainlab never loads): {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trainlab checkpoint (it lacks the '{FORMAT}' marker)")
    return payload


# What only continuing the training needs (a checkpoint without them still evaluates, predicts and exports).
TRAINING_ONLY = ("optimizer", "scheduler", "scaler", "rng", "early_stopping", "position")


STABLE = "stable.ckpt"  # scheduler=wsd: the last epoch before the decay began


class Checkpointer:
    """last.ckpt every epoch, best.ckpt on improvement, epoch_NNN.ckpt every `every_n_epochs` keeping the
    newest `keep` (0 = all), stable.ckpt before a WSD decay, and interrupted.ckpt for a mid-epoch stop.
    `active=False` (training ranks other than 0, which hold the same weights) writes nothing."""

    def __init__(self, folder: Path, every_n_epochs: int, keep: int, active: bool = True,
                 save_optimizer: bool = True):
        """`save_optimizer=False`: best.ckpt and epoch_NNN.ckpt hold the weights and the record but not the
        optimizer, scheduler and random states (half the size or less); last.ckpt and interrupted.ckpt always
        hold everything, so a resume stays exact."""
        self.folder, self.every_n_epochs, self.keep, self.active = Path(folder), every_n_epochs, keep, active
        self.save_optimizer = save_optimizer

    def save_epoch(self, payload: dict, epoch: int, improved: bool, stable: bool = False) -> None:
        """`stable`: the last epoch before the schedule's decay (scheduler=wsd), kept as stable.ckpt: what a longer
        run continues from."""
        if not self.active:
            return
        last = self.folder / "last.ckpt"
        save_checkpoint(last, payload)
        (self.folder / "interrupted.ckpt").unlink(missing_ok=True)  # superseded by a later complete epoch
        if stable:
            _atomic_copy(last, self.folder / STABLE)
        periodic = bool(self.every_n_epochs and epoch % self.every_n_epochs == 0)
        slim = None if self.save_optimizer or not (improved or periodic) else \
            {k: v for k, v in payload.items() if k not in TRAINING_ONLY}
        targets = ((improved, self.folder / "best.ckpt"), (periodic, self.folder / f"epoch_{epoch:03d}.ckpt"))
        for wanted, path in targets:
            if wanted and slim is None:
                _atomic_copy(last, path)  # the same bytes: copy them, don't serialise again
            elif wanted:
                save_checkpoint(path, slim)
        if periodic:
            numbered = sorted(self.folder.glob("epoch_*.ckpt"))
            for old in numbered[:-self.keep] if self.keep else []:
                old.unlink()

    def save_interrupted(self, payload: dict) -> Path:
        path = self.folder / "interrupted.ckpt"
        if self.active:
            save_checkpoint(path, payload)
        return path


def capture_rng() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as tensors and builtins."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def run_checkpoint(run_dir: Path, names: tuple[str, ...] = RESUME_NAMES) -> Path | None:
    """The newest of `names` in a run's checkpoints/ (resume: interrupted.ckpt or last.ckpt), or for
    EVALUATE_NAMES the first that exists (best.ckpt, else last.ckpt)."""
    found = [run_dir / "checkpoints" / n for n in names if (run_dir / "checkpoints" / n).is_file()]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime_ns) if names == RESUME_NAMES else found[0]


def find_checkpoint(spec: str, outputs_root: Path, key: str = "resume") -> Path:
    """The one resolver of `resume=` and `ckpt=`: a .ckpt file, a run directory, `latest` (the newest run under
    `outputs_root`), or a date (YYYY-MM-DD: its newest run). In a run directory `resume=` takes the newer of
    interrupted.ckpt and last.ckpt, `ckpt=` (evaluate, compare, summary) best.ckpt, else last.ckpt."""
    names = RESUME_NAMES if key == "resume" else EVALUATE_NAMES
    usage = f"use {key}=<run_dir>, {key}=<file.ckpt>, {key}=latest or {key}=YYYY-MM-DD"
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = run_checkpoint(path, names)
        if found is None:
            raise CheckpointError(f"{key}={spec}: {path}/checkpoints has no {' or '.join(names)}")
        return found
    if spec == "latest" or re.fullmatch(r"\d{4}-\d{2}-\d{2}", spec):
        pattern = "*/*/checkpoints/*.ckpt" if spec == "latest" else f"{spec}/*/checkpoints/*.ckpt"
        candidates = [p for p in outputs_root.glob(pattern) if p.name in names]
        if not candidates:
            where = outputs_root if spec == "latest" else outputs_root / spec
            raise CheckpointError(f"{key}={spec}: no run with a checkpoint under {where}; {usage}")
        newest_run = max(candidates, key=lambda p: p.stat().st_mtime_ns).parent.parent
        return run_checkpoint(newest_run, names)
    raise CheckpointError(f"{key}={spec}: no such checkpoint file or run directory; {usage}")


def checkpoint_path(spec: str) -> Path:
    """`ckpt=` (evaluate, predict, visualize, summary, compare): a .ckpt file, a run directory (its best.ckpt, else
    last.ckpt), `latest` or a date, or a safetensors export (its folder or file)."""
    return exported_weights(str(spec)) or find_checkpoint(str(spec), OUTPUTS_ROOT, key="ckpt")
