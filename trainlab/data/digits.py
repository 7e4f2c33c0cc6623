"""Writes scikit-learn's handwritten digits (real scans, shipped with the package) as a Tiny-ImageNet tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits_tree(root: Path, size: int = 64, seed: int = 0) -> None:
    """70/15/15 stratified train/val/test split. Written to a temporary sibling and renamed, so an
    interrupted write never leaves a half tree that looks complete."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    wnids = [f"d{k}" for k in range(10)]
    (tmp / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (tmp / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(wnids, NAMES)))
    for d in ("val/images", "test/images"):
        (tmp / d).mkdir(parents=True)
    annotations, val_k, test_k = [], 0, 0
    for label, wnid in enumerate(wnids):
        (tmp / "train" / wnid / "images").mkdir(parents=True)
        members = rng.permutation(np.flatnonzero(digits.target == label))
        n_val = n_test = round(len(members) * 0.15)
        for j, i in enumerate(members):
            # 0..16 ink values -> dark ink on white paper, upsampled smoothly to the Tiny-ImageNet size.
            pixels = (255 - digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC)
            if j < n_val:
                name = f"val_{val_k}.JPEG"
                image.save(tmp / "val" / "images" / name, quality=95)
                annotations.append(f"{name}\t{wnid}\t0\t0\t{size - 1}\t{size - 1}\n")
                val_k += 1
            elif j < n_val + n_test:
                image.save(tmp / "test" / "images" / f"test_{test_k}.JPEG", quality=95)
                test_k += 1
            else:
                image.save(tmp / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", quality=95)
    (tmp / "val" / "val_annotations.txt").write_text("".join(annotations))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
