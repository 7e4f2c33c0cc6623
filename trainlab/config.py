"""The typed schema of trainlab's top-level settings and the checks run before any data is read.

Only command functions (`trainlab.train.train`, ...) read the composed config; they call `load_settings`
first so a wrong type or an impossible value stops the run with one clear line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.columns import COLUMNS
from trainlab.errors import ConfigError

METRIC_COLUMNS = COLUMNS[2:]  # everything but epoch and step can be monitored

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")


@dataclass
class TrainerSettings:
    epochs: int = 10
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    grad_clip: float | None = None
    log_every_n_steps: int = 50
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    histogram_every_n_epochs: int = 5
    threads: str = "auto"


@dataclass
class CheckpointSettings:
    monitor: str = "val/acc1"
    mode: str = "max"
    every_n_epochs: int = 0
    keep: int = 0


@dataclass
class EarlyStoppingSettings:
    enabled: bool = False
    monitor: str = "val/loss"
    mode: str = "min"
    patience: int = 10
    min_delta: float = 0.0


@dataclass
class DeviceSettings:
    type: str = "cpu"
    count: int = 1


@dataclass
class Settings:
    seed: int = 0
    resume: str | None = None
    overwrite: bool = False
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    early_stopping: EarlyStoppingSettings = field(default_factory=EarlyStoppingSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)


def _typed(schema: type, node: Any, prefix: str) -> Any:
    """Merge `node` onto the dataclass schema; a wrong type or unknown key becomes one ConfigError line."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = f"{prefix}.{e.full_key}" if prefix and e.full_key else (e.full_key or prefix)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"invalid config value for '{key}': {msg}") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def load_settings(cfg: DictConfig, require_data: bool = True) -> Settings:
    """Validate the whole composed config and return the typed top-level settings. `require_data=False`
    for commands that do not read the data set (so dataset.root may be unset)."""
    keys = ("seed", "resume", "overwrite", "trainer", "checkpoint", "early_stopping", "device")
    top = {k: cfg[k] for k in keys if k in cfg}
    settings: Settings = _typed(Settings, top, "")
    t = settings.trainer
    _require(t.epochs >= 1, f"trainer.epochs must be >= 1 (got {t.epochs})")
    for name in ("limit_train_batches", "limit_val_batches"):
        value = getattr(t, name)
        _require(value is None or value >= 1, f"trainer.{name} must be >= 1 or null (got {value})")
    _require(t.grad_clip is None or t.grad_clip > 0, f"trainer.grad_clip must be > 0 or null (got {t.grad_clip})")
    _require(t.log_every_n_steps >= 1, f"trainer.log_every_n_steps must be >= 1 (got {t.log_every_n_steps})")
    _require(t.histogram_every_n_epochs >= 0, "trainer.histogram_every_n_epochs must be >= 0")
    t.precision = str(t.precision)
    _require(t.precision in PRECISIONS,
             f"trainer.precision must be one of {', '.join(PRECISIONS)} (got {t.precision!r})")
    _require(str(t.channels_last).lower() in ("auto", "true", "false"),
             "trainer.channels_last must be auto, true or false")
    _require(t.threads == "auto" or (t.threads.isdigit() and int(t.threads) >= 1),
             f"trainer.threads must be auto or a positive integer (got {t.threads!r})")
    for name in ("checkpoint", "early_stopping"):
        section = getattr(settings, name)
        _require(section.mode in ("min", "max"), f"{name}.mode must be min or max (got {section.mode!r})")
        _require(section.monitor in METRIC_COLUMNS,
                 f"{name}.monitor={section.monitor} is not a recorded metric (choose from {', '.join(METRIC_COLUMNS)})")
    _require(settings.checkpoint.every_n_epochs >= 0 and settings.checkpoint.keep >= 0,
             "checkpoint.every_n_epochs and checkpoint.keep must be >= 0")
    _require(settings.early_stopping.patience >= 1, "early_stopping.patience must be >= 1")
    _require(settings.early_stopping.min_delta >= 0, "early_stopping.min_delta must be >= 0")
    _require(settings.device.type in ("cpu", "cuda"), f"device.type must be cpu or cuda (got {settings.device.type!r})")
    _require(settings.device.count >= 1, f"device.count must be >= 1 (got {settings.device.count})")
    _check_groups(cfg, require_data)
    return settings


def _num(node: DictConfig, group: str, key: str, default: float) -> float:
    value = node.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{group}.{key} must be a number (got {value!r})") from None


def _check_groups(cfg: DictConfig, require_data: bool = True) -> None:
    """Value rules for the component groups whose keys are passed straight to a `_target_`."""
    ds, opt, sched, aug, model = cfg.dataset, cfg.optimizer, cfg.scheduler, cfg.augment, cfg.model
    if require_data and "root" in ds.keys():  # `in ds` is False for a ??? value
        _require(not OmegaConf.is_missing(ds, "root"),
                 f"dataset.root is not set: pass dataset.root=/path/to/your/data for dataset {_group_name(ds)}")
    _require(_num(ds, "dataset", "batch_size", 1) >= 1, f"dataset.batch_size must be >= 1 (got {ds.get('batch_size')})")
    _require(_num(ds, "dataset", "image_size", 8) >= 8, f"dataset.image_size must be >= 8 (got {ds.get('image_size')})")
    _require(_num(ds, "dataset", "num_workers", 0) >= 0, "dataset.num_workers must be >= 0")
    _require(_num(opt, "optimizer", "lr", 1) > 0, f"optimizer.lr must be > 0 (got {opt.get('lr')})")
    _require(_num(opt, "optimizer", "weight_decay", 0) >= 0,
             f"optimizer.weight_decay must be >= 0 (got {opt.get('weight_decay')})")
    _require(_num(opt, "optimizer", "l1", 0) >= 0, f"optimizer.l1 must be >= 0 (got {opt.get('l1')})")
    warmup = _num(sched, "scheduler", "warmup_epochs", 0)
    _require(warmup >= 0, "scheduler.warmup_epochs must be >= 0")
    _require(warmup < int(cfg.trainer.epochs),
             f"scheduler.warmup_epochs ({warmup:g}) must be smaller than trainer.epochs ({cfg.trainer.epochs})")
    _require(sched.get("interval", "epoch") in ("epoch", "step"), "scheduler.interval must be epoch or step")
    _require(_num(aug, "augment", "crop_padding", 0) >= 0, "augment.crop_padding must be >= 0")
    _require(0.0 <= _num(aug, "augment", "color_jitter", 0) < 1.0, "augment.color_jitter must be in [0, 1)")
    _require(0.0 <= _num(model, "model", "dropout", 0) < 1.0,
             f"model.dropout must be in [0, 1) (got {model.get('dropout')})")
    _require(model.get("init", "default") in ("default", "kaiming", "xavier"),
             f"model.init must be default, kaiming or xavier (got {model.get('init')!r})")


def _group_name(node: DictConfig) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def compose(overrides=(), config_name: str = "config") -> DictConfig:
    """The composed config without the CLI (tests, benchmarks, notebooks): same files, same overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("trainlab.conf", version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def settings_dict(settings: Settings) -> dict:
    return dataclasses.asdict(settings)
