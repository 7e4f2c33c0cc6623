"""The classification metric set, accumulated on the device with torchmetrics and computed once per epoch.

Names are a public contract shared by the CSV, TensorBoard, the console and the reports:
`{split}/loss`, `{split}/acc1`, `{split}/acc5`, `{split}/precision`, `{split}/recall`, `{split}/f1`,
`{split}/kappa`, and `val/auroc`.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

METRIC_NAMES = ("loss", "acc1", "acc5", "precision", "recall", "f1", "kappa", "auroc")


class ClassificationMetrics:
    """Loss (mean over samples), top-1/top-k accuracy, macro precision/recall/F1, Cohen's kappa,
    macro one-vs-rest AUROC (optional: it keeps every probability) and the confusion matrix."""

    def __init__(self, num_classes: int, split: str, top_k: int = 5, average: str = "macro",
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
        }
        if with_auroc:
            metrics["auroc"] = MulticlassAUROC(average="macro", thresholds=None, **kw)
        self.split = split
        self.collection = MetricCollection(metrics).to(device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        """`loss` is the batch mean; it is weighted by the batch size so the epoch value is a per-sample mean."""
        logits = logits.detach().float()
        self.collection.update(logits, target)
        self.loss_sum += loss.detach().double() * target.shape[0]
        self.count += target.shape[0]

    def compute(self) -> tuple[dict[str, float], torch.Tensor]:
        """({'val/acc1': ..., ...}, confusion matrix [true, predicted] on the CPU). One host sync."""
        values = self.collection.compute()
        confusion = values.pop("confusion").cpu()
        out = {f"{self.split}/loss": (self.loss_sum / self.count.clamp_min(1)).item()}
        out.update({f"{self.split}/{k}": float(v) for k, v in values.items()})
        return {k: out[k] for k in _ordered(out, self.split)}, confusion

    def reset(self) -> None:
        self.collection.reset()
        self.loss_sum.zero_()
        self.count.zero_()


def _ordered(values: dict, split: str) -> list[str]:
    return [f"{split}/{n}" for n in METRIC_NAMES if f"{split}/{n}" in values]
