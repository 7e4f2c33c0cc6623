"""`trainlab evaluate ckpt=<file | run_dir | export> [split=val] [weights=auto|model|ema] [key=value ...]`: metrics,
predictions.csv and confusion.csv of a checkpoint on one split (engine.evaluation), by default beside its run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainlab.core.errors import TrainlabError
from trainlab.core.suggest import did_you_mean
from trainlab.engine.evaluation import OWN_KEYS, SPLITS, evaluate
from trainlab.engine.ready import stored_run
from trainlab.record.checkpoint import checkpoint_path
from trainlab.record.run_dir import beside_run


def check(cfg: DictConfig, overrides: list[str]) -> None:
    """Before a run directory is made for it: a checkpoint, a known split, and the stored config with the
    command line applied."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise TrainlabError("evaluate needs a checkpoint: pass ckpt=<file.ckpt | run_dir>")
    if cfg.split not in SPLITS:
        raise TrainlabError(f"split must be one of {', '.join(SPLITS)} (got {cfg.split!r}"
                            f"{did_you_mean(str(cfg.split), SPLITS).replace(';', ':')})")
    stored_run(checkpoint_path(str(cfg.ckpt)), overrides, OWN_KEYS)


def default_dir(options: dict[str, str]) -> Path | None:
    """Where an evaluation goes without hydra.run.dir: beside its checkpoint's run (<run>/eval/...)."""
    if "ckpt" not in options:
        return None
    ckpt = checkpoint_path(options["ckpt"])
    return beside_run(ckpt, "eval", f"{ckpt.stem}-{options.get('split', 'val')}")


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict | None = None) -> dict:
    return evaluate(checkpoint_path(str(cfg.ckpt)), str(cfg.split), str(cfg.get("weights", "auto")), overrides,
                    run_dir)
