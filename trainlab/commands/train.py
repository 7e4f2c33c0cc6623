"""`trainlab train [+experiment=...] [key=value ...]`: a new run, or with `resume=` a stored run continued in its own
directory. The fit itself is engine.fit's; this command checks the config before anything is written, reads a
resumed run's checkpoint (once per process), and starts the training processes (`device.count`)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainlab.core.config import load_settings
from trainlab.core.runtime import check_hardware
from trainlab.engine import distributed
from trainlab.engine.build import build, check_components
from trainlab.engine.fit import train
from trainlab.engine.ready import stored_run
from trainlab.engine.resume import before_decay, check_length
from trainlab.record.checkpoint import find_checkpoint
from trainlab.record.run_dir import OUTPUTS_ROOT, best_value
from trainlab.record.study import TrialReport
from trainlab.record.sweep import is_sweep_dir

log = logging.getLogger(__name__)

OWN_KEYS = ("resume",)


def _resumed(spec: str, overrides: list[str], say: bool = False) -> tuple[Path, dict, DictConfig, list[str]]:
    """The checkpoint a resume continues, its config with these overrides, and what they change; a longer run
    whose schedule cannot continue is refused here (engine.resume). `say`: log what its learning rate does (in the
    job, where the run's log is open; the preflight only checks)."""
    path = find_checkpoint(spec, OUTPUTS_ROOT)
    ckpt, cfg, changed = stored_run(path, overrides, OWN_KEYS)
    earlier = before_decay(ckpt, cfg, path)  # scheduler=wsd given a new length: from before its decay
    if earlier:
        path, line = earlier
        ckpt, cfg, changed = stored_run(path, overrides, OWN_KEYS)
        if say:
            log.info("resume: %s", line)
    length = check_length(ckpt, cfg, path) if "position" in ckpt or "optimizer" in ckpt else None
    if length and say:
        log.info("resume: %s", length)
    return path, ckpt, cfg, changed


def check(cfg: DictConfig, overrides: list[str]) -> None:
    """Before the run's files are opened: the settings, hardware, components and data folder, or for `resume=` the
    stored config with these overrides."""
    if cfg.get("resume") and not is_sweep_dir(cfg.resume):
        _resumed(str(cfg.resume), overrides)
        return
    settings = load_settings(cfg)
    check_hardware(settings.device.type, settings.trainer.precision)
    check_components(cfg, settings)
    build(cfg.dataset, "dataset").check_root()


def train_command(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict | None = None,
                  trial: TrialReport | None = None) -> dict:
    """`choices`: the config group options picked (Hydra's runtime.choices), stored with the checkpoints. `trial`:
    the search trial this run is (hydra/sweeper=search). With `device.count > 1` the training processes are started
    here, inside this (one) Hydra job, each with the resolved config."""
    resumed_from, changed = None, ()
    if cfg.get("resume"):
        path, ckpt, cfg, changed = _resumed(str(cfg.resume), overrides, say=True)
        cfg.resume, run_dir, resumed_from, choices = str(path), path.parent.parent, str(path), ckpt.get("choices")
        del ckpt
    settings = load_settings(cfg)
    # Resolved and plain, so the worker processes (a fresh interpreter each, no Hydra) can take it.
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return distributed.run(train, settings.device.type, settings.device.count, int(cfg.dataset.batch_size),
                           cfg, Path(run_dir), resumed_from=resumed_from, changed=tuple(changed), choices=choices,
                           settings=settings, trial=trial)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict,
        trial: TrialReport | None = None) -> float | None:
    """Returns the best value of checkpoint.monitor: what a sweeper (Optuna, trainlab's search) optimises."""
    train_command(cfg, run_dir, overrides, choices, trial)
    return best_value(run_dir)
