"""The training step, the one `trainlab train` and `trainlab lr-find` share: checked against a step written out by
hand (an MLP without BatchNorm or dropout, no augmentation, so every number is exact)."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from trainlab.core.config import compose, load_settings
from trainlab.core.runtime import resolve_runtime, seed_everything
from trainlab.engine.build import build_run
from trainlab.engine.interrupt import StopRequest
from trainlab.engine.loop import EpochTally, train_epoch
from trainlab.record.recorder import SilentRecorder

from helpers import FAST, run

EXACT = [*FAST, "model=mlp", "augment=none", "scheduler=none", "loss.label_smoothing=0.0"]


def _sgd_step(model: torch.nn.Module, lr: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
            p.grad = None


def test_the_epochs_last_shorter_accumulation_step_is_the_mean_over_its_own_batches(tmp_path):
    """5 batches with accumulate_grad_batches=4: one step of the mean over batches 1-4, then one of batch 5 alone
    (as a batch of that size would have it), not batch 5's gradient divided by 4."""
    cfg = compose(EXACT + ["dataset.train_size=80", "dataset.batch_size=16", "trainer.accumulate_grad_batches=4",
                           "optimizer=sgd", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.lr=0.5"])
    run_ = build_run(cfg, load_settings(cfg), resolve_runtime("cpu", "32", "false", "auto", "false"))
    s = run_.stepper
    run_.train_loader.sampler.set_epoch(1)
    batches = [(images.clone(), target.clone()) for images, target in run_.train_loader]
    assert len(batches) == 5
    reference = copy.deepcopy(s.model).train()
    for group in (batches[:4], batches[4:]):
        images = torch.cat([b[0] for b in group])
        target = torch.cat([b[1] for b in group])
        s.criterion(reference(s.augment.train(images)), target).backward()
        _sgd_step(reference, 0.5)

    run_.train_loader = batches
    recorder = SilentRecorder(tmp_path)
    tally = EpochTally(torch.device("cpu"), epoch=1, step=0)
    with StopRequest() as stop:
        train_epoch(run_, tally, torch.Generator().manual_seed(0), recorder, stop, log_every=10**6)
    assert tally.step == 2 and tally.batches == 5
    for (name, ours), theirs in zip(s.model.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(ours, theirs, atol=1e-6), name


def test_lr_find_steps_as_train_does_with_l1_and_gradient_clipping(tmp_path, capsys):
    """lr-find's losses are those of the training step with trainer.l1's penalty and trainer.grad_clip's clipping at
    each of its learning rates (both change every step after the first)."""
    options = EXACT + ["trainer.l1=1e-3", "trainer.grad_clip=0.05", "lr_find.num_steps=6", "lr_find.min_lr=0.05",
                       "lr_find.max_lr=0.5", "lr_find.stop_factor=1000"]
    code, _, err = run(capsys, "lr-find", *options, f"hydra.run.dir={tmp_path / 'lr'}")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "lr" / "lr_find.csv")

    cfg = compose(options, config_name="lr_find")
    settings = load_settings(cfg)
    runtime = resolve_runtime("cpu", "32", "false", "auto", "false")
    seed_everything(settings.seed)
    built = build_run(cfg, settings, runtime)  # the same seed, so the same initial weights as lr-find's
    s, loader = built.stepper, built.train_loader
    loader.sampler.set_epoch(1)
    model = s.model.train()
    losses = []
    for (images, target), lr in zip(loader, table["lr"]):
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        loss = s.criterion(model(s.augment.train(images)), target)
        objective = loss + 1e-3 * torch.stack([p.abs().sum() for p in model.parameters()]).sum()
        s.optimizer.zero_grad()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        s.optimizer.step()
        losses.append(loss.item())
    assert len(losses) == len(table) == 6
    assert torch.allclose(torch.tensor(losses), torch.tensor(table["loss"].tolist()), rtol=1e-5, atol=1e-6)


def test_steps_the_fp16_scaler_skips_are_counted_and_left_out_of_the_gradient_norms(tmp_path, monkeypatch):
    """A GradScaler skips a step whose scaled gradients overflowed (by design, ~1 in 2,000 steps): that step's norm
    is inf. grad_norm and grad_norm_max are over the steps the optimizer took and skipped_steps counts the others,
    checked against the norms torch measured and the scale's halvings (one per skip)."""
    from trainlab.engine.loop import epoch_row

    cfg = compose(EXACT + ["dataset.train_size=64", "dataset.batch_size=8"])
    run_ = build_run(cfg, load_settings(cfg), resolve_runtime("cpu", "32", "false", "auto", "false"))
    run_.stepper.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=10**6)
    backward = iter(range(100))
    overflow = {2, 5}  # the 3rd and 6th steps' gradients overflow, as a too-large scale makes them
    bias = list(run_.stepper.model.parameters())[-1]
    bias.register_hook(lambda grad: grad * float("inf") if next(backward) in overflow else grad)
    measured = []
    total_norm = torch.nn.utils.get_total_norm

    def recording(*args, **kwargs):
        measured.append(total_norm(*args, **kwargs))
        return measured[-1]
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", recording)
    recorder = SilentRecorder(tmp_path)
    tally = EpochTally(torch.device("cpu"), epoch=1, step=0)
    run_.train_loader.sampler.set_epoch(1)
    with StopRequest() as stop:
        train_epoch(run_, tally, torch.Generator().manual_seed(0), recorder, stop, log_every=10**6)
    row, _ = epoch_row(run_, tally)
    norms = torch.stack(measured)
    finite = norms[torch.isfinite(norms)]
    halvings = round(math.log2(2.0 ** 16 / run_.stepper.scaler.get_scale()))
    assert len(norms) == 8 and len(finite) == 6 and halvings == 2
    assert row["skipped_steps"] == 2 and tally.first_bad.item() == -1  # a skip is not a failure
    assert row["grad_norm"] == pytest.approx(finite.mean().item(), rel=1e-6)
    assert row["grad_norm_max"] == pytest.approx(finite.max().item(), rel=1e-6)
