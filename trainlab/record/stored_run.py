"""A run's config from its checkpoint (`train resume=`, `evaluate ckpt=`): the config stored
in the checkpoint, with single keys given on the command line (trainer.epochs=..., dataset.root=...)
applied on top and recorded. Changing the model or the classes is refused: that is a new run (start it
with model.weights=<file.ckpt>)."""

from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab.core.config import config_groups
from trainlab.core.errors import CheckpointError
from trainlab.core.suggest import has_key, unknown_key

GROUPS = tuple(config_groups()[0])


def config_from_checkpoint(saved: dict, overrides: list[str], choices: dict,
                           own_keys: tuple[str, ...] = ("resume",)) -> tuple[DictConfig, list[str]]:
    """The checkpoint's config with the command line's `key=value` overrides applied; returns the
    config and the overrides that changed something. Group options (`dataset=fake`, `+experiment=x`)
    may be repeated as the run was started (`choices`, Hydra's record of them), not changed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = upgrade_config(saved)
    cfg = OmegaConf.create(saved)
    changed = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in own_keys or key.startswith("hydra"):  # the command's own keys, not the run's config
            continue
        if key in GROUPS or "/" in key:
            if choices.get(key) == override.value():
                continue
            raise CheckpointError(f"a checkpoint's run keeps its own config: '{override.input_line}' picks a config "
                                  "group option; change single keys instead (e.g. trainer.epochs=20), or start "
                                  "a new run with model.weights=<file.ckpt>")
        if not (override.is_add() or override.is_force_add()) and not has_key(cfg, key):
            raise CheckpointError(unknown_key(cfg, key, GROUPS))
        value: Any = override.value()
        if OmegaConf.select(cfg, key) != value:
            OmegaConf.update(cfg, key, value, force_add=True)
            changed.append(f"{key}={value}")
    if OmegaConf.to_container(cfg.model, resolve=True) != saved["model"]:
        raise CheckpointError("a checkpoint's model cannot change (model.* keys): its weights would "
                              "not fit; start a new run with model.weights=<file.ckpt>")
    return cfg, changed


def upgrade_config(saved: dict) -> dict:
    """Configs stored by earlier trainlab versions, in today's shape: trainlab's own keys used to sit inside the
    component groups (optimizer.l1, scheduler.interval/warmup_epochs/monitor), and runs from before
    trainer.autotune chose `auto` by the hardware's flags (so they keep doing that)."""
    saved = copy.deepcopy(saved)
    trainer = saved.setdefault("trainer", {})
    if "lr_schedule" not in saved:
        scheduler = saved.get("scheduler", {})
        saved["lr_schedule"] = {"interval": scheduler.pop("interval", "epoch"),
                                "warmup_epochs": scheduler.pop("warmup_epochs", 0),
                                "monitor": scheduler.pop("monitor", None) or "val/loss"}
        trainer["l1"] = saved.get("optimizer", {}).pop("l1", 0.0)
    trainer.setdefault("autotune", False)
    for key, value in (("accumulate_grad_batches", 1), ("ema_decay", None), ("activations_every_n_epochs", 0),
                       ("data_on_device", "auto")):
        trainer.setdefault(key, value)
    augment = saved.setdefault("augment", {})
    for key, value in (("auto_augment", "none"), ("random_erasing", 0.0), ("mixup_alpha", 0.0), ("cutmix_alpha", 0.0)):
        augment.setdefault(key, value)
    saved.setdefault("checkpoint", {}).setdefault("save_optimizer", True)
    saved.setdefault("target", {"metric": "val/acc1", "mode": "max", "value": None})
    saved.setdefault("model", {}).setdefault("freeze", None)
    dataset = saved.setdefault("dataset", {})
    dataset.setdefault("normalize", "data")
    if "cache" in dataset:  # a data set read from files
        dataset.setdefault("skip_bad_images", False)
    saved.setdefault("logger", {"tensorboard": {"_target_": "trainlab.loggers.TensorBoardLogger",
                                                "subdir": "tensorboard"}})
    return saved


def check_classes(saved_classes: list[str], classes: list[str], where: str) -> None:
    if list(saved_classes) != list(classes):
        raise CheckpointError(f"{where} was trained on {len(saved_classes)} classes "
                              f"({', '.join(saved_classes[:3])}, ...) but the data has {len(classes)} "
                              f"({', '.join(classes[:3])}, ...); point dataset.root at the same data set")


def on_this_machine(saved_config: dict) -> list[str]:
    """Overrides that let a checkpoint trained on GPUs be used where there is none (predict, export): the CPU,
    and fp32 instead of fp16 autocast (which needs a GPU). Logged, never silent."""
    import logging

    import torch

    device, precision = saved_config.get("device", {}), saved_config.get("trainer", {}).get("precision")
    if device.get("type") != "cuda" or torch.cuda.is_available():
        return []
    logging.getLogger(__name__).info("no GPU here: the checkpoint's model runs on the CPU%s",
                                     " in fp32 (it trained with fp16 autocast)" if precision == "16-mixed" else "")
    return ["device.type=cpu", "device.count=1"] + (["trainer.precision=32"] if precision == "16-mixed" else [])
