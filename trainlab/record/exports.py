"""The files of `trainlab export`, as the other commands read them back: a safetensors export (found by its
model.json) taken like a checkpoint by evaluate, predict, visualize and compare."""

from __future__ import annotations

import json
from pathlib import Path

from trainlab.core.errors import ConfigError, TrainlabError

SIDECAR = "model.json"  # what every export carries beside its weights


def exported_weights(spec: str) -> Path | None:
    """The safetensors file of a `trainlab export` named by `ckpt=` (its folder, or the file with model.json
    beside it); None when `spec` is something else (a checkpoint, a run directory)."""
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else path.parent
    sidecar = folder / SIDECAR
    if not sidecar.is_file() or (path.is_file() and path.suffix != ".safetensors"):
        return None
    try:
        described = json.loads(sidecar.read_text())
    except ValueError:
        raise TrainlabError(f"{sidecar} is damaged (not valid JSON): export the checkpoint again, or pass the "
                            "checkpoint itself") from None
    if not isinstance(described, dict) or "file" not in described:
        raise TrainlabError(f"{sidecar} is not an export's description (no 'file'): export the checkpoint again")
    if described.get("format") != "safetensors":
        raise ConfigError(f"{folder} holds a {described.get('format')} export; ckpt= reads checkpoints and "
                          "safetensors exports (trainlab export format=safetensors)")
    return folder / described["file"]


def load_export(weights: Path) -> dict:
    """A safetensors export in the shape of a checkpoint (weights, classes, normalisation, the run's config),
    so evaluate and predict take it like one."""
    from safetensors.torch import load_file

    try:
        described = json.loads((weights.parent / SIDECAR).read_text())
    except (OSError, ValueError) as e:
        raise TrainlabError(f"{weights.parent / SIDECAR} is damaged (not valid JSON: {' '.join(str(e).split())[:60]}): "
                            "export the checkpoint again") from None
    if not isinstance(described, dict) or "config" not in described:
        raise TrainlabError(f"{weights.parent} was exported before exports carried the run's config: export the "
                            "checkpoint again")
    return {"model": load_file(str(weights)), "classes": described["classes"],
            "class_names": described["class_names"], "normalization": described["normalization"],
            "config": described["config"], "choices": {}, "epoch": described["epoch"],
            "speed": {"precision": "32", "channels_last": False}}  # exports are fp32 and contiguous
