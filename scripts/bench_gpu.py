#!/usr/bin/env python
"""Tiny-ImageNet scale on one device, no download: trainlab's training step against the textbook GPU loop.

Random 64x64 uint8 images in 200 classes (100,000 for training and 10,000 for validation on a GPU, as many as
Tiny-ImageNet has) are made in memory. Side by side, in one process:
  - `trainlab train` (resident data, its metrics, its record) with the small-stem and the standard-stem ResNet-18
    at each batch size: the second epoch's throughput/train_ips (the first pays cuDNN's algorithm search and any
    compilation), and its validation pass (all metrics, AUROC included) as evaluation images/s;
  - the textbook loop on the same device: a Dataset of PIL images with per-image RandomCrop/flip/ToTensor/
    Normalize, a DataLoader with workers and pinned memory, fp32 (no file decoding: that only favours it);
  - the same model, precision and optimizer on one fixed batch (no data at all): how close the data path
    comes to the model's own speed.
It prints RATIO lines, images/s, and the projected wall time of 50 Tiny-ImageNet epochs.

    .venv/bin/python scripts/bench_gpu.py                      # on a GPU: the full size
    .venv/bin/python scripts/bench_gpu.py --device cpu --images 512 --val-images 128 --steps 2 --batch-sizes 32
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from trainlab.core.config import component
from trainlab.data.base import Split
from trainlab.engine.autotune import Candidate, Workload, measure_step
from trainlab.models import resnet
from trainlab.record.environment import cpu_name

from benchlib import IMAGENET_MEAN, IMAGENET_STD, alternate, report, trainlab_train_row


def resnet18(num_classes: int, small_stem: bool) -> nn.Module:
    return resnet(num_classes, "resnet18", small_stem, dropout=0.0, weights=None, in_channels=3)

class PILImages(Dataset):
    """What torchvision's ImageFolder hands its transforms (a PIL image per item), minus the file decoding."""

    def __init__(self, split: Split, transform):
        self.images, self.labels, self.transform = split.images.permute(0, 2, 3, 1).numpy(), split.labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def textbook_ips(split: Split, classes: int, small_stem: bool, batch: int, steps: int, workers: int,
                 device: torch.device) -> float:
    """The tutorial GPU loop: per-image transforms in DataLoader workers, pinned copies, fp32, SGD."""
    transform = T.Compose([T.RandomCrop(split.images.shape[-1], padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = DataLoader(PILImages(split, transform), batch_size=batch, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False)
    model = resnet18(num_classes=classes, small_stem=small_stem).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    warmup, seen, start = 2, 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            _sync(device)
            start, seen = time.perf_counter(), 0
        if i == warmup + steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - start)


def fixed_batch_ips(classes: int, size: int, small_stem: bool, batch: int, steps: int, precision: str,
                    device: torch.device) -> float:
    """The model alone: one batch already on the device, the same precision, memory format and optimizer as
    trainlab's run (SGD, fused on a GPU), nothing else per step (autotune's own timing)."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return measure_step(lambda: resnet18(classes, small_stem), Candidate(precision, True), device,
                        Workload((3, size, size), classes, batch, steps=steps, warmup=3),
                        make_optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                                                      **fused))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--images", type=int, help="training images (default: 100000 on a GPU, 1024 on a CPU)")
    parser.add_argument("--val-images", type=int, help="validation images (default: 10000 on a GPU, 256 on a CPU)")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, help="timed steps per run (default: 200 on a GPU, 3 on a CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--precision", help="trainlab's and the fixed batch's (default: bf16-mixed on a GPU, 32 on "
                                            "a CPU); the textbook loop is fp32")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="the textbook loop's DataLoader workers")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("trainlab").setLevel(logging.ERROR)  # the runs' own logs (random labels diverge): not the point
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    n_train = args.images or (100_000 if gpu else 1024)
    n_val = args.val_images or (10_000 if gpu else 256)
    steps = args.steps or (200 if gpu else 3)
    precision = args.precision or ("bf16-mixed" if gpu else "32")
    name = torch.cuda.get_device_name(device) if gpu else f"CPU: {cpu_name()}"
    print(f"device: {name}; torch {torch.__version__}; {n_train} training and {n_val} validation images of "
          f"{args.image_size}x{args.image_size} in {args.classes} classes; precision {precision}")

    data = ["dataset=fake", "dataset._target_=benchlib.RandomImages", f"dataset.num_classes={args.classes}",
            f"dataset.train_size={n_train}", f"dataset.val_size={n_val}", f"dataset.image_size={args.image_size}"]
    common = data + ["model=resnet18", "optimizer=sgd", "optimizer.lr=0.1", "scheduler=none", "augment=standard",
                     f"device={device.type}", "trainer.epochs=2", f"trainer.limit_train_batches={steps}",
                     f"trainer.precision={precision}", "trainer.channels_last=true", "trainer.compile=false",
                     "trainer.histogram_every_n_epochs=0", "trainer.activations_every_n_epochs=0",
                     "trainer.log_every_n_steps=1000000", "logger=[]"]
    train_split = component("dataset", "fake", _target_="benchlib.RandomImages", num_classes=args.classes,
                            train_size=n_train, val_size=n_val, image_size=args.image_size, batch_size=1)
    train_split.setup(("train",))
    evaluation: dict[str, float] = {}

    def trainlab(small_stem: bool, batch: int):
        def run() -> float:
            row = trainlab_train_row(common + [f"model.small_stem={str(small_stem).lower()}",
                                                   f"dataset.batch_size={batch}"])
            evaluation[f"{small_stem}-{batch}"] = n_val / row["time/val_s"]
            return row["throughput/train_ips"]
        return run

    sides, ratios = {}, {}
    for small_stem in (True, False):
        stem = "small-stem" if small_stem else "standard-stem"
        textbook = f"textbook loop, {stem}, batch {args.batch_sizes[0]}, fp32, {args.workers} workers"
        sides[textbook] = (lambda s=small_stem: textbook_ips(train_split.splits["train"], args.classes, s,
                                                             args.batch_sizes[0], steps, args.workers, device))
        for batch in args.batch_sizes:
            label = f"trainlab, {stem}, batch {batch}"
            sides[label] = trainlab(small_stem, batch)
            ratios[f"{stem.replace('-', '_')}_b{batch}_vs_textbook"] = (label, textbook)
        fixed = f"one fixed batch, {stem}, batch {args.batch_sizes[0]}"
        sides[fixed] = (lambda s=small_stem: fixed_batch_ips(args.classes, args.image_size, s, args.batch_sizes[0],
                                                             steps, precision, device))
        ratios[f"{stem.replace('-', '_')}_b{args.batch_sizes[0]}_vs_fixed_batch"] = (
            f"trainlab, {stem}, batch {args.batch_sizes[0]}", fixed)
    results = alternate(sides, rounds=args.rounds)
    report(f"training images/s on {name}", results, ratios)
    print("\nevaluation images/s (trainlab's validation pass, every metric): "
          + ", ".join(f"{'small-stem' if k.startswith('True') else 'standard-stem'} batch {k.split('-')[1]} "
                      f"{v:.0f}" for k, v in evaluation.items()))
    print("\nprojected wall time of 50 Tiny-ImageNet epochs (100,000 training + 10,000 validation images each):")
    for label, values in results.items():
        if label.startswith("trainlab"):
            stem, batch = label.split(", ")[1], label.rsplit(" ", 1)[1]
            ips, eval_ips = sum(values) / len(values), evaluation[f"{stem == 'small-stem'}-{batch}"]
            minutes = 50 * (100_000 / ips + 10_000 / eval_ips) / 60
            print(f"  {label}: {minutes:.1f} min")


if __name__ == "__main__":
    main()
