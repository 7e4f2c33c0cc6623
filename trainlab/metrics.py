"""The classification metric set, accumulated on the device as torchmetrics `Metric`s and computed once per epoch.

Names are a public contract shared by the CSV, TensorBoard, the console and the reports:
`{split}/loss`, `{split}/acc1`, `{split}/acc5`, `{split}/precision`, `{split}/recall`, `{split}/f1`,
`{split}/kappa`, and `val/auroc`.

Every count-based metric (acc1, precision, recall, F1, kappa) derives from one confusion matrix counted with an
`index_add_` per batch. torchmetrics' own classes count with `torch.bincount`, which on a GPU reads the largest
index back to the host (twice per call, once per metric): five host syncs in every training step.
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAUROC

from trainlab.core.columns import METRIC_NAMES
from trainlab.core.errors import require

AVERAGES = ("macro", "weighted", "micro")


class SampleMean(Metric):
    """The per-sample mean of batch means, each weighted by its batch size, in float64; a NaN stays NaN so a
    diverged epoch shows. (torchmetrics' MeanMetric drops the weights when NaN filtering is disabled.)"""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total += value.detach().double() * weight
        self.count += weight

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)


class ConfusionCounts(Metric):
    """The confusion matrix [true, predicted] as int64 counts; an update adds a batch without a host sync."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("matrix", torch.zeros(num_classes * num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        index = target.long() * self.num_classes + preds.long()
        self.matrix.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> torch.Tensor:
        return self.matrix.view(self.num_classes, self.num_classes)


class TopKCorrect(Metric):
    """The share of samples whose target is among the k highest logits."""

    full_state_update = False

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.add_state("correct", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        top = logits.topk(self.k, dim=1).indices
        self.correct += (top == target.view(-1, 1)).any(dim=1).sum()
        self.total += target.shape[0]

    def compute(self) -> torch.Tensor:
        return self.correct.double() / self.total.clamp_min(1)


def from_confusion(confusion: torch.Tensor, average: str) -> dict[str, torch.Tensor]:
    """acc1, precision, recall, f1 and Cohen's kappa of a confusion matrix [true, predicted], as scikit-learn
    defines them with zero_division=0: a class's score with an empty denominator is 0, and `macro` averages over
    the classes that occur in the targets or the predictions (`weighted`: by their support)."""
    cm = confusion.double()
    n = cm.sum()
    tp = cm.diagonal()
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)
    acc1 = tp.sum() / n.clamp_min(1)

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))

    per_class = {"precision": ratio(tp, predicted), "recall": ratio(tp, support),
                 "f1": ratio(2 * tp, support + predicted)}
    if average == "micro":  # one label per sample: micro precision = recall = F1 = accuracy
        scores = {name: acc1 for name in per_class}
    else:
        weights = support if average == "weighted" else ((support + predicted) > 0).double()
        scores = {name: ratio((v * weights).sum(), weights.sum()) for name, v in per_class.items()}
    expected = (support * predicted).sum() / (n * n).clamp_min(1)
    kappa = ratio(acc1 - expected, 1 - expected)
    return {"acc1": acc1, **scores, "kappa": kappa}


class ClassificationMetrics:
    """Loss (mean over samples), top-1/top-k accuracy, macro precision/recall/F1, Cohen's kappa,
    macro one-vs-rest AUROC (optional: it keeps every probability) and the confusion matrix."""

    def __init__(self, num_classes: int, split: str, top_k: int, average: str,
                 with_auroc: bool = True, device: torch.device | str = "cpu"):
        require(average in AVERAGES, f"metrics.average must be one of {', '.join(AVERAGES)} (got {average!r})")
        require(int(top_k) >= 1, f"metrics.top_k must be >= 1 (got {top_k})")
        metrics = {
            "confusion": ConfusionCounts(num_classes),
            "acc5": TopKCorrect(min(int(top_k), num_classes)),
            "loss": SampleMean(),
        }
        if with_auroc:
            # Per class here; compute() averages over the classes that occur, as scikit-learn does
            # (torchmetrics' macro average would count an absent class as 0).
            metrics["auroc"] = MulticlassAUROC(num_classes=num_classes, average=None, thresholds=None,
                                               validate_args=False)
        self.split, self.average = split, average
        # compute_groups=False: every metric owns its state, so a mid-epoch checkpoint can save and restore it.
        # In a process group, compute() gathers every rank's state first (torchmetrics' own sync), so the
        # values cover all ranks' samples, each counted once.
        self.collection = MetricCollection(metrics, compute_groups=False).to(device)

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        """`loss` is the batch mean."""
        logits = logits.detach().float()
        for name, metric in self.collection.items():
            if name == "loss":
                metric.update(loss, target.shape[0])
            elif name == "confusion":
                metric.update(logits.argmax(dim=1), target)
            elif name == "auroc":
                # Probabilities, always: torchmetrics softmaxes a batch only when some value lies outside [0, 1],
                # so a batch of small logits (a freshly initialised model's) would be ranked by raw logits.
                metric.update(logits.softmax(dim=1), target)
            else:
                metric.update(logits, target)

    def compute(self) -> tuple[dict[str, float], torch.Tensor]:
        """({'val/acc1': ..., ...}, confusion matrix [true, predicted] on the CPU). One host sync."""
        with warnings.catch_warnings():  # "no positive samples" for absent classes: handled below
            warnings.simplefilter("ignore", UserWarning)
            values = self.collection.compute()
        confusion = values.pop("confusion")
        values |= from_confusion(confusion, self.average)
        confusion = confusion.cpu()
        if "auroc" in values:
            support = confusion.sum(dim=1).to(values["auroc"].device)
            present = (support > 0) & (support < support.sum())  # one-vs-rest needs positives and negatives
            values["auroc"] = values["auroc"][present].mean() if present.any() else torch.tensor(float("nan"))
        out = {f"{self.split}/{k}": float(v) for k, v in values.items()}
        return {k: out[k] for k in _ordered(out, self.split)}, confusion

    def state_dict(self) -> dict:
        """The accumulated state mid-epoch (tensors only; list states such as AUROC's are not saved)."""
        states = {f"{name}.{key}": getattr(metric, key).clone() for name, metric in self.collection.items()
                  for key in metric.metric_state if isinstance(getattr(metric, key), torch.Tensor)}
        return {"metrics": states}

    def load_state_dict(self, state: dict) -> None:
        state = {"metrics": _upgrade(state["metrics"])}
        for name, metric in self.collection.items():
            for key in metric.metric_state:
                if f"{name}.{key}" in state["metrics"]:
                    setattr(metric, key, state["metrics"][f"{name}.{key}"].to(metric.device))
            metric._update_count = max(metric._update_count, 1)  # states hold data: compute() must not warn

    def reset(self) -> None:
        self.collection.reset()


def _upgrade(states: dict) -> dict:
    """Mid-epoch states saved by trainlab versions that counted with torchmetrics' classes: the confusion
    matrix and the top-k counts carry over (the other metrics derive from them now)."""
    states = dict(states)
    if "confusion.confmat" in states:
        states["confusion.matrix"] = states.pop("confusion.confmat").long().flatten()
    if "acc5.tp" in states and "acc5.correct" not in states:
        tp, fn = states["acc5.tp"].long().sum(), states["acc5.fn"].long().sum()
        states["acc5.correct"], states["acc5.total"] = tp, tp + fn
    return states


def _ordered(values: dict, split: str) -> list[str]:
    return [f"{split}/{n}" for n in METRIC_NAMES if f"{split}/{n}" in values]
