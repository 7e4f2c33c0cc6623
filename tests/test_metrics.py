"""The metric set against scikit-learn on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from trainlab.metrics import ClassificationMetrics


@pytest.mark.parametrize("num_classes, batches", [(6, [40, 40, 17]), (12, [64, 33])])
def test_metrics_match_sklearn(num_classes, batches):
    g = torch.Generator().manual_seed(num_classes)
    metrics = ClassificationMetrics(num_classes, "val", top_k=5, average="macro")
    all_logits, all_targets, weighted = [], [], 0.0
    for size in batches:
        target = torch.randint(0, num_classes, (size,), generator=g)
        logits = torch.randn(size, num_classes, generator=g)
        logits[torch.arange(size), target] += 1.5  # better than chance, not perfect
        loss = torch.nn.functional.cross_entropy(logits, target)
        metrics.update(logits, target, loss)
        all_logits.append(logits)
        all_targets.append(target)
        weighted += loss.item() * size
    values, confusion = metrics.compute()
    logits, y = torch.cat(all_logits), torch.cat(all_targets).numpy()
    probs = logits.softmax(1).double().numpy()
    pred = logits.argmax(1).numpy()
    labels = list(range(num_classes))
    expected = {
        "val/loss": weighted / len(y),
        "val/acc1": sk.accuracy_score(y, pred),
        "val/acc5": sk.top_k_accuracy_score(y, probs, k=5, labels=labels),
        "val/precision": sk.precision_score(y, pred, average="macro", zero_division=0),
        "val/recall": sk.recall_score(y, pred, average="macro", zero_division=0),
        "val/f1": sk.f1_score(y, pred, average="macro", zero_division=0),
        "val/kappa": sk.cohen_kappa_score(y, pred),
        "val/auroc": sk.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels),
    }
    assert list(values) == list(expected)  # names and order are the public contract
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-5), key
    assert np.array_equal(confusion.numpy(), sk.confusion_matrix(y, pred, labels=labels))


def test_reset_starts_a_new_epoch():
    metrics = ClassificationMetrics(3, "train", top_k=5, average="macro", with_auroc=False)
    metrics.update(torch.eye(3), torch.tensor([0, 1, 2]), torch.tensor(0.1))
    metrics.reset()
    metrics.update(torch.eye(3), torch.tensor([1, 2, 0]), torch.tensor(2.0))
    values, _ = metrics.compute()
    assert values["train/acc1"] == 0.0 and values["train/loss"] == pytest.approx(2.0)
    assert "train/auroc" not in values


def test_auroc_averages_over_the_classes_present():
    """With classes absent from the targets (a short validation), the macro AUROC is the mean over the
    classes that occur, each one-vs-rest (scikit-learn's definition), not dragged down by zeros."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (60,), generator=g)  # classes 4 and 5 never occur
    logits = torch.randn(60, 6, generator=g)
    logits[torch.arange(60), target] += 1.0
    metrics = ClassificationMetrics(6, "val", top_k=5, average="macro")
    metrics.update(logits, target, torch.tensor(1.0))
    probs = logits.softmax(1).numpy()
    expected = np.mean([sk.roc_auc_score(target.numpy() == c, probs[:, c]) for c in range(4)])
    assert metrics.compute()[0]["val/auroc"] == pytest.approx(expected, abs=1e-6)
