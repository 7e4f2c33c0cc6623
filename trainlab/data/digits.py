"""The demo data set: scikit-learn's handwritten digits (real scans, shipped with scikit-learn), written once
as 64x64 JPEGs in the Tiny-ImageNet layout into a folder trainlab creates and marks as its own.

The folder is written only when it is missing or empty, and read only when it carries the marker: a folder
of the user's is never written into (or read as digits), whatever `dataset.root` says."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from trainlab.core.errors import DataError
from trainlab.core.fs import FolderLock, cache_home
from trainlab.data.files import TinyImageNet

log = logging.getLogger(__name__)

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MARKER = ".trainlab-digits.json"   # written first (complete: false), completed last
LAYOUT = ("wnids.txt", "words.txt", "train", "val", "test")  # what write_digits_tree creates besides the marker


def default_root() -> Path:
    return cache_home() / "digits"


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def not_ours_message(root: Path) -> str:
    return (f"{root} is not a digits folder made by trainlab: use dataset=image_folder or dataset=tiny_imagenet "
            "for your own images, or an empty folder (or none: dataset.root=null) for the demo")


def check_root(root: Path) -> None:
    """Refuse a folder that trainlab may not write the demo into (before any run directory is made)."""
    root = Path(root).expanduser()
    marker = _marker(root)
    if marker and marker.get("complete"):
        return
    if (root.exists() and not root.is_dir()) or (root.is_dir() and marker is None
                                                 and any(p.name != ".trainlab.lock" for p in root.iterdir())):
        raise DataError(not_ours_message(root))


def ensure_digits_tree(root: Path) -> None:
    """Write the tree into `root` unless trainlab already completed it there. Refuses any folder that is
    neither missing, empty, nor marked by trainlab; two processes writing it at once take turns."""
    root = Path(root)
    check_root(root)
    if (_marker(root) or {}).get("complete"):
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FolderLock(root):
            marker = _marker(root)
            if marker and marker.get("complete"):  # another process finished it while this one waited
                return
            write_digits_tree(root)
    except OSError as e:
        raise DataError(f"cannot write the digits demo data into {root}: {e.strerror or e}; pass "
                        "dataset.root=<a writable empty folder>") from None


def write_digits_tree(root: Path, size: int = 64, seed: int = 0) -> None:
    """70/15/15 stratified train/val/test split into `root` (missing, empty, or an incomplete tree of ours).
    The marker says "incomplete" until the last file is written, so an interrupted write is redone, never
    mistaken for a complete tree."""
    from PIL import Image
    from sklearn.datasets import load_digits

    (root / MARKER).write_text(json.dumps({"made_by": "trainlab", "data": "scikit-learn digits", "complete": False}))
    for name in LAYOUT:  # leftovers of an interrupted write of ours (the marker says so)
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.info("writing scikit-learn's digits in the tiny-imagenet layout to %s (once)", root)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    wnids = [f"d{k}" for k in range(10)]
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(wnids, NAMES)))
    for d in ("val/images", "test/images"):
        (root / d).mkdir(parents=True)
    annotations, val_k, test_k = [], 0, 0
    for label, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = n_test = round(len(members) * 0.15)
        for j, i in enumerate(members):
            # 0..16 ink values -> dark ink on white paper, upsampled smoothly to the Tiny-ImageNet size.
            pixels = (255 - digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC)
            if j < n_val:
                name = f"val_{val_k}.JPEG"
                image.save(root / "val" / "images" / name, quality=95)
                annotations.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}\n")
                val_k += 1
            elif j < n_val + n_test:
                image.save(root / "test" / "images" / f"test_{test_k}.JPEG", quality=95)
                test_k += 1
            else:
                image.save(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", quality=95)
    (root / "val" / "val_annotations.txt").write_text("".join(annotations))
    (root / MARKER).write_text(json.dumps({"made_by": "trainlab", "data": "scikit-learn digits", "complete": True}))


class Digits(TinyImageNet):
    """scikit-learn's 1,797 scanned digits as a Tiny-ImageNet tree; `root=None` puts it in trainlab's cache
    folder (`$TRAINLAB_CACHE_DIR`, `$XDG_CACHE_HOME/trainlab` or `~/.cache/trainlab`)."""

    def __post_init__(self):
        self.root = self.root or default_root()
        super().__post_init__()

    def check_root(self) -> None:
        """The demo's folder is trainlab's (marked), missing or empty: never a folder of the user's."""
        check_root(self.root)

    def index(self):
        ensure_digits_tree(self.root)
        return super().index()
