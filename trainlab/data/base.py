"""What every data set gives the runner: decoded uint8 image tensors per split, and batch loaders over them.

Images are decoded once (see `decode.py`) into an (N, C, H, W) uint8 tensor (C = 3, or 1 for a grayscale set),
so a batch is one gather from memory; augmentation and normalisation happen per batch on the training device
(`trainlab.augment`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainlab.core.errors import require
from trainlab.core.runtime import epoch_seed

log = logging.getLogger(__name__)

@dataclass
class Split:
    images: torch.Tensor            # uint8 (N, C, H, W); may be memory-mapped from the cache
    labels: torch.Tensor | None  # int64 (N,); None for an unlabelled split (Tiny-ImageNet's test)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)


class EpochBatches(Sampler):
    """Yields index tensors, one per batch. The order depends only on (seed, epoch), so a run
    can be repeated, and resumed at any epoch, exactly.

    With several training processes, `batch_size` is the global batch: every rank walks the same global
    order and takes every `world`-th sample of each batch, starting at its `rank`. The ranks together see
    exactly the batches one process would (so the LR rule does not change with the process count), and an
    evaluation pass counts every sample once - no padding with repeated samples as DistributedSampler does."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        # Never drop the only batch: a data set smaller than one batch still trains.
        self.drop_last = drop_last and size >= batch_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """`start_batch` > 0 continues an epoch that a checkpoint interrupted, skipping the batches done."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches in a whole epoch (whatever `start_batch` says)."""
        full, rest = divmod(self.size, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def order(self) -> torch.Tensor:
        """This epoch's sample order (drawn on the CPU, so it is the same whatever device trains)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            return torch.randperm(self.size, generator=g)
        return torch.arange(self.size)

    def shards(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        """This rank's indices of each remaining batch of `order` (slices of it, on its device)."""
        for i in range(self.start_batch, len(self)):
            shard = order[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]
            if len(shard):  # only a short last batch can leave a rank without samples
                yield shard

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.shards(self.order())


class _Batches(Dataset):
    """Dataset whose items are whole batches: `view[index_tensor] -> (uint8 images, labels)`."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select, not images[index]: measured ~20x faster for a batch gather on a CPU.
        labels = self.split.labels.index_select(0, index) if self.split.labels is not None \
            else torch.full((len(index),), -1)
        return self.split.images.index_select(0, index), labels


class DeviceBatches:
    """The batches of a split whose images already sit where the model runs (`trainer.data_on_device`): the
    uint8 arrays are copied to the device once, each epoch's order once per epoch, and a batch is an
    on-device gather - no DataLoader, no worker processes, no host-to-device copy or host sync per step.
    On a CPU the arrays are used where they are (in memory or memory-mapped), so the CPU runs this same path.
    Same interface as the DataLoader it replaces: `len()`, iteration, and `.sampler.set_epoch()`."""

    def __init__(self, split: Split, sampler: EpochBatches, device: torch.device):
        self.sampler, self.device = sampler, device
        self.images = split.images.to(device)
        labels = split.labels if split.labels is not None else torch.full((len(split),), -1)
        self.labels = labels.to(device)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.order().to(self.device)
        for index in self.sampler.shards(order):
            yield self.images.index_select(0, index), self.labels.index_select(0, index)


def split_bytes(split: Split) -> int:
    """What a split takes on a device: its uint8 images and int64 labels."""
    return split.images.numel() * split.images.element_size() + len(split) * 8


# On a GPU the data may take at most this share of the free memory: the rest is for the model's weights,
# optimizer state and activations (ResNet-18 at batch 512 and 64x64 needs a few GB).
DEVICE_SHARE = 0.5


def data_placement(setting: str, data: ImageData, device: torch.device,
                   splits: tuple[str, ...] = ("train", "val")) -> tuple[bool, str]:
    """(keep the arrays on the training device?, why) for `trainer.data_on_device` = auto | true | false."""
    need = sum(split_bytes(data.splits[s]) for s in splits)
    size = f"{need / 2**30:.2f} GiB"
    if setting == "false":
        return False, "set by trainer.data_on_device"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        fits = need <= DEVICE_SHARE * free
        room = f"the arrays take {size}, the GPU has {free / 2**30:.1f} GiB free"
        if setting == "true":
            require(need < free, f"trainer.data_on_device=true but {room}: use trainer.data_on_device=auto (or false, "
                                 "the pinned-memory loader)")
            return True, f"set by trainer.data_on_device ({room})"
        if fits:
            return True, f"auto: {room}, so they are copied there once"
        return False, (f"auto: {room}, more than {DEVICE_SHARE:.0%} of it, so batches are copied from pinned memory "
                       "by the DataLoader")
    if setting == "true":
        return True, "set by trainer.data_on_device"
    if data.num_workers:
        return False, f"auto: dataset.num_workers={data.num_workers} asks for DataLoader worker processes"
    return True, (f"auto: on a CPU the decoded arrays ({size}) are already in this process's memory, so batches "
                  "are gathered in the training loop without a DataLoader")


def _seed_worker(worker_id: int) -> None:
    # Workers only gather slices, but seed them anyway so any user transform added later is repeatable.
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@dataclass(eq=False, kw_only=True)
class ImageData:
    """Base of every data set: subclasses fill `classes`, `class_names` and `splits` in `setup()`.

    The fields are the keys of conf/dataset/*.yaml, where their values and meanings are written (no defaults
    here: each value lives once, in conf/). `normalize`: `data` (this data set's per-channel mean/std) or
    `weights` (what the starting weights, model.weights, were trained with; set by the runner)."""

    image_size: int
    batch_size: int
    num_workers: int
    normalize: str

    def __post_init__(self):
        normalize, batch_size, image_size, num_workers = self.normalize, self.batch_size, self.image_size, \
            self.num_workers
        require(normalize in ("data", "weights"), f"dataset.normalize must be data or weights (got {normalize!r})")
        require(int(batch_size) >= 1, f"dataset.batch_size must be >= 1 (got {batch_size})")
        require(int(image_size) >= 8, f"dataset.image_size must be >= 8 (got {image_size})")
        require(int(num_workers) >= 0, f"dataset.num_workers must be >= 0 (got {num_workers})")
        self.image_size, self.batch_size, self.num_workers = int(image_size), int(batch_size), int(num_workers)
        self.classes: list[str] = []       # class ids in index order (wnids for Tiny-ImageNet)
        self.class_names: list[str] = []   # human-readable names, same order
        self.splits: dict[str, Split] = {}
        self.channels = 3                  # 1 for a grayscale set (MNIST): models get it as model.in_channels=null
        self.mean: tuple[float, ...] = (0.5, 0.5, 0.5)
        self.std: tuple[float, ...] = (0.25, 0.25, 0.25)
        self.cache_info: dict = {}
        self.batch_size_configured = self.batch_size  # dataset.batch_size; `batch_size` may be the whole set

    def fit_batch_to(self, world: int) -> None:
        """A training set smaller than one batch trains as one batch of all of it (the largest multiple of the
        `world` training processes), logged and recorded (describe()); a batch that fits stays as configured."""
        size = len(self.splits["train"])
        if self.batch_size <= size:
            return
        self.batch_size = max(world, size - size % world)
        log.info("dataset.batch_size=%d is larger than the %d training images: each step takes one batch of %d, "
                 "the whole training set (recorded in run.json)", self.batch_size_configured, size, self.batch_size)

    def check_root(self) -> None:
        """The checks of the data's files that read no image, made before a run folder exists (each data set
        checks its own; one made in memory has none)."""

    def setup(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def loader(self, split: str, seed: int = 0, pin_memory: bool = False, train: bool | None = None,
               rank: int = 0, world: int = 1, device: torch.device | None = None) -> DataLoader | DeviceBatches:
        """Training order shuffles (seeded per epoch through `loader.sampler.set_epoch`) and drops an incomplete
        last batch; evaluation order (val, test, or any split with train=False) keeps file order, every image.
        `rank`/`world`: this process's share of each (global) batch. `device`: keep the split there and
        gather batches on it (DeviceBatches) instead of a DataLoader."""
        data = self.splits[split]
        train = split == "train" if train is None else train
        batches = EpochBatches(len(data), self.batch_size, shuffle=train, seed=seed, drop_last=train,
                               rank=rank, world=world)
        if device is not None:
            return DeviceBatches(data, batches, device)
        # A generator of its own: each DataLoader iterator draws a worker base seed from it, which would
        # otherwise come from (and shift) the global RNG that dropout uses, breaking exact resumes.
        return DataLoader(
            _Batches(data), sampler=batches, batch_size=None, num_workers=self.num_workers,
            pin_memory=pin_memory, worker_init_fn=_seed_worker if self.num_workers else None,
            persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(seed),
        )

    def describe(self) -> dict:
        return {
            "name": type(self).__name__,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "batch_size_configured": self.batch_size_configured,
            "sizes": {name: len(s) for name, s in self.splits.items()},
            "mean": list(self.mean),
            "std": list(self.std),
            "cache": self.cache_info,
            "skipped_images": {k: len(v) for k, v in getattr(self, "skipped", {}).items()},
        }


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1], accumulated in float64 chunk by chunk."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros(images.shape[1], dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
