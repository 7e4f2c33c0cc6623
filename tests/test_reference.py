"""The whole record against an outsider: metrics.csv of a short run equals, number for number, what the plain
PyTorch loop written out in this file computes from the same images, initial weights, seeds and data order.

Nothing here imports trainlab: the reference reads the PNGs itself, shuffles as docs/outputs.md says, writes
each schedule's learning rate as a formula, and scores every epoch with scikit-learn. When trainlab and this file
disagree, one of them misreads what the config says; the test names the column and epoch where they part.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn import metrics as skm

from helpers import assert_one_line, run, shell

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE, BATCH = 6, 8, 4, 8, 8
EPOCHS, SEED, LR, HIDDEN = 4, 3, 0.05, 16
# trainlab's side: the real config, but for the data (PNG files written here), the model (an MLP whose starting
# weights are a file written here), no augmentation beyond what a case switches on, fp32.
BASE = ["dataset=image_folder", f"dataset.image_size={SIZE}", f"dataset.batch_size={BATCH}", "model=mlp",
        f"model.hidden=[{HIDDEN}]", "augment=none", "optimizer=sgd", f"optimizer.lr={LR}", "scheduler=none",
        f"trainer.epochs={EPOCHS}", f"seed={SEED}", "trainer.precision=32", "trainer.channels_last=false",
        "trainer.threads=1", "trainer.histogram_every_n_epochs=0", "trainer.activations_every_n_epochs=0",
        "logger=[]"]
# Compared with a tolerance for float32's order of operations (the two loops normalise and sum in their own
# order); a real difference (a wrong lr, a wrong target, another loss) is larger by orders of magnitude.
CLOSE = {"rel": 2e-4, "abs": 2e-5}


# ------------------------------------------------------------------------------------------- the data and weights


def _write_images(root: Path) -> None:
    """root/train/<class>/*.png and root/val/<class>/*.png: a colour pattern per class plus noise, already at
    SIZE pixels (no resizing on either side)."""
    rng = np.random.default_rng(0)
    patterns = rng.uniform(40, 215, (CLASSES, SIZE, SIZE, 3))
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(patterns[c] + rng.normal(0, 60, patterns[c].shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def _read(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) and labels, in torchvision ImageFolder's order (classes, then files, sorted)."""
    images, labels = [], []
    for c, folder in enumerate(sorted(p for p in (root / split).iterdir() if p.is_dir())):
        for path in sorted(folder.glob("*.png")):
            images.append(torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


def _network() -> torch.nn.Sequential:
    """The `mlp` model's layers (the state-dict names must match): flatten, Linear, ReLU, Dropout(0), Linear."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, HIDDEN), torch.nn.ReLU(),
                               torch.nn.Dropout(0.0), torch.nn.Linear(HIDDEN, CLASSES))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    _write_images(root / "images")
    torch.manual_seed(123)
    torch.save(_network().state_dict(), root / "init.pt")
    return root


# ------------------------------------------------------------------------------------------------- the reference


@dataclass
class Recipe:
    """What a case switches on, in the reference's own terms."""
    lr: object = None                   # (epoch index from 0, step index from 0, steps per epoch) -> lr; None: LR
    accumulate: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.0
    ema: float | None = None
    l1: float = 0.0
    weight_decay: float = 5e-4
    clip: float | None = None
    plateau: dict = field(default_factory=dict)  # ReduceLROnPlateau's patience/factor, by hand


def _scores(split: str, logits: torch.Tensor, target: torch.Tensor, loss: float, auroc: bool) -> dict:
    pred = logits.argmax(1).numpy()
    y = target.numpy()
    top5 = logits.topk(min(5, CLASSES), dim=1).indices.numpy()
    row = {f"{split}/loss": loss, f"{split}/acc1": skm.accuracy_score(y, pred),
           f"{split}/acc5": float(np.mean([t in k for t, k in zip(y, top5)])),
           f"{split}/precision": skm.precision_score(y, pred, average="macro", zero_division=0),
           f"{split}/recall": skm.recall_score(y, pred, average="macro", zero_division=0),
           f"{split}/f1": skm.f1_score(y, pred, average="macro", zero_division=0),
           f"{split}/kappa": skm.cohen_kappa_score(y, pred)}
    if auroc:
        row[f"{split}/auroc"] = skm.roc_auc_score(y, logits.softmax(1).numpy(), multi_class="ovr",
                                                  labels=list(range(CLASSES)))
    return row


def _validate(model, images, labels, split: str) -> dict:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
    model.train()
    # val/loss is the plain cross-entropy of the predictions, whatever the training loss.
    return _scores(split, logits, labels, F.cross_entropy(logits, labels).item(), auroc=True)


def _mix(x, target, recipe: Recipe, generator):
    """MixUp/CutMix with the batch rolled by one: lambda ~ Beta(a, a) from two Gamma draws of the global RNG;
    CutMix's box centre from the epoch's generator, lambda corrected to the box's real area."""
    onehot = F.one_hot(target, CLASSES).float()
    if not (recipe.mixup or recipe.cutmix):
        return x, onehot
    alpha = recipe.cutmix or recipe.mixup
    g = torch.distributions.Gamma(torch.full((2,), float(alpha)), 1.0).sample()
    lam = float(g[0] / g.sum())
    other = x.roll(1, 0)
    if recipe.cutmix:
        cy, cx = (torch.rand(2, generator=generator) * SIZE).tolist()
        half = math.sqrt(1 - lam) / 2 * SIZE
        inside = [(cy - half <= r + 0.5 < cy + half) for r in range(SIZE)]
        across = [(cx - half <= c + 0.5 < cx + half) for c in range(SIZE)]
        box = torch.tensor(inside)[:, None] & torch.tensor(across)[None, :]
        x = torch.where(box, other, x)
        lam = 1 - box.sum().item() / SIZE ** 2
    else:
        x = lam * x + (1 - lam) * other
    return x, lam * onehot + (1 - lam) * onehot.roll(1, 0)


def reference(data: Path, recipe: Recipe) -> pd.DataFrame:
    train_x, train_y = _read(data / "images", "train")
    val_x, val_y = _read(data / "images", "val")
    pixels = train_x.double() / 255
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3), unbiased=False)
    mean, std = mean.round(decimals=6).float().view(1, 3, 1, 1), std.round(decimals=6).float().view(1, 3, 1, 1)

    def normalize(images):
        return (images.float() / 255 - mean) / std

    model = _network()
    model.load_state_dict(torch.load(data / "init.pt", weights_only=True))
    ema = None
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=recipe.weight_decay)
    batches_per_epoch = len(train_x) // BATCH
    steps_per_epoch = -(-batches_per_epoch // recipe.accumulate)
    plateau_lr, best, bad = LR, math.inf, 0
    rows, step = [], 0
    for epoch in range(EPOCHS):
        # The documented order: a permutation drawn from seed * 1_000_003 + epoch (epochs from 1); augmentation
        # draws from the global RNG and a generator seeded the same way.
        epoch_seed = SEED * 1_000_003 + epoch + 1
        torch.manual_seed(epoch_seed)
        generator = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch_seed))
        batches = [order[i * BATCH:(i + 1) * BATCH] for i in range(batches_per_epoch)]
        losses, logits_seen, dominant, norms = [], [], [], []
        lrs = []
        for first in range(0, batches_per_epoch, recipe.accumulate):
            group = batches[first:first + recipe.accumulate]
            lr = plateau_lr if recipe.lr is None else recipe.lr(epoch, step, steps_per_epoch)
            lrs.append(lr)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            optimizer.zero_grad()
            for index in group:
                x, soft = _mix(normalize(train_x[index]), train_y[index], recipe, generator)
                logits = model(x)
                loss = F.cross_entropy(logits, soft, label_smoothing=recipe.smoothing)
                objective = loss + recipe.l1 * sum(p.abs().sum() for p in model.parameters())
                (objective / len(group)).backward()
                losses.append((loss.item(), len(index)))
                logits_seen.append(logits.detach())
                dominant.append(soft.argmax(1))  # the target a mixed image mostly shows
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())).item()
            norms.append(norm)
            if recipe.clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
            optimizer.step()
            step += 1
            if recipe.ema is not None:
                if ema is None:
                    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    for k, v in model.state_dict().items():
                        ema[k] += (1 - recipe.ema) * (v - ema[k])
        train_loss = sum(v * n for v, n in losses) / sum(n for _, n in losses)
        row = {"epoch": epoch + 1, "step": step,
               **_scores("train", torch.cat(logits_seen), torch.cat(dominant), train_loss, auroc=False),
               **_validate(model, normalize(val_x), val_y, "val"),
               "lr": sum(lrs) / len(lrs), "grad_norm": sum(norms) / len(norms), "grad_norm_max": max(norms)}
        if ema is not None:
            averaged = _network()
            averaged.load_state_dict(ema)
            row |= {k.replace("val/", "val_ema/"): v
                    for k, v in _validate(averaged, normalize(val_x), val_y, "val").items()}
        if recipe.plateau:  # ReduceLROnPlateau(mode=min, threshold=1e-4 relative) on val/loss, by hand
            if row["val/loss"] < best * (1 - 1e-4):
                best, bad = row["val/loss"], 0
            else:
                bad += 1
            if bad > recipe.plateau["patience"]:
                plateau_lr, bad = plateau_lr * recipe.plateau["factor"], 0
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------- the cases


def _warm(w: int, after):
    """A linear warm-up from lr/100 over the first `w` epochs (to the lr the main schedule starts at), then
    `after(epoch index, ...)` with the run's own epoch count."""
    def lr(epoch, step, steps_per_epoch):
        if epoch < w:
            return after(w, step, steps_per_epoch) * (0.01 + 0.99 * epoch / w)
        return after(epoch, step, steps_per_epoch)
    return lr


def _warm_steps(w: int, after):
    """The same warm-up counted in optimizer steps (lr_schedule.interval=step), then `after(steps since it)`."""
    def lr(epoch, step, steps_per_epoch):
        ramp = w * steps_per_epoch
        if step < ramp:
            return after(0) * (0.01 + 0.99 * step / ramp)
        return after(step - ramp)
    return lr


def _cosine(w: int):
    return lambda e, *_: 0.5 * LR * (1 + math.cos(math.pi * (e - w) / (EPOCHS - w)))


def _cyclic(base: float, up: int):
    def lr(t):  # triangular: base -> LR over `up` steps, back down over as many
        cycle_pos = t % (2 * up)
        return base + (LR - base) * (1 - abs(cycle_pos / up - 1))
    return lr


def _onecycle(t: int, total: int, pct: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    start, floor = LR / div, LR / div / final_div
    peak = pct * total - 1

    def anneal(a, b, frac):
        return b + (a - b) / 2 * (math.cos(math.pi * frac) + 1)
    if t <= peak:
        return anneal(start, LR, t / peak)
    return anneal(LR, floor, (t - peak) / (total - 1 - peak))


STEPS = TRAIN_PER_CLASS * CLASSES // BATCH  # optimizer steps per epoch without accumulation
CASES = {
    "plain": ([], Recipe()),
    "warmup-none": (["lr_schedule.warmup_epochs=2"], Recipe(lr=_warm(2, lambda *_: LR))),
    "warmup-cosine": (["scheduler=cosine", "lr_schedule.warmup_epochs=1"], Recipe(lr=_warm(1, _cosine(1)))),
    "warmup-exponential": (["scheduler=exponential", "scheduler.gamma=0.5", "lr_schedule.warmup_epochs=1"],
                           Recipe(lr=_warm(1, lambda e, *_: LR * 0.5 ** (e - 1)))),
    # Milestones and step_size are epochs of the run, warm-up or not.
    "warmup-step": (["scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5", "lr_schedule.warmup_epochs=1"],
                    Recipe(lr=_warm(1, lambda e, *_: LR * 0.5 ** (e // 2)))),
    "warmup-multistep": (["scheduler=multistep", "scheduler.milestones=[2,3]", "scheduler.gamma=0.5",
                          "lr_schedule.warmup_epochs=1"],
                         Recipe(lr=_warm(1, lambda e, *_: LR * 0.5 ** sum(e >= m for m in (2, 3))))),
    "warmup-cyclic": (["scheduler=cyclic", "scheduler.base_lr=0.01", "scheduler.step_size_up=4",
                       "lr_schedule.warmup_epochs=1"], Recipe(lr=_warm_steps(1, _cyclic(0.01, 4)))),
    "onecycle": (["scheduler=onecycle"], Recipe(lr=lambda e, t, n: _onecycle(t, EPOCHS * n))),
    "plateau": (["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.5"],
                Recipe(plateau={"patience": 0, "factor": 0.5})),
    "accumulation-short-last-step": (["trainer.accumulate_grad_batches=4"], Recipe(accumulate=4)),
    "mixup": (["augment.mixup_alpha=0.4"], Recipe(mixup=0.4)),
    "cutmix": (["augment.cutmix_alpha=1.0"], Recipe(cutmix=1.0)),
    "label-smoothing": (["loss.label_smoothing=0.2"], Recipe(smoothing=0.2)),
    "ema": (["trainer.ema_decay=0.5"], Recipe(ema=0.5)),
    "l1-l2": (["trainer.l1=1e-4", "optimizer.weight_decay=0.01"], Recipe(l1=1e-4, weight_decay=0.01)),
    "grad-clip": (["trainer.grad_clip=0.5"], Recipe(clip=0.5)),
}
RECORDED = ["epoch", "step", "train/loss", "train/acc1", "train/acc5", "train/precision", "train/recall",
            "train/f1", "train/kappa", "val/loss", "val/acc1", "val/acc5", "val/precision", "val/recall", "val/f1",
            "val/kappa", "val/auroc", "lr", "grad_norm", "grad_norm_max"]


def _train(capsys, data: Path, out: Path, overrides: list[str]) -> pd.DataFrame:
    code, _, err = run(capsys, "train", *BASE, f"dataset.root={data / 'images'}", f"model.weights={data / 'init.pt'}",
                       *overrides, f"hydra.run.dir={out}")
    assert code == 0, err
    return pd.read_csv(out / "metrics.csv")


def _assert_same(ours: pd.DataFrame, theirs: pd.DataFrame, columns: list[str]) -> None:
    for epoch, (mine, expected) in enumerate(zip(ours.to_dict("records"), theirs.to_dict("records")), start=1):
        for column in columns:
            assert mine[column] == pytest.approx(expected[column], **CLOSE), \
                f"{column} at epoch {epoch}: trainlab {mine[column]!r}, reference {expected[column]!r}"
    assert len(ours) == len(theirs) == EPOCHS


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_metrics_csv_equals_a_plain_pytorch_loop(case, data, tmp_path, capsys):
    overrides, recipe = CASES[case]
    ours = _train(capsys, data, tmp_path / "run", overrides)
    columns = RECORDED + ([c.replace("val/", "val_ema/") for c in RECORDED if c.startswith("val/")]
                          if recipe.ema is not None else [])
    _assert_same(ours, reference(data, recipe), columns)


@pytest.mark.slow
def test_a_checkpoint_chosen_by_the_ema_metric_is_evaluated_with_the_ema_weights(data, tmp_path, capsys):
    """best.ckpt chosen by val_ema/acc1 holds the epoch where the average scored best: `evaluate` (and `compare`)
    score it with the averaged weights unless told `weights=model`; both match the reference's numbers."""
    out = tmp_path / "run"
    _train(capsys, data, out, ["trainer.ema_decay=0.5", "checkpoint.monitor=val_ema/acc1", "checkpoint.mode=max"])
    expected = reference(data, Recipe(ema=0.5)).iloc[-1]
    for weights, prefix in ((None, "val_ema/"), ("ema", "val_ema/"), ("model", "val/")):
        target = tmp_path / f"eval-{weights}"
        args = ["evaluate", f"ckpt={out / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={target}"]
        code, _, err = run(capsys, *args, *([f"weights={weights}"] if weights else []))
        assert code == 0, err
        record = json.loads((target / "metrics.json").read_text())
        assert record["weights"] == (weights or "ema")
        for name in ("loss", "acc1", "f1", "kappa", "auroc"):
            assert record["metrics"][f"val/{name}"] == pytest.approx(expected[f"{prefix}{name}"], **CLOSE), \
                (weights, name)


def test_a_loss_that_expects_log_probabilities_is_refused_in_one_line(capsys, tmp_path):
    """NLLLoss of raw logits has no lower bound: the logits run off and the loss goes negative."""
    code, out, err = shell("train", "+debug=fast", "loss._target_=torch.nn.NLLLoss", "~loss.label_smoothing",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(code, out, err, "NLLLoss", "log-probabilities", "cross_entropy")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["onecycle", "plateau"])
def test_a_schedule_with_its_own_start_refuses_a_warm_up_in_one_line(scheduler, capsys, tmp_path):
    code, out, err = shell("train", "+debug=fast", f"scheduler={scheduler}", "lr_schedule.warmup_epochs=1",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(code, out, err, f"scheduler={scheduler}", "lr_schedule.warmup_epochs=0")
    assert not (tmp_path / "run").exists()


def test_a_milestone_inside_the_warm_up_is_refused_in_one_line(capsys, tmp_path):
    code, out, err = shell("train", "+debug=fast", "trainer.epochs=4", "scheduler=multistep",
                         "scheduler.milestones=[1,3]", "lr_schedule.warmup_epochs=2", f"hydra.run.dir={tmp_path / 'r'}")
    assert_one_line(code, out, err, "milestone", "warm-up")
