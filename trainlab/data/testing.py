"""Generated image trees in the exact Tiny-ImageNet-200 layout, for tests and benchmarks (the real data
cannot be downloaded on every machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_tiny_imagenet(root: Path, wnids=("n02", "n01", "n03"), train_per_class=6, val_per_class=3,
                        test_images=4, size=64, modes: dict | None = None) -> Path:
    """A miniature tiny-imagenet-200 tree. wnids.txt is written unsorted on purpose (the real one is too).
    `modes`: {(wnid, k): "L" or "CMYK"}, train files to write in those PIL modes. Each class has its own colour."""
    rng = np.random.default_rng(0)  # the same tree every time
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
            if (w, k) in (modes or {}):
                im = im.convert(modes[w, k])
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


def write_mnist(root: Path, train: int = 200, test: int = 50, size: int = 28, seed: int = 0,
                folder: str = "MNIST") -> tuple[np.ndarray, np.ndarray]:
    """MNIST's four IDX files (big-endian magic and sizes, then raw uint8) in `root/<folder>/raw`, as torchvision
    expects them after gunzip; each class a bright bar in its own place plus noise. Returns (images, labels)."""
    import struct

    rng = np.random.default_rng(0)  # the same tree every time
    n = train + test
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 + 2 * label:4 + 2 * label, 4:size - 4] = 250
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", slice(0, train)), ("t10k", slice(train, n))):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, len(images[part]), size, size) + images[part].tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels[part]))
                                                          + labels[part].tobytes())
    return images, labels


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """CIFAR-10's python layout: five pickled training batches, a test batch and batches.meta in
    `root/cifar-10-batches-py`, each batch a dict of `data` (N, 3072 uint8, channel planes) and `labels`.
    Returns (all images as (N, 3, 32, 32), labels) in file order, training batches first."""
    import pickle

    rng = np.random.default_rng(0)  # the same tree every time
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    everything, all_labels = [], []
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = test if name == "test_batch" else per_batch
        labels = [int(v) for v in (np.arange(n) + k) % 10]
        data = (rng.integers(0, 50, (n, 3072)) + np.array(labels)[:, None] * 20).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f)
        everything.append(data.reshape(-1, 3, 32, 32))
        all_labels += labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                     "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return np.concatenate(everything), all_labels
