"""Checkpoint files: plain dicts of tensors and builtins, written atomically, read with weights_only=True."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

import trainlab
from trainlab.errors import TrainlabError

FORMAT = "trainlab-checkpoint-v1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash at any instant leaves
    the previous file intact and loadable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "trainlab_version": trainlab.__version__, "torch_version": str(torch.__version__), **payload}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TrainlabError(f"could not write checkpoint {path}: {e.strerror}; the previous checkpoint is intact") from None


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a trainlab checkpoint without ever unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise TrainlabError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise TrainlabError(f"{path} is not a loadable trainlab checkpoint (truncated, corrupt, or holds "
                            f"pickled code, which is never loaded): {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TrainlabError(f"{path} is not a trainlab checkpoint (no '{FORMAT}' marker)")
    return payload
