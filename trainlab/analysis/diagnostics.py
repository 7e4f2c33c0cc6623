"""Training diagnostics: read a run's per-epoch history and name what went wrong (or right), with the
epochs, the numbers that show it, and what to try. Pure functions of the history: the same findings at
the end of `trainlab train`, from `trainlab diagnose <run_dir>` and in the report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

# Thresholds, and why.
CHANCE_EPOCHS = 3        # give a run a few epochs before calling it stuck: warm-up and BN settle first
CHANCE_FACTOR = 1.5      # val/acc1 below 1.5x chance (1/classes) is "no better than guessing"
EXPLODE_FACTOR = 3.0     # a train loss 3x its best so far (and above its start) is a blow-up, not noise
PLATEAU_EPOCHS = 3       # a plateau must last a few epochs to be more than a slow patch
PLATEAU_REL = 0.01       # < 1% relative change of train/loss per epoch counts as flat
PLATEAU_ACC = 0.95       # a flat loss at >= 95% train accuracy is convergence, not a plateau
OVERFIT_RISE = 0.05      # val/loss 5% above its minimum, with train/loss still falling, is over-fitting
UNDERFIT_ACC = 0.6       # final train/acc1 below 60% ...
UNDERFIT_GAP = 0.05      # ... with val within 5 points of train: the model does not fit the training data
CONFIDENCE_EPOCHS = 2    # val loss and val accuracy rising together for 2+ epochs in a row
GRAD_EXPLODE = 10.0      # a step's gradient norm 10x its epoch's mean (or an epoch's mean 10x an earlier one)
GRAD_VANISH = 1e-4       # a mean global gradient norm this small moves nothing
LR_DONE = 0.05           # the schedule is "finished" when lr is below 5% of its peak
STILL_IMPROVING = 0.005  # val/acc1 gained more than half a point over the last 2 epochs
DEAD_ZEROS = 0.95        # a ReLU layer whose outputs are 95%+ exact zeros on the fixed val batch has mostly died
COLLAPSED_STD = 1e-3     # a layer whose outputs barely vary across images and positions carries no signal


@dataclass
class Finding:
    kind: str
    severity: str          # "warning" (something to fix) or "info" (worth knowing)
    epochs: tuple[int, int]
    evidence: str
    suggestion: str

    def line(self) -> str:
        first, last = self.epochs
        where = f"epoch {first}" if first == last else f"epochs {first}-{last}"
        return f"[{self.severity}] {self.kind} ({where}): {self.evidence}. {self.suggestion}"


def _col(h: pd.DataFrame, name: str) -> pd.Series | None:
    return h[name].astype(float) if name in h and h[name].notna().any() else None


def diagnose(history: pd.DataFrame, summary: dict | None = None, num_classes: int | None = None,
             activations: pd.DataFrame | None = None) -> list[Finding]:
    """Findings for a run's metrics.csv rows (and its summary.json and activations.csv, when there are)."""
    if history is None or len(history) == 0:
        return []
    h = history.reset_index(drop=True)
    checks = (_diverged, _chance, _plateau, _overfitting, _underfitting, _overconfidence, _gradients, _schedule_done)
    findings = [f for check in checks for f in check(h, num_classes)] + _layers(activations)
    if summary and summary.get("stopped") == "early_stopping":
        findings.append(Finding("early stop", "info", (int(h["epoch"].iloc[-1]),) * 2, summary.get("stop_reason", ""),
                                f"the best weights are in checkpoints/best.ckpt (epoch {summary.get('best_epoch')})"))
    return findings


def _diverged(h: pd.DataFrame, _) -> list[Finding]:
    loss = _col(h, "train/loss")
    if loss is None:
        return []
    bad = [int(e) for e, v in zip(h["epoch"], loss) if not math.isfinite(v)]
    if bad:
        return [Finding("diverged", "warning", (bad[0], bad[-1]), f"train/loss is not finite from epoch {bad[0]}",
                        "lower optimizer.lr, set trainer.grad_clip=1.0, or use bf16 instead of fp16")]
    best = loss.cummin()
    blown = h["epoch"][(loss > EXPLODE_FACTOR * best.shift(1)) & (loss > loss.iloc[0])]
    if len(blown):
        e = int(blown.iloc[0])
        i = int(h.index[h["epoch"] == e][0])
        return [Finding("diverged", "warning", (e, e),
                        f"train/loss jumped to {loss[i]:.3g} from a best of {best[i - 1]:.3g}",
                        "lower optimizer.lr or add lr_schedule.warmup_epochs and trainer.grad_clip")]
    return []


