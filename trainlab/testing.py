"""Generated image trees in the exact Tiny-ImageNet-200 layout, for tests and benchmarks (the real data
cannot be downloaded on every machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_tiny_imagenet(root: Path, wnids=("n02", "n01", "n03"), train_per_class=6, val_per_class=3,
                        test_images=4, size=64, grayscale=(), cmyk=(), seed=0) -> Path:
    """A miniature tiny-imagenet-200 tree. wnids.txt is written unsorted on purpose (the real one is too).
    `grayscale`/`cmyk` name train files (wnid, k) to write in those modes. Each class has its own colour."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = [f"{w}\tname of {w}, alias" for w in wnids] + ["n99\tunused class"]
    (root / "words.txt").write_text("\n".join(words) + "\n")
    colours = {w: rng.integers(0, 256, 3) for w in wnids}

    def image(wnid):
        pixels = np.clip(colours[wnid] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, "RGB")

    for w in wnids:
        folder = root / "train" / w / "images"
        folder.mkdir(parents=True)
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
        for k in range(train_per_class):
            im = image(w)
            if (w, k) in grayscale:
                im = im.convert("L")
            if (w, k) in cmyk:
                im = im.convert("CMYK")
            im.save(folder / f"{w}_{k}.JPEG", quality=95)
    (root / "val" / "images").mkdir(parents=True)
    lines, n = [], 0
    for _ in range(val_per_class):
        for w in wnids:
            image(w).save(root / "val" / "images" / f"val_{n}.JPEG", quality=95)
            lines.append(f"val_{n}.JPEG\t{w}\t0\t0\t{size - 1}\t{size - 1}")
            n += 1
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)
    for k in range(test_images):
        image(wnids[k % len(wnids)]).save(root / "test" / "images" / f"test_{k}.JPEG", quality=95)
    return root
