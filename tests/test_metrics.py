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


def test_auroc_ranks_probabilities_even_when_every_logit_lies_in_0_1():
    """A fresh model's logits are small: a batch of them all inside [0, 1] is still ranked by softmax
    probability, as scikit-learn ranks it, like every other batch of the epoch."""
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 4, (50,), generator=g)
    small = torch.rand(50, 4, generator=g) * 0.3 + 0.35  # every value in [0.35, 0.65]
    small[torch.arange(50), target] += 0.05
    large = torch.randn(50, 4, generator=g) * 3
    metrics = ClassificationMetrics(4, "val", top_k=2, average="macro")
    logits = torch.cat([small[:25], large[25:]])  # the first batch all in [0, 1], the second not
    for batch in (slice(0, 25), slice(25, 50)):
        metrics.update(logits[batch], target[batch], torch.tensor(1.0))
    probs = logits.softmax(1).numpy()
    expected = sk.roc_auc_score(target.numpy(), probs, multi_class="ovr", average="macro")
    assert metrics.compute()[0]["val/auroc"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("average", ["macro", "weighted", "micro"])
def test_averages_and_absent_classes_match_sklearn(average):
    """Classes 5 and 6 are never the target and never predicted (left out of a macro average, as scikit-learn
    does without labels=); class 4 is predicted but never the target (precision 0, recall undefined -> 0)."""
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (80,), generator=g)
    pred = torch.where(torch.rand(80, generator=g) < 0.7, target, torch.randint(0, 5, (80,), generator=g))
    logits = torch.nn.functional.one_hot(pred, 7).float() * 3 + torch.rand(80, 7, generator=g)
    metrics = ClassificationMetrics(7, "train", top_k=3, average=average, with_auroc=False)
    metrics.update(logits[:50], target[:50], torch.tensor(1.0))
    metrics.update(logits[50:], target[50:], torch.tensor(1.0))
    values, confusion = metrics.compute()
    y, p = target.numpy(), pred.numpy()
    assert values["train/acc1"] == pytest.approx(sk.accuracy_score(y, p))
    assert values["train/acc5"] == pytest.approx(sk.top_k_accuracy_score(y, logits.numpy(), k=3, labels=range(7)))
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert values[f"train/{name}"] == pytest.approx(fn(y, p, average=average, zero_division=0)), name
    assert values["train/kappa"] == pytest.approx(sk.cohen_kappa_score(y, p))
    assert np.array_equal(confusion.numpy(), sk.confusion_matrix(y, p, labels=range(7)))


def test_a_mid_epoch_state_from_the_torchmetrics_counters_carries_over():
    """interrupted.ckpt files written before the confusion matrix was counted by trainlab itself hold
    torchmetrics' state names: the confusion matrix and the top-k counts are read from them."""
    metrics = ClassificationMetrics(3, "train", top_k=2, average="macro", with_auroc=False)
    old = {"confusion.confmat": torch.tensor([[2, 1, 0], [0, 3, 0], [1, 0, 1]]),
           "acc5.tp": torch.tensor(7), "acc5.fn": torch.tensor(1), "acc5.fp": torch.tensor(1),
           "acc5.tn": torch.tensor(15), "loss.total": torch.tensor(4.0, dtype=torch.float64),
           "loss.count": torch.tensor(8.0, dtype=torch.float64)}
    metrics.load_state_dict({"metrics": old})
    values, confusion = metrics.compute()
    assert confusion.tolist() == old["confusion.confmat"].tolist()
    assert values["train/acc1"] == pytest.approx(6 / 8) and values["train/acc5"] == pytest.approx(7 / 8)
    assert values["train/loss"] == pytest.approx(0.5)
