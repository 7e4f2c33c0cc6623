"""The classification metric set, accumulated on the device with torchmetrics and computed once per epoch.

Names are a public contract shared by the CSV, TensorBoard, the console and the reports:
`{split}/loss`, `{split}/acc1`, `{split}/acc5`, `{split}/precision`, `{split}/recall`, `{split}/f1`,
`{split}/kappa`, and `val/auroc`.
"""

from __future__ import annotations

import warnings

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

from trainlab.columns import METRIC_NAMES


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
            # Per class here; compute() averages over the classes that occur, as scikit-learn does
            # (torchmetrics' macro average would count an absent class as 0).
            metrics["auroc"] = MulticlassAUROC(average=None, thresholds=None, **kw)
        self.split = split
        # compute_groups=False: every metric owns its state, so a mid-epoch checkpoint can save and restore it.
        self.collection = MetricCollection(metrics, compute_groups=False).to(device)
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
        with warnings.catch_warnings():  # "no positive samples" for absent classes: handled below
            warnings.simplefilter("ignore", UserWarning)
            values = self.collection.compute()
        confusion = values.pop("confusion").cpu()
        if "auroc" in values:
            support = confusion.sum(dim=1).to(values["auroc"].device)
            present = (support > 0) & (support < support.sum())  # one-vs-rest needs positives and negatives
            values["auroc"] = values["auroc"][present].mean() if present.any() else torch.tensor(float("nan"))
        out = {f"{self.split}/loss": (self.loss_sum / self.count.clamp_min(1)).item()}
        out.update({f"{self.split}/{k}": float(v) for k, v in values.items()})
        return {k: out[k] for k in _ordered(out, self.split)}, confusion

    def state_dict(self) -> dict:
        """The accumulated state mid-epoch (tensors only; list states such as AUROC's are not saved)."""
        states = {f"{name}.{key}": getattr(metric, key).clone() for name, metric in self.collection.items()
                  for key in metric.metric_state if isinstance(getattr(metric, key), torch.Tensor)}
        return {"metrics": states, "loss_sum": self.loss_sum.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        for name, metric in self.collection.items():
            for key in metric.metric_state:
                if f"{name}.{key}" in state["metrics"]:
                    setattr(metric, key, state["metrics"][f"{name}.{key}"].to(self.loss_sum.device))
            metric._update_count = max(metric._update_count, 1)  # states hold data: compute() must not warn
        self.loss_sum.copy_(state["loss_sum"])
        self.count.copy_(state["count"])

    def reset(self) -> None:
        self.collection.reset()
        self.loss_sum.zero_()
        self.count.zero_()


def _ordered(values: dict, split: str) -> list[str]:
    return [f"{split}/{n}" for n in METRIC_NAMES if f"{split}/{n}" in values]
