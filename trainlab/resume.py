"""What `resume=` means for the config: a resumed run keeps the config stored in its checkpoint; single
keys given on the command line (trainer.epochs=..., logging) are applied on top and recorded. Changing
the model or the classes is refused: that is a new run (start it with model.weights=<file.ckpt>)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab.errors import CheckpointError

GROUPS = ("dataset", "model", "optimizer", "scheduler", "loss", "augment", "device", "metrics", "experiment")


def resumed_config(saved: dict, overrides: list[str], choices: dict) -> tuple[DictConfig, list[str]]:
    """The checkpoint's config with the command line's `key=value` overrides applied; returns the
    config and the overrides that changed something. Group options (`dataset=fake`, `+experiment=x`)
    may be repeated as the run was started (`choices`, Hydra's record of them), not changed."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.create(saved)
    changed = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "resume" or key.startswith("hydra"):
            continue
        if key in GROUPS or "/" in key:
            if choices.get(key) == override.value():
                continue
            raise CheckpointError(f"resume keeps the run's own config: '{override.input_line}' picks a config "
                                  "group option; change single keys instead (e.g. trainer.epochs=20), or start "
                                  "a new run with model.weights=<file.ckpt>")
        value: Any = override.value()
        if OmegaConf.select(cfg, key) != value:
            OmegaConf.update(cfg, key, value, force_add=True)
            changed.append(f"{key}={value}")
    if OmegaConf.to_container(cfg.model, resolve=True) != saved["model"]:
        raise CheckpointError("resume cannot change the model (model.* keys): the checkpoint's weights would "
                              "not fit; start a new run with model.weights=<file.ckpt>")
    return cfg, changed


def check_classes(saved_classes: list[str], classes: list[str], where: str) -> None:
    if list(saved_classes) != list(classes):
        raise CheckpointError(f"{where} was trained on {len(saved_classes)} classes "
                              f"({', '.join(saved_classes[:3])}, ...) but the data has {len(classes)} "
                              f"({', '.join(classes[:3])}, ...); point dataset.root at the same data set")
