"""Data sets read from image files: Tiny-ImageNet-200 (official layout) and a user's class folders.
Both only read the data folder; decoded images go to the cache (see decode.py)."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from trainlab.core.errors import DataError, TrainlabError
from trainlab.data.archive import SUFFIXES, ArchivePath, archive_root, check_official_tiny, is_archive
from trainlab.data.base import ImageData, Split, channel_stats
from trainlab.data.decode import IMAGE_EXTENSIONS, OLD_CACHE_NAME, load_or_decode, resolve_cache_dir, write_meta

log = logging.getLogger(__name__)

TINY_HINT = ("get tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) and pass "
             "dataset.root=/path/to/tiny-imagenet-200.zip (no need to unzip) or the unzipped folder")


def _images_in(folder: Path | ArchivePath) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def require_folder(root: Path, hint: str) -> None:
    if root.is_dir() or is_archive(root):
        return
    if root.exists():
        raise DataError(f"dataset.root {root} is a file but not an archive trainlab reads ({', '.join(SUFFIXES)}); "
                        f"{hint}")
    raise DataError(f"dataset.root {root} does not exist; {hint}")


@dataclass(eq=False, kw_only=True)
class FileImageData(ImageData):
    """Decodes the files listed by `index()` (with the cache) and computes the train mean/std once."""

    root: str | Path | None
    cache: bool
    cache_dir: str | None
    skip_bad_images: bool

    def __post_init__(self):
        super().__post_init__()
        self.root = Path(str(self.root)).expanduser()
        self.cache, self.skip_bad_images = bool(self.cache), bool(self.skip_bad_images)
        self.skipped: dict[str, list[str]] = {}

    def index(self) -> dict[str, tuple[list[str], list[int] | None]]:
        """Fill `classes`/`class_names`; return split -> (paths, labels or None)."""
        raise NotImplementedError

    ROOT_HINT = "point it at the folder (or a .zip, .tar, .tar.gz or .tgz) that holds the data"
    MARKER: ClassVar[str | None] = None  # a file at the top of the tree (to find it inside a wrapping folder)

    def check_root(self) -> None:
        """`root` is a folder or a readable archive (an archive is indexed once, before any folder exists)."""
        require_folder(self.root, self.ROOT_HINT)
        if is_archive(self.root):
            archive_root(self.root, self.MARKER)

    def tree(self, marker: str | None = None) -> Path | ArchivePath:
        """Where the data set's folders are: `root` itself, or inside the archive `root` names (`marker`: a
        file its top folder holds, to tell the data set's top from a wrapping folder)."""
        return archive_root(self.root, marker) if is_archive(self.root) else self.root

    def check_source(self, cache_dir: Path | None) -> None:
        """Checks of the source as a whole, logged before decoding (Tiny-ImageNet: the official archive?)."""

    def setup(self, splits: tuple[str, ...] = ("train", "val")) -> None:
        listing = self.index()
        cache_dir = resolve_cache_dir(self.root, self.cache_dir) if self.cache else None
        self.cache_info = {"enabled": self.cache, "dir": str(cache_dir) if cache_dir else None}
        self.check_source(cache_dir)
        log.info("data cache: %s", f"decoded images cached in {cache_dir}" if cache_dir else
                 "off (dataset.cache=false): images are decoded at every start")
        for name in splits:
            if name not in listing:
                raise DataError(f"{self.root} has no {name} split")
            paths, labels = listing[name]
            images, meta = load_or_decode(paths, self.image_size, name, cache_dir, self.skip_bad_images,
                                          source=str(self.root))
            if meta.get("skipped") and not self.skip_bad_images:  # the cache was built while skipping them
                raise DataError(f"cannot decode image {paths[meta['skipped'][0]]}; replace or delete the file, "
                                "or set dataset.skip_bad_images=true to leave such files out")
            if meta.get("skipped"):
                bad = set(meta["skipped"])
                self.skipped[name] = [paths[i] for i in sorted(bad)]
                log.warning("%s: skipped %d unreadable image(s) (dataset.skip_bad_images=true), e.g. %s",
                            name, len(bad), self.skipped[name][0])
                keep = [i for i in range(len(paths)) if i not in bad]
                paths = [paths[i] for i in keep]
                labels = [labels[i] for i in keep] if labels is not None else None
            if name == "train":
                if "mean" not in meta:  # computed once from the train split, then kept beside the cache
                    meta["mean"], meta["std"] = channel_stats(images)
                    if meta.get("file"):
                        try:
                            write_meta(Path(meta["file"]), meta)
                        except TrainlabError as e:  # a read-only cache: they are computed again next time
                            log.warning("could not keep the channel statistics beside the cache: %s", e)
                self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
            tensor_labels = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
            self.splits[name] = Split(images, tensor_labels, paths)
        log.info("data: %s, %d classes, %s", type(self).__name__, self.num_classes,
                 ", ".join(f"{n} {len(s)}" for n, s in self.splits.items()))


