"""Side-by-side speed measurements for scripts/bench_*.py: trainlab against the loops users compare it
with. Every function returns images per second; `alternate` runs the sides A B A B to cancel drift."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

from trainlab.augment import Normalize
from trainlab.core.config import component, compose
from trainlab.data import FakeData
from trainlab.data.base import Split, channel_stats
from trainlab.data.testing import write_tiny_imagenet

IMAGENET_MEAN, IMAGENET_STD = (0.480, 0.448, 0.398), (0.277, 0.269, 0.282)


def tiny_tree(root: Path, classes: int = 20, per_class: int = 80) -> Path:
    """A generated tree in the tiny-imagenet-200 layout (64x64 JPEGs), written once per folder."""
    if not (root / "wnids.txt").is_file():
        wnids = tuple(f"n{k:08d}" for k in range(classes))
        write_tiny_imagenet(root, wnids=wnids, train_per_class=per_class, val_per_class=2, test_images=0)
    return root


def real_size_tiny(folder: Path, classes: int = 200, per_class: int = 500, val: int = 10_000) -> tuple[Path, Path]:
    """Tiny-ImageNet at its real size (100,000 train and 10,000 val 64x64 JPEGs) twice: unpacked, and as the
    official zip (deflated, top folder tiny-imagenet-200/). 500 distinct noisy images are reused (decoding
    costs the same whatever the pixels); written in a few seconds instead of encoding 110,000."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(500):
        buffer = io.BytesIO()
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    wnids = [f"n{k:08d}" for k in range(classes)]
    files = {"wnids.txt": "\n".join(wnids).encode(), "words.txt": "\n".join(f"{w}\t{w}" for w in wnids).encode()}
    for c, w in enumerate(wnids):
        files[f"train/{w}/{w}_boxes.txt"] = b""
        for k in range(per_class):
            files[f"train/{w}/images/{w}_{k}.JPEG"] = jpegs[(c * per_class + k) % len(jpegs)]
    annotations = []
    for k in range(val):
        files[f"val/images/val_{k}.JPEG"] = jpegs[k % len(jpegs)]
        annotations.append(f"val_{k}.JPEG\t{wnids[k % classes]}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = "\n".join(annotations).encode()
    root = folder / "tiny-imagenet-200"
    with zipfile.ZipFile(folder / "tiny-imagenet-200.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            z.writestr(f"tiny-imagenet-200/{name}", data)
    return root, folder / "tiny-imagenet-200.zip"


def alternate(sides: dict[str, Callable[[], float]], rounds: int = 2, warmup: bool = False) -> dict[str, list[float]]:
    """Run every side once per round, in order (A B A B ...): slow drift of the machine hits both.
    `warmup`: one untimed run of each side first (allocator, thread pools, page cache)."""
    for run in sides.values() if warmup else ():
        run()
    results: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            results[name].append(run())
    return results


def report(title: str, results: dict[str, list[float]], ratios: dict[str, tuple[str, str]],
           unit: str = "images/s") -> None:
    """A table of each side's runs and mean, then one `RATIO name=value ...` line."""
    print(f"\n{title}")
    width = max(len(n) for n in results)
    for name, values in results.items():
        runs = "  ".join(f"{v:8.1f}" for v in values)
        print(f"  {name:<{width}}  {runs}   mean {sum(values) / len(values):8.1f} {unit}")
    mean = {n: sum(v) / len(v) for n, v in results.items()}
    print("RATIO " + " ".join(f"{key}={mean[a] / mean[b]:.3f}" for key, (a, b) in ratios.items()))


def textbook_loader(root: Path, batch_size: int, workers: int, train: bool = True) -> DataLoader:
    """The tutorial pipeline: ImageFolder + PIL + per-image transforms + DataLoader workers."""
    steps = [T.RandomCrop(64, padding=4), T.RandomHorizontalFlip()] if train else []
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers, drop_last=train,
                      persistent_workers=False)


def textbook_train_ips(root: Path, batch_size: int, steps: int, workers: int = 2) -> float:
    """The textbook loop: fp32, the tutorial pipeline above, resnet18, SGD."""
    loader = textbook_loader(root, batch_size, workers)
    model = torchvision.models.resnet18(num_classes=len(loader.dataset.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def trainlab_train_ips(overrides: list[str]) -> float:
    """`trainlab train` with the given overrides (in this process, or with `device.count>1` in the worker
    processes it starts): its own recorded throughput/train_ips, all processes together."""
    return trainlab_train_row(overrides)["throughput/train_ips"]


def trainlab_train_row(overrides: list[str]) -> dict:
    """The last epoch's metrics.csv row of `trainlab train` with the given overrides, run in a temporary folder."""
    from trainlab.commands.train import train_command

    with tempfile.TemporaryDirectory() as run_dir:
        return train_command(compose(overrides), Path(run_dir), list(overrides))


_MADE: dict[tuple, dict] = {}


class RandomImages(FakeData):
    """`dataset=fake` at any size (`dataset._target_=benchlib.RandomImages`): uniform random uint8 images and
    labels, made once per process (100,000 64x64 images are 1.2 GB; FakeData's float noise needs 5 GB more)."""

    def setup(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        key = (self.num_classes, self.image_size, self.sizes["train"], self.sizes["val"], self.seed)
        if key not in _MADE:
            g = torch.Generator().manual_seed(self.seed)
            _MADE[key] = {}
            for name in ("train", "val"):
                n, s = self.sizes[name], self.image_size
                _MADE[key][name] = Split(torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g),
                                         torch.randint(0, self.num_classes, (n,), generator=g),
                                         [f"random://{name}/{i}" for i in range(n)])
        self.splits = {name: _MADE[key][name] for name in splits if name in _MADE[key]}
        self.mean, self.std = channel_stats(_MADE[key]["train"].images[:4096])


def bare_train_ips(images: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int, steps: int,
                   precision: str, channels_last: bool, in_memory: bool = False) -> float:
    """The leanest loop on decoded uint8 images: batched augmentation, autocast, resnet18, SGD, nothing
    else (no metrics, no gradient norm, no logging). `in_memory`: one fixed batch, no data pipeline at all."""
    augment = component("augment", "standard", mean=IMAGENET_MEAN, std=IMAGENET_STD, channels=None)
    model = torchvision.models.resnet18(num_classes=num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    fixed = augment.train(images[:batch_size]).contiguous(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    model.train()
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        if in_memory:
            x, y = fixed, labels[:batch_size]
        else:
            index = torch.randint(0, len(images), (batch_size,), generator=g)
            x, y = augment.train(images[index], g).contiguous(memory_format=fmt), labels[index]
        with autocast:
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


@torch.inference_mode()
def bare_eval_ips(model: nn.Module, images: torch.Tensor, batch_size: int, precision: str) -> float:
    """A bare inference_mode loop at the given precision: normalise, forward, nothing else."""
    augment = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    model.eval()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        x = augment.normalize(images[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
        with autocast:
            model(x)
    return len(images) / (time.perf_counter() - start)


def imagefolder_delivery_ips(root: Path, batch_size: int, batches: int, workers: int = 0) -> float:
    """Images per second that the tutorial pipeline delivers (no model)."""
    loader = textbook_loader(root, batch_size, workers)
    seen, start = 0, time.perf_counter()
    for i, (_, y) in enumerate(loader):
        if i == batches:
            break
        seen += len(y)
    return seen / (time.perf_counter() - start)


def trainlab_delivery_ips(data, batch_size: int, batches: int) -> float:
    """Images per second from trainlab's loader over the decoded cache, augmented and normalised."""
    augment = component("augment", "standard", mean=data.mean, std=data.std, channels=None)
    loader = data.loader("train")
    g = torch.Generator().manual_seed(0)
    seen, start = 0, time.perf_counter()
    for epoch in range(1, 1000):
        loader.sampler.set_epoch(epoch)
        for images, labels in loader:
            augment.train(images, g).contiguous(memory_format=torch.channels_last)
            seen += len(labels)
            if seen >= batches * batch_size:
                return seen / (time.perf_counter() - start)
    return seen / (time.perf_counter() - start)
