"""Everything a run writes about itself: metrics.csv, TensorBoard, confusion CSVs, plots, classes.csv,
run.json at the start and summary.json (with the diagnosis of its curves) at the end. One object, called from the
training loop: RunRecorder in the process that writes the record, SilentRecorder (the history only) in the other
training processes of a distributed run."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.tensorboard import SummaryWriter

from trainlab.analysis.diagnostics import as_dicts, diagnose
from trainlab.analysis.plots import confusion_figure, plot_history
from trainlab.core.columns import COLUMNS, EMA_COLUMNS
from trainlab.core.fs import atomic_write_text
from trainlab.loggers import Logger, TensorBoardLogger
from trainlab.record.run_dir import CONFUSION_DIR, read_activations

log = logging.getLogger(__name__)

__all__ = ["COLUMNS", "RunRecorder", "SilentRecorder"]


def class_labels(ids: list[str], names: list[str]) -> list[str]:
    """Axis labels: the id plus the first human name when they differ ('n01443537 goldfish')."""
    return [i if n == i else f"{i} {n.split(',')[0].strip()}" for i, n in zip(ids, names)]


def write_classes(path: Path, ids: list[str], names: list[str]) -> None:
    """classes.csv: index -> id (wnid) -> name, the mapping every output of a run refers to."""
    table = pd.DataFrame({"index": range(len(ids)), "id": ids, "name": names})
    atomic_write_text(path, table.to_csv(index=False))


def write_confusion(path: Path, confusion: torch.Tensor, labels: list[str]) -> None:
    """A confusion matrix as CSV: true classes as rows, predicted as columns, class labels on both axes."""
    table = pd.DataFrame(confusion.numpy(), index=labels, columns=labels)
    table.index.name = "true \\ predicted"
    atomic_write_text(path, table.to_csv())


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(type(value).__name__)


# Drawing figures (the PNG curves, TensorBoard's confusion images) may take at most this share of a run's time.
FIGURE_TIME_SHARE = 0.05
FIRST_DRAW_COST_S = 1.0  # what drawing them takes on a laptop CPU, until this run has measured it


class _NoWriter:
    """TensorBoard turned off (`tensorboard` not in logger=[...]): every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class SilentRecorder:
    """A training process other than rank 0 (which holds the same weights and, after the epoch's all-reduce, the
    same metrics): it keeps the epochs' rows and writes nothing."""

    def __init__(self, run_dir: Path, history: list[dict] | None = None):
        self.run_dir = Path(run_dir)
        self.history: list[dict] = list(history or [])
        self.trackers: list[Logger] = []

    def read_json(self, name: str) -> dict:
        return {}

    def write_json(self, name: str, payload: dict) -> None:
        pass

    def write_text(self, name: str, text: str) -> None:
        pass

    def start_loggers(self, config: dict, previous: dict) -> dict:
        return {}

    def log_step(self, step: int, loss: float) -> None:
        pass

    def log_graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        pass

    def log_epoch(self, row: dict, confusions: dict[str, torch.Tensor], model: torch.nn.Module | None) -> None:
        self.history.append(row)

    def log_activations(self, epoch: int, step: int, image: torch.Tensor, outputs: dict[str, torch.Tensor],
                        channels: int = 16) -> None:
        pass

    def finish(self, summary: dict, hparams: dict) -> None:
        pass


