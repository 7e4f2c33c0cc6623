"""`trainlab summary`: every layer of the configured (or a checkpoint's) model with its output shape for
the configured input, parameters and multiply-adds (torchinfo), as a table, summary.txt and the model
graph in TensorBoard."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchinfo import summary as torchinfo_summary

from trainlab.core.config import load_settings
from trainlab.core.errors import DataError
from trainlab.core.fs import atomic_write_text
from trainlab.engine.build import build, build_model, input_channels
from trainlab.engine.ready import plain_cpu, ready_model, stored_run
from trainlab.record.checkpoint import checkpoint_path
from trainlab.record.recorder import RunRecorder

log = logging.getLogger(__name__)
OWN_KEYS = ("ckpt", "num_classes", "depth")


def _classes(cfg: DictConfig, num_classes) -> list[str]:
    """The class list without decoding any image: file data sets are only indexed."""
    if num_classes:
        return [str(k) for k in range(int(num_classes))]
    data = build(cfg.dataset, "dataset")
    try:
        if hasattr(data, "index"):
            data.index()
    except DataError as e:
        raise DataError(f"{e} (or pass num_classes=N to summarise without the data)") from None
    return data.classes


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict) -> str:
    return model_summary(cfg, run_dir, overrides)


def model_summary(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> str:
    if cfg.get("ckpt"):
        ckpt, run_cfg, _ = stored_run(checkpoint_path(str(cfg.ckpt)), overrides, OWN_KEYS, needs_data=False)
        ready = ready_model(ckpt, run_cfg, plain_cpu())
        model, classes, channels = ready.model, ready.classes, ready.channels
    else:
        run_cfg = cfg
        load_settings(run_cfg, require_data=not cfg.get("num_classes"))
        classes = _classes(run_cfg, cfg.get("num_classes"))
        channels = int(run_cfg.model.get("in_channels") or 3)
        model = build_model(run_cfg, len(classes), classes, plain_cpu(), start_weights=False, channels=channels)
        channels = input_channels(run_cfg, channels)
        model.eval()
    size, batch = int(run_cfg.dataset.image_size), int(run_cfg.dataset.batch_size)
    stats = torchinfo_summary(model, input_size=(batch, channels, size, size), depth=int(cfg.get("depth", 10)),
                              col_names=("output_size", "num_params", "mult_adds"), row_settings=("var_names",),
                              verbose=0, device="cpu")
    text = f"{type(model).__name__} for {len(classes)} classes, input ({batch}, {channels}, {size}, {size})\n{stats}\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "summary.txt", text)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_dir / "tensorboard"))
    RunRecorder.add_graph(writer, model, torch.zeros(1, channels, size, size))
    writer.close()
    print(text, end="")
    print(f"wrote summary.txt and the model graph (tensorboard/) to {out_dir}")
    return text
