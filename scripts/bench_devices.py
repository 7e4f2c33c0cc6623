#!/usr/bin/env python
"""Device scaling: `trainlab train +experiment=resnet18_tiny` with one process against N DDP processes
(`device.count=N`) on the same machine, same global batch and data, run A B A B in one process. On a CPU
the N processes share the cores (trainer.threads=auto divides them); on GPUs each process gets one.

    .venv/bin/python scripts/bench_devices.py [--device cpu|cuda] [--count 2] [--steps 8] [--batch-size 128]

For a whole table (with speed-up and efficiency per configuration) run a sweep and report it:
    trainlab train -m +experiment=resnet18_tiny device.count=1,2,4 trainer.epochs=1 ... && trainlab report <sweep>
"""

import argparse
import tempfile
from pathlib import Path

from benchlib import alternate, report, tiny_tree, trainlab_train_ips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a tiny-imagenet-200 folder (default: a generated one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--count", type=int, default=2, help="training processes on the DDP side")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch, the same on both sides")
    parser.add_argument("--per-class", type=int, default=80, help="images per class in the generated tree (20 classes)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tiny_tree(Path(tmp) / "tiny-imagenet-200", per_class=args.per_class)
        common = ["+experiment=resnet18_tiny", f"dataset.root={root}", f"dataset.batch_size={args.batch_size}",
                  f"device={args.device}", "trainer.epochs=1", "lr_schedule.warmup_epochs=0",
                  f"trainer.limit_train_batches={args.steps}", "trainer.limit_val_batches=1",
                  "trainer.histogram_every_n_epochs=0", f"dataset.cache_dir={Path(tmp) / 'cache'}"]
        one, many = f"1 process ({args.device})", f"{args.count} DDP processes ({args.device})"
        results = alternate({
            one: lambda: trainlab_train_ips(common + ["device.count=1"]),
            many: lambda: trainlab_train_ips(common + [f"device.count={args.count}"]),
        }, rounds=args.rounds)
    report(f"training images/s (all processes), resnet18, global batch {args.batch_size}, {args.steps} steps per run",
           results, {f"ddp{args.count}_vs_1": (many, one)})


if __name__ == "__main__":
    main()
