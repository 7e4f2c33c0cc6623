"""The classification metric set, accumulated on the device with torchmetrics and computed once per epoch.

Names are a public contract shared by the CSV, TensorBoard, the console and the reports:
`{split}/loss`, `{split}/acc1`, `{split}/acc5`, `{split}/precision`, `{split}/recall`, `{split}/f1`,
`{split}/kappa`, and `val/auroc`.
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from trainlab.columns import METRIC_NAMES


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


class ClassificationMetrics:
    """Loss (mean over samples), top-1/top-k accuracy, macro precision/recall/F1, Cohen's kappa,
    macro one-vs-rest AUROC (optional: it keeps every probability) and the confusion matrix."""

    def __init__(self, num_classes: int, split: str, top_k: int, average: str,
                 with_auroc: bool = True, device: torch.device | str = "cpu"):
        kw = dict(num_classes=num_classes, validate_args=False)
        metrics = {
            "acc1": MulticlassAccuracy(top_k=1, average="micro", **kw),
            "acc5": MulticlassAccuracy(top_k=min(int(top_k), num_classes), average="micro", **kw),
            "precision": MulticlassPrecision(average=average, **kw),
            "recall": MulticlassRecall(average=average, **kw),
            "f1": MulticlassF1Score(average=average, **kw),
            "kappa": MulticlassCohenKappa(**kw),
            "confusion": MulticlassConfusionMatrix(**kw),
            "loss": SampleMean(),
        }
        if with_auroc:
            # Per class here; compute() averages over the classes that occur, as scikit-learn does
            # (torchmetrics' macro average would count an absent class as 0).
            metrics["auroc"] = MulticlassAUROC(average=None, thresholds=None, **kw)
        self.split = split
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
            else:
                metric.update(logits, target)

    def compute(self) -> tuple[dict[str, float], torch.Tensor]:
        """({'val/acc1': ..., ...}, confusion matrix [true, predicted] on the CPU). One host sync."""
        with warnings.catch_warnings():  # "no positive samples" for absent classes: handled below
            warnings.simplefilter("ignore", UserWarning)
            values = self.collection.compute()
        confusion = values.pop("confusion").cpu()
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
        for name, metric in self.collection.items():
            for key in metric.metric_state:
                if f"{name}.{key}" in state["metrics"]:
                    setattr(metric, key, state["metrics"][f"{name}.{key}"].to(metric.device))
            metric._update_count = max(metric._update_count, 1)  # states hold data: compute() must not warn

    def reset(self) -> None:
        self.collection.reset()


def _ordered(values: dict, split: str) -> list[str]:
    return [f"{split}/{n}" for n in METRIC_NAMES if f"{split}/{n}" in values]
