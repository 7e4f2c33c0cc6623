"""Where a run's metrics go besides metrics.csv (always written: it is the run's record, read by report, runs
and resume). The `logger` config group is a list, like Lightning's: `logger=[tensorboard,mlflow]`.

Each logger gets the same names as metrics.csv, at the same x (the global optimizer step, with `epoch` as a
metric of its own), from rank 0 only:
  start(run_dir, config, previous)  -> what identifies its run there (kept in run.json, so a resume continues it)
  log_epoch(row, step)
  finish(run_dir, summary)          -> the artifacts (plots, confusion CSVs, summary, report) and the end state
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.tensorboard import SummaryWriter

from trainlab.core.errors import ConfigError

log = logging.getLogger(__name__)

ARTIFACTS = ("metrics.csv", "summary.json", "run.json", "classes.csv", "report.md", "report.html")


def flat_config(config: dict) -> dict[str, Any]:
    """The config as dotted keys (optimizer.lr, ...), values as scalars or strings: what trackers and TensorBoard's
    hparams take."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict() if config else {}
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


class Logger:
    name = "logger"

    def start(self, run_dir: Path, config: dict, previous: dict | None) -> dict:
        return {}

    def log_epoch(self, row: dict, step: int) -> None:
        pass

    def finish(self, run_dir: Path, summary: dict) -> None:
        pass


class TensorBoardLogger(Logger):
    """TensorBoard event files in <run_dir>/tensorboard: the scalars, the model graph, weight/gradient histograms,
    confusion figures and hparams. The run recorder writes them (it owns the writer); this option turns them on."""

    name = "tensorboard"

    def __init__(self, subdir: str):
        if not subdir or Path(subdir).is_absolute() or ".." in Path(subdir).parts:
            raise ConfigError(f"logger.tensorboard.subdir must be a folder name inside the run (got {subdir!r})")
        self.subdir = subdir

    def writer(self, run_dir: Path) -> SummaryWriter:
        return SummaryWriter(str(Path(run_dir) / self.subdir))


class MLflowLogger(Logger):
    """One MLflow run per trainlab run: params = the flattened config, metrics per epoch with metrics.csv's names,
    artifacts = plots, confusion CSVs, summary, report (and the best checkpoint with log_checkpoint=true)."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str | None,
                 log_checkpoint: bool):
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("logger=mlflow needs MLflow: pip install 'trainlab[mlflow]'") from None
        if not experiment_name:
            raise ConfigError("logger.mlflow.experiment_name must name an MLflow experiment, e.g. trainlab")
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.run_name, self.log_checkpoint = run_name, log_checkpoint
        self._client = self._run_id = None

    def start(self, run_dir: Path, config: dict, previous: dict | None) -> dict:
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        if "://" not in uri and not uri.startswith("file:"):  # a folder: MLflow's file store
            uri = Path(uri).expanduser().resolve().as_uri()
        if uri.startswith("file:") and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked; it is what needs no
            # server and no database, so trainlab asks (for this process) and says so.
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            log.info("mlflow: file store %s (MLFLOW_ALLOW_FILE_STORE=true set for this run; pass "
                     "logger.mlflow.tracking_uri=sqlite:///mlflow.db or a server's http:// address for another)", uri)
        self._client = MlflowClient(tracking_uri=uri)
        if previous and previous.get("run_id"):  # a resumed trainlab run continues its MLflow run
            self._run_id = previous["run_id"]
            self._client.update_run(self._run_id, status="RUNNING")
        else:
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            experiment_id = experiment.experiment_id if experiment else \
                self._client.create_experiment(self.experiment_name)
            run = self._client.create_run(experiment_id, run_name=self.run_name or Path(run_dir).name,
                                          tags={"trainlab.run_dir": str(Path(run_dir).resolve())})
            self._run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k[:250], str(v)[:6000]) for k, v in flat_config(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
                self._client.log_batch(self._run_id, params=params[i:i + 100])
        log.info("mlflow: run %s in %s (experiment %s)", self._run_id, uri, self.experiment_name)
        del mlflow
        return {"run_id": self._run_id, "tracking_uri": uri}

    def log_epoch(self, row: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _numbers(row).items()]
        self._client.log_batch(self._run_id, metrics=metrics)

    def finish(self, run_dir: Path, summary: dict) -> None:
        run_dir = Path(run_dir)
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self._client.log_artifact(self._run_id, str(run_dir / name))
        for folder in ("plots", "confusion"):
            if (run_dir / folder).is_dir():
                self._client.log_artifacts(self._run_id, str(run_dir / folder), artifact_path=folder)
        best = run_dir / "checkpoints" / "best.ckpt"
        if self.log_checkpoint and best.is_file():
            self._client.log_artifact(self._run_id, str(best), artifact_path="checkpoints")
        self._client.set_tag(self._run_id, "trainlab.stopped", summary.get("stopped", ""))
        status = {"completed": "FINISHED", "early_stopping": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED"}
        self._client.set_terminated(self._run_id, status=status.get(summary.get("stopped"), "FAILED"))


class WandbLogger(Logger):
    """A Weights & Biases run, offline by default (its files in <run_dir>/wandb; `wandb sync` uploads them)."""

    name = "wandb"

    def __init__(self, project: str, mode: str, entity: str | None, name: str | None):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logger=wandb needs wandb: pip install 'trainlab[wandb]'") from None
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.wandb.mode must be offline, online or disabled (got {mode!r})")
        self.project, self.mode, self.entity, self.name_ = project, mode, entity, name
        self._run = None

    def start(self, run_dir: Path, config: dict, previous: dict | None) -> dict:
        import wandb

        mode = os.environ.get("WANDB_MODE", self.mode)  # wandb's own switch wins, as it does for wandb users
        self._run = wandb.init(project=self.project, entity=self.entity, name=self.name_ or Path(run_dir).name,
                               config=flat_config(config), dir=str(run_dir), mode=mode,
                               id=(previous or {}).get("id"), resume="allow" if previous else None)
        log.info("wandb: run %s (%s mode) in %s", self._run.id, mode, Path(run_dir) / "wandb")
        return {"id": self._run.id, "mode": mode}

    def log_epoch(self, row: dict, step: int) -> None:
        self._run.log(_numbers(row), step=step)

    def finish(self, run_dir: Path, summary: dict) -> None:
        run_dir = Path(run_dir)
        for path in sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []:
            self._run.save(str(path), base_path=str(run_dir), policy="now")
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self._run.save(str(run_dir / name), base_path=str(run_dir), policy="now")
        self._run.summary["stopped"] = summary.get("stopped", "")
        self._run.finish(exit_code=0 if summary.get("stopped") in ("completed", "early_stopping", "pruned") else 1)
