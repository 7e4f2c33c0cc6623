"""torchvision's built-in data sets (MNIST, Fashion-MNIST, CIFAR-10/100, or any other by name), read by
torchvision from `root` and handed out as the same uint8 tensors as every other data set.

Their files already hold decoded pixels (MNIST's IDX files, CIFAR's pickled batches), so there is nothing
to decode or cache: torchvision reads them into arrays at every start (a second or two); a size other than
the set's own is resized once, at load. Nothing is downloaded unless `download=true`; without the files, one
line says which files to put where. Splits: `train` is the set's training part minus a stratified
`val_fraction` for `val`; `test` is the set's own test part (`val_fraction=0`: `val` is the test part)."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainlab.core.errors import DataError, require
from trainlab.data.base import ImageData, Split, channel_stats

log = logging.getLogger(__name__)

# dataset=<option> -> torchvision class, and the files it reads under root (what to put where offline).
NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10",
         "cifar100": "CIFAR100"}
_IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
FILES = {
    "MNIST": ("MNIST/raw", _IDX), "FashionMNIST": ("FashionMNIST/raw", _IDX), "KMNIST": ("KMNIST/raw", _IDX),
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "CIFAR100": ("cifar-100-python", ["train", "test", "meta"]),
}


def torchvision_class(name: str):
    """The torchvision.datasets class for `name` (an option name such as cifar10, or the class name)."""
    import torchvision.datasets as datasets

    cls_name = NAMES.get(str(name).lower(), str(name))
    cls = getattr(datasets, cls_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.utils.data.Dataset)):
        from trainlab.core.suggest import did_you_mean

        known = sorted(n for n in dir(datasets) if inspect.isclass(getattr(datasets, n)) and n[0].isupper())
        raise DataError(f"dataset.name={name} is not a torchvision data set{did_you_mean(str(name), known)} "
                        f"(e.g. {', '.join(sorted(NAMES))}, or a class of torchvision.datasets)")
    return cls


def _without_checksums(cls):
    """CIFAR checks every file's MD5 whenever it is opened; trainlab checks the files are there and readable (a
    damaged one fails to unpickle, with one line) and leaves MD5s to torchvision's download, which checks the
    archive's. So a copy made another way (a mirror, a test's own small files) is read too."""
    from torchvision.datasets import CIFAR10

    if not issubclass(cls, CIFAR10):
        return cls
    return type(cls.__name__, (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None}})


def missing_files_hint(cls_name: str, root: Path) -> str:
    if cls_name in FILES:
        folder, files = FILES[cls_name]
        return f"put {', '.join(files)} into {root / folder}"
    return f"put {cls_name}'s files where torchvision.datasets.{cls_name} looks for them under {root}"


@dataclass(eq=False, kw_only=True)
class TorchvisionData(ImageData):
    """`dataset=mnist|fashion_mnist|cifar10|cifar100`, or `dataset=torchvision dataset.name=<class>`."""

    name: str
    root: str | Path
    download: bool
    val_fraction: float
    split_seed: int

    def __post_init__(self):
        super().__post_init__()
        require(0.0 <= float(self.val_fraction) < 1.0,
                f"dataset.val_fraction must be in [0, 1) (got {self.val_fraction})")
        self.cls = torchvision_class(self.name)
        self.name, self.root, self.download = self.cls.__name__, Path(str(self.root)).expanduser(), bool(self.download)
        self.val_fraction, self.split_seed = float(self.val_fraction), int(self.split_seed)

    def check_root(self) -> None:
        if not self.download and not self.root.is_dir():
            raise DataError(f"dataset.root {self.root} does not exist: {missing_files_hint(self.name, self.root)}, "
                            "or pass dataset.download=true on a machine with network")

    def _open(self, train: bool):
        cls = _without_checksums(self.cls)
        params = inspect.signature(cls).parameters
        part = {"train": train} if "train" in params else {"split": "train" if train else "test"}
        self.check_root()
        try:
            return cls(str(self.root), download=self.download, **part)
        except RuntimeError as e:  # torchvision: "Dataset not found ... You can use download=True"
            if self.download:
                raise DataError(f"cannot download {self.name} into {self.root}: {' '.join(str(e).split())}") from None
            why = " ".join(str(e).split())
            # torchvision's own "Dataset not found. You can use download=True" names its argument, not our key.
            why = "" if "not found" in why.lower() else f" ({why[:80]})"
            raise DataError(f"{self.name} is not in dataset.root {self.root}{why}: "
                            f"{missing_files_hint(self.name, self.root)}, or pass dataset.download=true "
                            "on a machine with network") from None
        except (OSError, ValueError, EOFError, KeyError) as e:  # a truncated or foreign file
            raise DataError(f"cannot read {self.name} from {self.root}: {e}; replace its files "
                            f"({missing_files_hint(self.name, self.root)})") from None

    def _tensors(self, ds) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (N, C, H, W) images and int64 labels: straight from the arrays torchvision read, or (another
        set) image by image."""
        data = getattr(ds, "data", None)
        labels = getattr(ds, "targets", None)
        labels = getattr(ds, "labels", None) if labels is None else labels
        if isinstance(data, (torch.Tensor, np.ndarray)) and labels is not None and len(data) == len(labels):
            images = torch.as_tensor(np.asarray(data))
            if images.ndim == 3:                       # MNIST family: (N, H, W)
                images = images[:, None]
            elif images.ndim == 4 and images.shape[-1] in (1, 3):  # CIFAR: (N, H, W, C)
                images = images.permute(0, 3, 1, 2)
            if images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] in (1, 3):
                return images.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        from torchvision.transforms.functional import pil_to_tensor

        log.info("%s: reading %d images one by one (its files are not a plain array)", self.name, len(ds))
        pairs = [ds[i] for i in range(len(ds))]
        first = pairs[0][0]
        mode = "L" if getattr(first, "mode", "RGB") in ("L", "1", "I", "I;16", "F") else "RGB"
        images = [pil_to_tensor(img.convert(mode)) for img, _ in pairs]
        size = max(i.shape[-1] for i in images)
        images = torch.stack([_resize(i[None], size)[0] for i in images])
        return images, torch.tensor([int(label) for _, label in pairs], dtype=torch.int64)

    def setup(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        opened = {}
        if {"train", "val"} & set(splits):
            opened["train"] = self._open(train=True)
        if "test" in splits or ("val" in splits and self.val_fraction == 0):
            opened["test"] = self._open(train=False)
        parts = {name: self._tensors(ds) for name, ds in opened.items()}
        classes = list(getattr(next(iter(opened.values())), "classes", None) or [])
        labels_seen = torch.cat([labels for _, labels in parts.values()])
        n_classes = max(len(classes), int(labels_seen.max()) + 1)
        self.classes = classes if len(classes) == n_classes else [str(k) for k in range(n_classes)]
        self.class_names = list(self.classes)
        self.channels = next(iter(parts.values()))[0].shape[1]
        for name, (images, labels) in list(parts.items()):
            if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
                log.info("%s: resizing %d %s images from %dx%d to %d (dataset.image_size), once at load", self.name,
                         len(images), name, images.shape[-2], images.shape[-1], self.image_size)
                parts[name] = (_resize(images, self.image_size), labels)
        if "train" in parts:
            images, labels = parts["train"]
            val = _stratified(labels, self.val_fraction, self.split_seed)
            keep = torch.ones(len(labels), dtype=torch.bool)
            keep[val] = False
            train_idx = keep.nonzero().flatten()
            self.splits["train"] = Split(images[train_idx], labels[train_idx],
                                         [f"{self.name}:train/{i}" for i in train_idx.tolist()])
            if self.val_fraction > 0:
                self.splits["val"] = Split(images[val], labels[val], [f"{self.name}:train/{i}" for i in val.tolist()])
            self.mean, self.std = channel_stats(self.splits["train"].images)
        if "test" in parts:
            images, labels = parts["test"]
            self.splits["test"] = Split(images, labels, [f"{self.name}:test/{i}" for i in range(len(labels))])
            if self.val_fraction == 0 and "val" in splits:
                self.splits["val"] = self.splits["test"]
                log.info("%s: dataset.val_fraction=0, so val is the test part", self.name)
        self.splits = {k: v for k, v in self.splits.items() if k in splits}
        self.cache_info = {"enabled": False, "why": "the files hold decoded pixels: torchvision reads them directly"}
        log.info("data: %s from %s, %d classes, %d channel(s), %s", self.name, self.root, self.num_classes,
                 self.channels, ", ".join(f"{n} {len(s)}" for n, s in self.splits.items()))

    def describe(self) -> dict:
        return super().describe() | {"torchvision": self.name, "root": str(self.root),
                                     "val_fraction": self.val_fraction}


def _stratified(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a seeded `fraction` of each class (the same for every run with the same seed)."""
    if fraction <= 0:
        return torch.empty(0, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    picked = []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        picked.append(members[:max(1, round(len(members) * fraction))])
    return torch.cat(picked).sort().values


def _resize(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, h, w) -> (N, C, size, size), antialiased bilinear (what PIL's resize does for photos)."""
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[i:i + chunk] = y.round().clamp(0, 255).to(torch.uint8)
    return out