def _chance(h: pd.DataFrame, num_classes: int | None) -> list[Finding]:
    acc = _col(h, "val/acc1")
    if acc is None or not num_classes or len(h) < CHANCE_EPOCHS:
        return []
    chance = 1.0 / num_classes
    if acc.iloc[CHANCE_EPOCHS - 1:].max() <= CHANCE_FACTOR * chance:
        loss = _col(h, "train/loss")
        moved = loss is not None and abs(loss.iloc[-1] - loss.iloc[0]) > PLATEAU_REL * CHANCE_EPOCHS * abs(loss.iloc[0])
        cause = ("the learning rate may be too high (try optimizer.lr / 10) or the initialisation bad "
                 "(model.init=kaiming)"
                 if moved else "the loss barely moved: the learning rate may be far too low (try optimizer.lr x 10)")
        return [Finding("chance level", "warning", (int(h["epoch"].iloc[0]), int(h["epoch"].iloc[-1])),
                        f"val/acc1 never rose above {acc.max():.3f} (chance is {chance:.3f}) after {len(h)} epochs",
                        f"{cause}; check that the labels match the images")]
    return []


def _plateau(h: pd.DataFrame, _) -> list[Finding]:
    loss, acc = _col(h, "train/loss"), _col(h, "train/acc1")
    if loss is None or len(h) <= PLATEAU_EPOCHS:
        return []
    change = (loss.diff().abs() / loss.shift(1).abs().clip(lower=1e-12)).iloc[-PLATEAU_EPOCHS:]
    if (change < PLATEAU_REL).all() and (acc is None or acc.iloc[-1] < PLATEAU_ACC):
        first = int(h["epoch"].iloc[-PLATEAU_EPOCHS - 1])
        stayed = f"train/loss stayed at {loss.iloc[-1]:.4f} (< {PLATEAU_REL:.0%} change per epoch)"
        return [Finding("loss plateau", "warning", (first, int(h["epoch"].iloc[-1])),
                        f"{stayed} with train/acc1 {acc.iloc[-1]:.3f}" if acc is not None else stayed,
                        "the learning rate may be too low (try optimizer.lr x 3) or the model too small for the data")]
    return []


def _overfitting(h: pd.DataFrame, _) -> list[Finding]:
    val, train = _col(h, "val/loss"), _col(h, "train/loss")
    if val is None or train is None or len(h) < 3:
        return []
    best = int(val.idxmin())
    if best >= len(h) - 1 or val.iloc[-1] < (1 + OVERFIT_RISE) * val[best] or not train.iloc[-1] < train[best]:
        return []
    gap = ""
    if "train/acc1" in h and "val/acc1" in h:
        gap = f"; train/val accuracy gap {h['train/acc1'].iloc[-1] - h['val/acc1'].iloc[-1]:+.3f}"
    onset = int(h["epoch"][best])
    return [Finding("over-fitting", "warning", (onset, int(h["epoch"].iloc[-1])),
                    f"val/loss turned up after epoch {onset} ({val[best]:.4f} -> {val.iloc[-1]:.4f}) while train/loss "
                    f"kept falling ({train[best]:.4f} -> {train.iloc[-1]:.4f}){gap}",
                    f"keep checkpoints/best.ckpt; add regularisation (optimizer.weight_decay, augment=strong, "
                    f"model.dropout) or enable early_stopping (it would have stopped near epoch {onset})")]


def _underfitting(h: pd.DataFrame, _) -> list[Finding]:
    train, val = _col(h, "train/acc1"), _col(h, "val/acc1")
    if train is None or val is None or len(h) < CHANCE_EPOCHS:
        return []
    if train.iloc[-1] < UNDERFIT_ACC and abs(train.iloc[-1] - val.iloc[-1]) < UNDERFIT_GAP:
        return [Finding("under-fitting", "warning", (int(h["epoch"].iloc[0]), int(h["epoch"].iloc[-1])),
                        f"train/acc1 is only {train.iloc[-1]:.3f} and val/acc1 {val.iloc[-1]:.3f}: the model does not "
                        "fit even the training data", "train longer, raise the learning rate, use a larger model "
                        "(model=resnet34, model.small_stem=true) or less augmentation/regularisation")]
    return []


def _overconfidence(h: pd.DataFrame, _) -> list[Finding]:
    loss, acc = _col(h, "val/loss"), _col(h, "val/acc1")
    if loss is None or acc is None:
        return []
    both_up = (loss.diff() > 0) & (acc.diff() > 0)
    run, best_run = 0, (0, 0)
    for i, up in enumerate(both_up):
        run = run + 1 if up else 0
        if run > best_run[1] - best_run[0]:
            best_run = (i - run + 1, i + 1)
    start, end = best_run
    if end - start >= CONFIDENCE_EPOCHS:
        e0, e1 = int(h["epoch"][start]), int(h["epoch"][end - 1])
        return [Finding("loss up with accuracy up", "warning", (e0, e1),
                        f"val/loss rose {loss[start - 1]:.4f} -> {loss[end - 1]:.4f} while val/acc1 also rose "
                        f"{acc[start - 1]:.3f} -> {acc[end - 1]:.3f}: the model grows over-confident on the images it "
                        "gets wrong", "label smoothing (loss.label_smoothing=0.1) or more regularisation; pick "
                        "checkpoints by val/acc1 (checkpoint.monitor), not val/loss")]
    return []


