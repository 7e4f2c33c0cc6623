#!/usr/bin/env python
"""Target 1: `trainlab train +experiment=resnet18_tiny` out of the box against the textbook loop (fp32,
ImageFolder + PIL + per-image transforms, 2 DataLoader workers), same data in the tiny-imagenet-200
layout, same model and batch size, run A B A B in one process. About a minute on 2 cores.

    .venv/bin/python scripts/bench_defaults.py [--root DIR] [--steps 6] [--batch-size 256]
"""

import argparse
import tempfile
from pathlib import Path

from benchlib import alternate, report, textbook_train_ips, tiny_tree, trainlab_train_ips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a tiny-imagenet-200 folder (default: a generated one)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--per-class", type=int, default=80, help="images per class in the generated tree (20 classes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tiny_tree(Path(tmp) / "tiny-imagenet-200", per_class=args.per_class)
        trainlab = ["+experiment=resnet18_tiny", f"dataset.root={root}", f"dataset.batch_size={args.batch_size}",
                    "trainer.epochs=1", "lr_schedule.warmup_epochs=0", f"trainer.limit_train_batches={args.steps}",
                    "trainer.limit_val_batches=1", "trainer.histogram_every_n_epochs=0",
                    f"dataset.cache_dir={Path(tmp) / 'cache'}"]
        results = alternate({
            "textbook loop (fp32, ImageFolder+PIL, 2 workers)":
                lambda: textbook_train_ips(root, args.batch_size, args.steps),
            "trainlab train +experiment=resnet18_tiny": lambda: trainlab_train_ips(trainlab),
        })
    names = list(results)
    report(f"training images/s, resnet18, batch {args.batch_size}, {args.steps} steps per run", results,
           {"defaults_vs_textbook": (names[1], names[0])})


if __name__ == "__main__":
    main()