class RunRecorder(SilentRecorder):
    def __init__(self, run_dir: Path, class_ids: list[str], class_names: list[str], histogram_every: int,
                 history: list[dict] | None = None, loggers: list[Logger] | None = None):
        """`history`: the rows of the epochs already done (a resumed run appends to them). `loggers`: the `logger`
        group's (TensorBoard is written here; the others get every epoch's row and the run's end)."""
        super().__init__(run_dir, history)
        loggers = [] if loggers is None else loggers
        board = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
        self.trackers = [lg for lg in loggers if not isinstance(lg, TensorBoardLogger)]
        self.tensorboard = board is not None
        self.labels = class_labels(class_ids, class_names)
        self.histogram_every = histogram_every
        # Figures are redrawn when the time since the last drawing is at least 1/FIGURE_TIME_SHARE times what
        # drawing costs (on a small data set drawing would otherwise take longer than the epoch), and always
        # at the end of the run. The CSVs and scalars are written every epoch regardless.
        self._drawn_at, self._draw_cost = time.monotonic(), FIRST_DRAW_COST_S
        self._pending, self._said_throttle = None, False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = board.writer(self.run_dir) if board is not None else _NoWriter()
        (self.run_dir / CONFUSION_DIR).mkdir(exist_ok=True)
        write_classes(self.run_dir / "classes.csv", class_ids, class_names)

    def read_json(self, name: str) -> dict:
        path = self.run_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_json(self, name: str, payload: dict) -> None:
        atomic_write_text(self.run_dir / name, json.dumps(payload, indent=2, default=_json_default) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.run_dir / name, text)

    def _each_tracker(self, what: str, call) -> None:
        """A tracker that fails (a server gone, a full disk) is dropped with a warning; the run and its
        metrics.csv go on."""
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - any failure of an optional sink must not end the training
                self.trackers.remove(tracker)
                log.warning("%s logger: %s failed (%s); it is off for the rest of this run, metrics.csv has every "
                            "epoch", tracker.name, what, " ".join(str(e).split())[:300])

    def start_loggers(self, config: dict, previous: dict) -> dict:
        """Start the trackers (a resumed run continues their runs: `previous` is what they returned before)."""
        started = {}

        def start(tracker: Logger) -> None:
            started[tracker.name] = tracker.start(self.run_dir, config, previous.get(tracker.name))

        self._each_tracker("starting", start)
        return started

    def log_step(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss_step", loss, step)

    def log_graph(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        self.add_graph(self.writer, model, example)

    @staticmethod
    def add_graph(writer: SummaryWriter, model: torch.nn.Module, example: torch.Tensor) -> None:
        import warnings

        try:
            with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns it is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                writer.add_graph(model, example)
        except Exception as e:  # tracing is best-effort (e.g. data-dependent control flow): say so, keep going
            log.warning("could not trace the model graph for TensorBoard: %s", str(e).splitlines()[0])

    def log_epoch(self, row: dict, confusions: dict[str, torch.Tensor], model: torch.nn.Module | None) -> None:
        epoch = row["epoch"]
        self.history.append(row)
        frame = pd.DataFrame(self.history)
        frame = frame.reindex(columns=COLUMNS + [c for c in EMA_COLUMNS if c in frame])
        atomic_write_text(self.run_dir / "metrics.csv", frame.to_csv(index=False))
        # Every TensorBoard point is at the global step (as train/loss_step is), so per-step and per-epoch curves
        # overlay on one axis; the `epoch` scalar maps steps to epochs (Lightning's habit).
        step = int(row.get("step") or epoch)
        for key, value in row.items():
            if key != "step" and value is not None:
                self.writer.add_scalar(key, value, step)
        self._each_tracker("logging", lambda tracker: tracker.log_epoch(row, step))
        for split, confusion in confusions.items():
            write_confusion(self.run_dir / CONFUSION_DIR / f"{split}_epoch{epoch:03d}.csv", confusion, self.labels)
        self._pending = (frame, epoch, step, confusions)
        if self._figures_due():
            self._draw_figures()
        if model is not None and self.histogram_every and epoch % self.histogram_every == 0:
            for name, param in model.named_parameters():
                self._histogram(f"weights/{name}", param, step)
                if param.grad is not None:
                    self._histogram(f"gradients/{name}", param.grad, step)
        self.writer.flush()

    def log_activations(self, epoch: int, step: int, image: torch.Tensor, outputs: dict[str, torch.Tensor],
                        channels: int = 16) -> None:
        """A fixed val batch's per-layer statistics (TensorBoard `activations/<layer>/...`, activations.csv) and its
        first image's feature maps (TensorBoard `feature_maps/<layer>`), at the epoch's global step."""
        from trainlab.analysis.activations import channel_grid, spatial, statistics

        stats = statistics(outputs)
        rows = [{"epoch": epoch, "step": step, "layer": layer, **values} for layer, values in stats.items()]
        path = self.run_dir / "activations.csv"
        earlier = pd.read_csv(path, dtype={"layer": str}) if path.is_file() else pd.DataFrame()
        earlier = earlier[earlier["epoch"] < epoch] if len(earlier) else earlier  # a resume replays later epochs
        frame = pd.concat([earlier, pd.DataFrame(rows)], ignore_index=True) if len(earlier) else pd.DataFrame(rows)
        atomic_write_text(path, frame.to_csv(index=False))
        for layer, values in stats.items():
            for key, value in values.items():
                self.writer.add_scalar(f"activations/{layer}/{key}", value, step)
        self.writer.add_image("feature_maps/input", image, step)
        for layer, maps in spatial(outputs).items():
            self.writer.add_image(f"feature_maps/{layer}", channel_grid(maps[0], channels), step)
        self.writer.flush()

    def _figures_due(self) -> bool:
        due = time.monotonic() - self._drawn_at >= self._draw_cost / FIGURE_TIME_SHARE
        if not due and not self._said_throttle:
            self._said_throttle = True
            log.info("figures: plots/*.png and TensorBoard's confusion images are redrawn once the time since the "
                     "last drawing is %.0fx what drawing takes (at most %.0f%% of the run's time), and at the end; "
                     "metrics.csv, confusion/*.csv and the TensorBoard scalars are written every epoch",
                     1 / FIGURE_TIME_SHARE, 100 * FIGURE_TIME_SHARE)
        return due

    def _draw_figures(self) -> None:
        """plots/*.png from the whole history, and the TensorBoard confusion images of the pending epoch."""
        frame, epoch, step, confusions = self._pending
        start = time.monotonic()
        for split, confusion in confusions.items() if self.tensorboard else ():  # (a figure no writer closes)
            self.writer.add_figure(f"confusion/{split}", confusion_figure(confusion, self.labels,
                                                                          f"{split} confusion, epoch {epoch}"), step)
        plot_history(frame, self.run_dir / "plots")
        self._drawn_at, self._draw_cost, self._pending = time.monotonic(), time.monotonic() - start, None

    def _histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        values = values.detach().float().cpu()
        if torch.isfinite(values).all():  # a diverged run has NaN weights: TensorBoard cannot bin those
            self.writer.add_histogram(tag, values, step)

    def finish(self, summary: dict, hparams: dict) -> None:
        """The last figures, summary.json with the diagnosis of the curves (also logged), and the trackers' end."""
        findings = diagnose(pd.DataFrame(self.history), summary, len(self.labels), read_activations(self.run_dir))
        summary["diagnostics"] = as_dicts(findings)
        for finding in findings:
            (log.warning if finding.severity == "warning" else log.info)("diagnosis: %s", finding.line())
        if self.history and not findings:
            log.info("diagnosis: no problems found in the curves")
        if self._pending is not None:
            self._draw_figures()
        self.write_json("summary.json", summary)
        final = {k: v for k, v in summary.get("final", {}).items()
                 if isinstance(v, (int, float)) and k != "epoch" and math.isfinite(v)}
        if final:
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            # Written into this run's own event file so TensorBoard's HParams tab links it to its scalars.
            for event in hparams_summary(hparams, final) if self.tensorboard else ():
                self.writer.file_writer.add_summary(event)
        self.writer.close()
        self._each_tracker("finishing", lambda tracker: tracker.finish(self.run_dir, summary))