class TinyImageNet(FileImageData):
    """Tiny-ImageNet-200: class index = position in the sorted wnids; val labels from val_annotations.txt."""

    ROOT_HINT, MARKER = TINY_HINT, "wnids.txt"

    def check_root(self) -> None:
        super().check_root()
        if is_archive(self.root) and not (archive_root(self.root, self.MARKER) / self.MARKER).is_file():
            raise DataError(f"{archive_root(self.root, self.MARKER)} is not in the tiny-imagenet-200 layout: "
                            f"wnids.txt is missing; {TINY_HINT}")

    def index(self):
        require_folder(self.root, TINY_HINT)
        root = self.tree("wnids.txt")
        wnids_file = root / "wnids.txt"
        if not wnids_file.is_file():
            raise DataError(f"{root} is not in the tiny-imagenet-200 layout: wnids.txt is missing; {TINY_HINT}")
        wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
        if not wnids:
            raise DataError(f"{wnids_file} lists no classes; {TINY_HINT}")
        self.classes, self.class_names = wnids, self._names(root, wnids)
        label_of = {w: i for i, w in enumerate(wnids)}
        listing = {"train": self._train(root, wnids), "val": self._val(root, label_of)}
        if (root / "test" / "images").is_dir():
            listing["test"] = (_images_in(root / "test" / "images"), None)
        return listing

    def check_source(self, cache_dir: Path | None) -> None:
        if is_archive(self.root):
            check_official_tiny(self.root, cache_dir)

    @staticmethod
    def _names(root: Path | ArchivePath, wnids: list[str]) -> list[str]:
        words = root / "words.txt"
        if not words.is_file():
            log.warning("%s is missing: class names fall back to the wnids", words)
            return list(wnids)
        table = {}
        for line in words.read_text(encoding="utf-8", errors="replace").splitlines():
            wnid, _, name = line.partition("\t")
            table[wnid.strip()] = name.strip()
        return [table.get(w) or w for w in wnids]

    @staticmethod
    def _train(root: Path | ArchivePath, wnids: list[str]) -> tuple[list[str], list[int]]:
        train = root / "train"
        if not train.is_dir():
            raise DataError(f"{train} is missing: the layout needs train/<wnid>/images/*.JPEG; {TINY_HINT}")
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            folder = train / wnid / "images"
            if not folder.is_dir():
                raise DataError(f"{folder} is missing (wnids.txt lists {wnid}); the layout needs "
                                f"train/<wnid>/images/*.JPEG; {TINY_HINT}")
            files = _images_in(folder)
            if not files:
                raise DataError(f"{folder} holds no images; {TINY_HINT}")
            paths += files
            labels += [label] * len(files)
        return paths, labels

    @staticmethod
    def _val(root: Path | ArchivePath, label_of: dict[str, int]) -> tuple[list[str], list[int]]:
        images = root / "val" / "images"
        annotations = root / "val" / "val_annotations.txt"
        if not images.is_dir():
            raise DataError(f"{images} is missing: the layout needs val/images/*.JPEG and val/val_annotations.txt; "
                            f"{TINY_HINT}")
        if not annotations.is_file():
            raise DataError(f"{images} exists but {annotations} does not: the validation labels come from that file "
                            f"(val/ has no class folders); restore it from the original zip; {TINY_HINT}")
        paths, labels = [], []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in label_of:
                raise DataError(f"{annotations} line {number} is malformed or names a class that is not in "
                                f"wnids.txt: {line[:80]!r}")
            path = images / fields[0]
            if not path.is_file():
                raise DataError(f"{annotations} line {number} names {fields[0]}, which is not in {images}")
            paths.append(str(path))
            labels.append(label_of[fields[1]])
        if not paths:
            raise DataError(f"{annotations} lists no images; {TINY_HINT}")
        return paths, labels


@dataclass(eq=False, kw_only=True)
class ImageFolderData(FileImageData):
    """A user's own images: root/train/<class>/* and root/val/<class>/*, or root/<class>/* split into
    train and val per class (stratified) by `val_fraction` and `split_seed`."""

    val_fraction: float
    split_seed: int

    def __post_init__(self):
        super().__post_init__()
        self.val_fraction, self.split_seed = float(self.val_fraction), int(self.split_seed)

    def index(self):
        require_folder(self.root, "point it at a folder (or a .zip, .tar, .tar.gz or .tgz) of class folders")
        root = self.tree()
        if (root / "train").is_dir() and (root / "val").is_dir():
            self.classes = self._class_dirs(root / "train")
            train = self._files(root / "train", allow_missing=False)
            val = self._files(root / "val", allow_missing=True)
            return {"train": train, "val": val}
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"dataset.val_fraction must be between 0 and 1 to split {root} (got {self.val_fraction})")
        self.classes = self._class_dirs(root)
        return self._split(*self._files(root, allow_missing=False))

    def _class_dirs(self, folder: Path | ArchivePath) -> list[str]:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"{folder} has no class folders: expected {folder}/<class>/<image> "
                            "(or root/train/<class> and root/val/<class>)")
        self.class_names = list(classes)
        return classes

    def _files(self, folder: Path | ArchivePath, allow_missing: bool) -> tuple[list[str], list[int]]:
        paths, labels = [], []
        for label, name in enumerate(self.classes):
            sub = folder / name
            files = _images_in(sub) if sub.is_dir() else []
            if not files and not allow_missing:
                raise DataError(f"{sub} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += files
            labels += [label] * len(files)
        extra = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(self.classes) - {OLD_CACHE_NAME})
        if extra:
            raise DataError(f"{folder} has class folders that train/ does not: {', '.join(extra[:5])}")
        if not paths:
            raise DataError(f"{folder} holds no images")
        return paths, labels

    def _split(self, paths: list[str], labels: list[int]):
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_class[label].append(i)
        rng = random.Random(self.split_seed)
        train_idx, val_idx = [], []
        for label in sorted(by_class):
            members = by_class[label]
            rng.shuffle(members)
            n_val = min(len(members) - 1, max(1, round(len(members) * self.val_fraction)))
            val_idx += sorted(members[:n_val])
            train_idx += sorted(members[n_val:])
        pick = lambda idx: ([paths[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
        return {"train": pick(sorted(train_idx)), "val": pick(sorted(val_idx))}