def _gradients(h: pd.DataFrame, _) -> list[Finding]:
    mean, peak = _col(h, "grad_norm"), _col(h, "grad_norm_max")
    findings = []
    if mean is None:
        return findings
    # Gradient norms shrink as the loss falls (tenfold over a short run is healthy), so a spike is judged
    # against its own epoch's mean, and a blow-up of a whole epoch against the smallest mean before it.
    lowest_before = mean.cummin().shift(1)
    spiking = (peak > GRAD_EXPLODE * mean) if peak is not None else pd.Series(False, index=mean.index)
    spiking |= mean > GRAD_EXPLODE * lowest_before
    spikes = h["epoch"][spiking & (mean > 0)]
    if len(spikes):
        worst, i = (peak if peak is not None else mean), int(spikes.index[0])  # the first: where it started
        findings.append(Finding("exploding gradients", "warning", (int(spikes.iloc[0]), int(spikes.iloc[-1])),
                                f"grad_norm_max reached {worst[i]:.3g} in epoch {int(h['epoch'][i])}, "
                                f"{worst[i] / mean[i]:.0f}x that epoch's mean grad_norm {mean[i]:.3g}"
                                if worst[i] > GRAD_EXPLODE * mean[i] else
                                f"the mean grad_norm rose to {mean[i]:.3g} in epoch {int(h['epoch'][i])}, "
                                f"{mean[i] / lowest_before[i]:.0f}x its lowest before",
                                "set trainer.grad_clip (e.g. 1.0) or lower optimizer.lr"))
    tiny = h["epoch"][mean < GRAD_VANISH]
    if len(tiny):
        findings.append(Finding("vanishing gradients", "warning", (int(tiny.iloc[0]), int(tiny.iloc[-1])),
                                f"mean grad_norm fell to {mean.min():.2e}",
                                "raise the learning rate, check the initialisation (model.init=kaiming), or use a "
                                "model with normalisation and residual connections"))
    return findings


def _schedule_done(h: pd.DataFrame, _) -> list[Finding]:
    lr, acc = _col(h, "lr"), _col(h, "val/acc1")
    if lr is None or acc is None or len(h) < 3 or lr.max() <= 0:
        return []
    gain = acc.iloc[-1] - acc.iloc[-3]
    if lr.iloc[-1] < LR_DONE * lr.max() and gain > STILL_IMPROVING and acc.iloc[-1] >= acc.max():
        return [Finding("still improving", "info", (int(h["epoch"].iloc[-3]), int(h["epoch"].iloc[-1])),
                        f"the lr schedule has run down (lr {lr.iloc[-1]:.2g}, peak {lr.max():.2g}) while "
                        f"val/acc1 still gained {gain:+.3f} over the last 2 epochs",
                        "train longer (a larger trainer.epochs)")]
    return []


def _layers(activations: pd.DataFrame | None) -> list[Finding]:
    """Dead or collapsed layers at the last epoch whose activations were recorded."""
    if activations is None or len(activations) == 0:
        return []
    epoch = int(activations["epoch"].max())
    last = activations[activations["epoch"] == epoch]
    found = []
    dead = last[last["zero_fraction"] >= DEAD_ZEROS]
    if len(dead):
        worst = dead.sort_values("zero_fraction", ascending=False).iloc[0]
        found.append(Finding("dead layers", "warning", (epoch, epoch),
                             f"{len(dead)} layer(s) output {DEAD_ZEROS:.0%}+ zeros on the fixed val batch ("
                             f"{', '.join(f'{r.layer} {r.zero_fraction:.1%}' for r in dead.itertuples())})",
                             f"its ReLUs have died ({worst.layer} worst): lower optimizer.lr, add lr_schedule."
                             "warmup_epochs, or use model.init=kaiming; watch activations/<layer>/zero_fraction"))
    flat = last[(last["std"] < COLLAPSED_STD) & (last["zero_fraction"] < DEAD_ZEROS)]
    if len(flat):
        found.append(Finding("collapsed layers", "warning", (epoch, epoch),
                             f"{', '.join(flat['layer'])} output(s) nearly constant (std < {COLLAPSED_STD:g})",
                             "the layer carries no signal: check the normalisation, lower optimizer.lr or "
                             "optimizer.weight_decay"))
    return found


def as_dicts(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]
