"""The one training step, which `trainlab train` and `trainlab lr-find` both take: the micro-batches of one optimizer
step (forward, loss, the L1 term, the loss scaled to the mean over the step's batches), then unscaling, the gradient
norm, clipping, the optimizer, the schedule and the weight EMA. A second copy is how lr-find came to step without
L1 or clipping: there is none."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from trainlab.core.runtime import Runtime
from trainlab.engine.distributed import Group
from trainlab.models import l1_norm
from trainlab.optim import LRSchedule


@dataclass
class Stepper:
    """What one optimizer step needs, built once (engine.build) so the epoch loop stays short."""
    model: torch.nn.Module
    forward: torch.nn.Module          # for evaluation: the model, or its torch.compile'd wrapper
    train_forward: torch.nn.Module    # for training steps: `forward`, or its DDP wrapper in a process group
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    criterion: torch.nn.Module
    augment: object
    scaler: torch.amp.GradScaler
    runtime: Runtime
    l1: float
    grad_clip: float | None
    group: Group                      # the training processes this one steps with (one, for a plain run)
    num_classes: int = 0
    accumulate: int = 1               # batches per optimizer step (trainer.accumulate_grad_batches)
    ema: torch.optim.swa_utils.AveragedModel | None = None  # trainer.ema_decay's moving average of the weights

    def __post_init__(self) -> None:
        # The parameters the optimizer steps (model.freeze leaves the others out), listed once, not every step.
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]


def to_device(images: torch.Tensor, target: torch.Tensor, runtime: Runtime):
    device = runtime.torch_device
    return images.to(device, non_blocking=True), target.to(device, non_blocking=True)


def as_input(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """A normalised (augmented) batch in the memory format the model was put in."""
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def model_input(images: torch.Tensor, normalize, runtime: Runtime) -> torch.Tensor:
    """uint8 (N, C, H, W) images as the model takes them: on its device, normalised (`normalize`: an
    augment.Normalize, the data's mean/std), in its memory format. Training adds augmentation in between."""
    return as_input(normalize.normalize(images.to(runtime.torch_device, non_blocking=True)), runtime)


@torch.no_grad()
def forward_split(forward: torch.nn.Module, batches: Iterable, normalize, runtime: Runtime,
                  limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The one pass of a model over a split, in eval mode at the runtime's precision, that validation (each epoch,
    and val_ema) and `evaluate`/`predict` all take, so their numbers cannot drift apart: (logits, labels on the
    device) per (uint8 images, labels) batch, at most `limit` batches."""
    for i, (images, labels) in enumerate(batches):
        if limit is not None and i >= limit:
            break
        with runtime.autocast():
            logits = forward(model_input(images, normalize, runtime))
        yield logits, labels.to(runtime.torch_device, non_blocking=True)


def _no_sync(module: torch.nn.Module):
    """DDP's no_sync for a batch whose gradients are only accumulated (no all-reduce until the step's last)."""
    return module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()


@dataclass
class StepResult:
    """What one optimizer step leaves for the loop to record, all on the device (no host sync)."""
    loss: torch.Tensor     # the last micro-batch's training loss
    norm: torch.Tensor     # the global gradient norm before clipping (inf when an fp16 step overflowed)
    # Per micro-batch: (logits, the target they are scored against, its loss). Under MixUp/CutMix the target is
    # the class the mixed image mostly shows (torchvision's rule), so a perfect model scores 1.0.
    scored: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def train_step(s: Stepper, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], size: int,
               generator: torch.Generator, lr: float | None = None) -> StepResult:
    """One optimizer step over `size` micro-batches (the epoch's last step may have fewer than
    accumulate_grad_batches: its loss is the mean over its own batches, as one batch that size would have it).
    `lr`: this step's learning rate instead of the schedule's (lr-find), and the schedule is not stepped."""
    params = s.trainable
    if lr is not None:
        for group in s.optimizer.param_groups:
            group["lr"] = float(lr)
    s.optimizer.zero_grad(set_to_none=True)
    loss, scored = None, []
    for i, (images, target) in enumerate(batches):
        images, target = to_device(images, target, s.runtime)
        x, soft = s.augment.mix(s.augment.train(images, generator), target, s.num_classes, generator)
        # Gradients of the step's earlier batches are only accumulated: DDP all-reduces once, at its last.
        with contextlib.nullcontext() if i == size - 1 else _no_sync(s.train_forward):
            with s.runtime.autocast():
                logits = s.train_forward(as_input(x, s.runtime))
                loss = s.criterion(logits, soft)
            objective = loss + s.l1 * l1_norm(s.model) if s.l1 else loss
            s.scaler.scale(objective / size if size > 1 else objective).backward()
        scored.append((logits.detach(), soft.argmax(1) if soft.dim() == 2 else target, loss.detach()))
    if loss is None:
        raise RuntimeError("train_step was given no batch")
    s.scaler.unscale_(s.optimizer)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if s.grad_clip:
        torch.nn.utils.clip_grads_with_norm_(params, s.grad_clip, norm)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    if lr is None:
        s.schedule.after_step()
    if s.ema is not None:
        s.ema.update_parameters(s.model)
    return StepResult(loss, norm, scored)
