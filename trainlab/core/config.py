"""The typed schema of trainlab's top-level settings and the checks run before any data is read.

Only command functions (`trainlab.commands.train.train`, ...) read the composed config; they call `load_settings`
first so a wrong type or an impossible value stops the run with one clear line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.core.columns import COLUMNS, EMA_COLUMNS
from trainlab.core.errors import ConfigError

METRIC_COLUMNS = COLUMNS[2:] + EMA_COLUMNS  # everything but epoch and step can be monitored (val_ema/*: with EMA)

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")

# The types live here, the values in conf/*.yaml (MISSING: the YAML must give one). Hydra checks overrides
# against these classes as it composes (they are registered below and named first in config.yaml's defaults).


@dataclass
class TrainerSettings:
    epochs: int = MISSING
    limit_train_batches: int | None = MISSING
    limit_val_batches: int | None = MISSING
    grad_clip: float | None = MISSING
    l1: float = MISSING
    log_every_n_steps: int = MISSING
    precision: str = MISSING
    channels_last: str = MISSING
    autotune: bool = MISSING
    compile: str = MISSING
    data_on_device: str = MISSING
    histogram_every_n_epochs: int = MISSING
    threads: str = MISSING
    accumulate_grad_batches: int = MISSING
    ema_decay: float | None = MISSING
    activations_every_n_epochs: int = MISSING


@dataclass
class LRScheduleSettings:
    interval: str = MISSING
    warmup_epochs: int = MISSING
    monitor: str = MISSING


@dataclass
class CheckpointSettings:
    monitor: str = MISSING
    mode: str = MISSING
    every_n_epochs: int = MISSING
    keep: int = MISSING
    save_optimizer: bool = MISSING


@dataclass
class EarlyStoppingSettings:
    enabled: bool = MISSING
    monitor: str = MISSING
    mode: str = MISSING
    patience: int = MISSING
    min_delta: float = MISSING


@dataclass
class TargetSettings:
    metric: str = MISSING
    mode: str = MISSING
    value: float | None = MISSING


@dataclass
class DeviceSettings:
    type: str = MISSING
    count: int = MISSING


@dataclass
class Settings:
    """trainlab's own blocks of the config (the component groups are built from their `_target_`)."""
    seed: int = MISSING
    resume: str | None = MISSING
    overwrite: bool = MISSING
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    lr_schedule: LRScheduleSettings = field(default_factory=LRScheduleSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    early_stopping: EarlyStoppingSettings = field(default_factory=EarlyStoppingSettings)
    target: TargetSettings = field(default_factory=TargetSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)


@dataclass
class TrainSchema(Settings):
    """The whole `trainlab train` config: Settings plus the component groups (checked by their constructors)."""
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    augment: Any = MISSING
    metrics: Any = MISSING
    logger: Any = MISSING


@dataclass
class EvaluateSchema(TrainSchema):
    ckpt: Any = MISSING
    split: str = MISSING
    weights: str = MISSING


@dataclass
class LRFindSettings:
    min_lr: float = MISSING
    max_lr: float = MISSING
    num_steps: int = MISSING
    smoothing: float = MISSING
    stop_factor: float = MISSING


@dataclass
class LRFindSchema(TrainSchema):
    lr_find: LRFindSettings = field(default_factory=LRFindSettings)


@dataclass
class SummarySchema(TrainSchema):
    ckpt: Any = MISSING
    num_classes: int | None = MISSING
    depth: int = MISSING


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(name="evaluate_schema", node=EvaluateSchema)
    store.store(name="summary_schema", node=SummarySchema)
    store.store(name="lr_find_schema", node=LRFindSchema)


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
    keys = [f.name for f in dataclasses.fields(Settings)]
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
    t.compile, t.data_on_device = str(t.compile).lower(), str(t.data_on_device).lower()
    for name in ("compile", "data_on_device"):
        _require(getattr(t, name) in ("auto", "true", "false"), f"trainer.{name} must be auto, true or false")
    _require(t.threads == "auto" or (t.threads.isdigit() and int(t.threads) >= 1),
             f"trainer.threads must be auto or a positive integer (got {t.threads!r})")
    for name in ("checkpoint", "early_stopping", "target"):
        section = getattr(settings, name)
        _require(section.mode in ("min", "max"), f"{name}.mode must be min or max (got {section.mode!r})")
        key, monitor = ("metric", section.metric) if name == "target" else ("monitor", section.monitor)
        _require(monitor in METRIC_COLUMNS,
                 f"{name}.{key}={monitor} is not a recorded metric (choose from {', '.join(METRIC_COLUMNS)})")
    _require(settings.checkpoint.every_n_epochs >= 0 and settings.checkpoint.keep >= 0,
             "checkpoint.every_n_epochs and checkpoint.keep must be >= 0")
    _require(settings.early_stopping.patience >= 1, "early_stopping.patience must be >= 1")
    _require(settings.early_stopping.min_delta >= 0, "early_stopping.min_delta must be >= 0")
    _require(settings.device.type in ("cpu", "cuda"), f"device.type must be cpu or cuda (got {settings.device.type!r})")
    _require(settings.device.count >= 1, f"device.count must be >= 1 (got {settings.device.count})")
    _require(t.l1 >= 0, f"trainer.l1 must be >= 0 (got {t.l1})")
    _require(t.accumulate_grad_batches >= 1,
             f"trainer.accumulate_grad_batches must be >= 1 (got {t.accumulate_grad_batches})")
    _require(t.ema_decay is None or 0 < t.ema_decay < 1,
             f"trainer.ema_decay must be in (0, 1) or null (got {t.ema_decay})")
    _require(t.activations_every_n_epochs >= 0, "trainer.activations_every_n_epochs must be >= 0")
    for name in ("checkpoint", "early_stopping", "lr_schedule", "target"):
        key = "metric" if name == "target" else "monitor"
        monitor = getattr(getattr(settings, name), key)
        _require(not monitor.startswith("val_ema/") or t.ema_decay is not None,
                 f"{name}.{key}={monitor} needs trainer.ema_decay (e.g. 0.999): without it there are no val_ema/* "
                 "metrics")
    sched = settings.lr_schedule
    _require(0 <= sched.warmup_epochs < t.epochs,
             f"lr_schedule.warmup_epochs ({sched.warmup_epochs}) must be >= 0 and smaller than trainer.epochs "
             f"({t.epochs})")
    _require(sched.monitor in METRIC_COLUMNS,
             f"lr_schedule.monitor={sched.monitor} is not a recorded metric (choose from {', '.join(METRIC_COLUMNS)})")
    if require_data:
        _check_root(cfg)
    return settings


def _check_root(cfg: DictConfig) -> None:
    ds = cfg.dataset
    if "root" in ds.keys():  # `in ds` is False for a ??? value
        name = str(ds.get("_target_", "?")).rsplit(".", 1)[-1]
        _require(not OmegaConf.is_missing(ds, "root"),
                 f"dataset.root is not set: pass dataset.root=/path/to/your/data for dataset {name}")


def compose(overrides=(), config_name: str = "config") -> DictConfig:
    """The composed config without the CLI (tests, benchmarks, notebooks): same files, same overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("trainlab.conf", version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


def component(group: str, option: str, **values):
    """One config group's object as conf/<group>/<option>.yaml builds it, with `values` in place of its keys
    (tests, benchmarks: the constructors have no defaults, conf/ holds each value once). The runner's own
    arguments go in `values` too: `component("augment", "standard", mean=m, std=s, channels=None)`."""
    from hydra.utils import instantiate

    return instantiate(compose([f"{group}={option}"])[group], **values)


def settings_dict(settings: Settings) -> dict:
    return dataclasses.asdict(settings)


def config_groups() -> tuple[list[str], list[str]]:
    """conf/'s config groups (its folders), and those config.yaml's defaults leave out (experiment, debug,
    hparams_search: picked with `+group=option`). Read from the shipped config package, so a group added there
    needs no list in the code."""
    from importlib.resources import files

    import yaml

    root = files("trainlab.conf")
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    defaults = yaml.safe_load(root.joinpath("config.yaml").read_text()).get("defaults", [])
    chosen = {key for entry in defaults if isinstance(entry, dict) for key in entry}
    return groups, [g for g in groups if g not in chosen]
