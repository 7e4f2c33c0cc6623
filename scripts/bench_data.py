#!/usr/bin/env python
"""Target 3: the data pipeline. On one core, images/s delivered by the tutorial pipeline (ImageFolder +
PIL + per-image RandomCrop/flip/ToTensor/Normalize) against trainlab's decode-once cache with batched
augmentation; then training on trainlab's pipeline against one fixed in-memory batch (the ceiling: no
data work at all); then reading Tiny-ImageNet at its real size (110,000 images, in memory: /dev/shm) from the
official zip against the unpacked folder (listing + decoding, no cache). A B A B in one process, about
four minutes on 2 cores.

    .venv/bin/python scripts/bench_data.py [--batches 10] [--steps 6] [--archive-rounds 2]

Training runs at the precision and memory format trainlab's `auto` picks on this machine (bf16 autocast is
emulated, and very slow, on CPUs without native bf16).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from trainlab.core.config import component
from trainlab.core.runtime import resolve_runtime

from benchlib import (
    alternate,
    bare_train_ips,
    imagefolder_delivery_ips,
    real_size_tiny,
    report,
    tiny_tree,
    trainlab_delivery_ips,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches of 128 per delivery run")
    parser.add_argument("--steps", type=int, default=8, help="training steps per training run")
    parser.add_argument("--per-class", type=int, default=80, help="images per class in the generated tree (20 classes)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per comparison")
    parser.add_argument("--archive-rounds", type=int, default=2, help="A B rounds of archive vs folder (0: skip)")
    parser.add_argument("--archive-per-class", type=int, default=500,
                        help="train images per class (200 classes; 20x as many val images) of the archive tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = tiny_tree(Path(tmp) / "tiny-imagenet-200", per_class=args.per_class)
        data = component("dataset", "tiny_imagenet", root=str(root), batch_size=args.batch_size, cache=True,
                            cache_dir=str(Path(tmp) / "cache"))
        data.setup(("train",))  # builds the decode-once cache (not timed: it happens once per data set)
        runtime = resolve_runtime("cpu", "auto", "auto", "auto", False)
        bs, precision, cl = args.batch_size, runtime.precision, runtime.channels_last
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        delivery = alternate({
            "ImageFolder + PIL (1 core)": lambda: imagefolder_delivery_ips(root, bs, args.batches),
            "trainlab cache + batched aug (1 core)": lambda: trainlab_delivery_ips(data, bs, args.batches),
        }, rounds=args.rounds, warmup=True)
        torch.set_num_threads(threads)
        images, labels = data.splits["train"].images, data.splits["train"].labels
        training = alternate({
            "fixed in-memory batch": lambda: bare_train_ips(images, labels, 200, bs, args.steps, precision, cl,
                                                            in_memory=True),
            "trainlab pipeline": lambda: bare_train_ips(images, labels, 200, bs, args.steps, precision, cl),
        }, rounds=args.rounds)
    report("delivery, images/s on one core (no model)", delivery,
           {"delivery_vs_imagefolder": ("trainlab cache + batched aug (1 core)", "ImageFolder + PIL (1 core)")})
    report(f"training resnet18, batch {bs}, precision {precision}, channels_last {cl}, {args.steps} steps", training,
           {"train_vs_fixed_batch": ("trainlab pipeline", "fixed in-memory batch")})
    if args.archive_rounds:
        archive_vs_folder(args.archive_rounds, args.archive_per_class)


def archive_vs_folder(rounds: int, per_class: int = 500) -> None:
    """dataset.root=tiny-imagenet-200.zip against the unpacked folder: images/s of a whole setup() without the
    cache (listing, labels, decoding every train and val image), as the first run of a data set costs."""
    memory = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=memory) as tmp:
        folder, archive = real_size_tiny(Path(tmp), per_class=per_class, val=20 * per_class)

        def setup_ips(root: Path) -> float:
            data = component("dataset", "tiny_imagenet", root=str(root), cache=False)
            start = time.perf_counter()
            data.setup(("train", "val"))
            return sum(len(s) for s in data.splits.values()) / (time.perf_counter() - start)

        results = alternate({"unpacked folder": lambda: setup_ips(folder), "official zip": lambda: setup_ips(archive)},
                            rounds=rounds)
    report(f"reading Tiny-ImageNet ({220 * per_class:,} images, in {memory or 'a temporary folder'}), "
           "listing + decoding, images/s", results, {"archive_vs_folder": ("official zip", "unpacked folder")})


if __name__ == "__main__":
    main()
