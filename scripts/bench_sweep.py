#!/usr/bin/env python
"""A 4-job sweep on this machine: Hydra's basic launcher (one job after another) against hydra/launcher=parallel
with its default (one job per GPU; on a CPU the cores are not split unless asked) and with 2 jobs at once.
Wall time of the whole `trainlab train -m`, start-up included; A B C in one process.

    .venv/bin/python scripts/bench_sweep.py [--rounds 1] [--epochs 1] [--train-size 512]

RATIO parallel_vs_sequential = basic launcher's seconds / parallel's (>= 1: no slower). On a CPU the default runs
one job per 8 cores (one at a time on a small machine, in the launcher's own process); `parallel2_vs_sequential`
shows what 2 at once, each in a spawned process with half the cores, gives here.
On a machine with N GPUs (pass --device cuda) the default runs N jobs at once and the ratio approaches N.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import report


def default_choice(jobs: int) -> None:
    """The CPU default (hydra/launcher=parallel without hydra.launcher.jobs), as the launcher decides it, said."""
    from trainlab.cli.placement import cpu_jobs_at_once
    from trainlab.core.machine import usable_cores

    at_once, why = cpu_jobs_at_once(usable_cores(), jobs)
    print(f"  the default on this CPU: {at_once} at once ({why})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the sweep (seeds 0..N-1)")
    args = parser.parse_args()
    sweep = ["-m", "dataset=fake", f"dataset.train_size={args.train_size}", "dataset.val_size=64",
             f"dataset.image_size={args.image_size}", f"model={args.model}", f"trainer.epochs={args.epochs}",
             f"device={args.device}", "trainer.autotune=false", "trainer.histogram_every_n_epochs=0",
             "trainer.activations_every_n_epochs=0", "logger=[]", "seed=" + ",".join(str(s) for s in range(args.jobs))]
    if args.device == "cpu":
        default_choice(args.jobs)
    sides = {"basic launcher (sequential)": [],
             "hydra/launcher=parallel (default)": ["hydra/launcher=parallel"],
             "hydra/launcher=parallel jobs=2": ["hydra/launcher=parallel", "hydra.launcher.jobs=2"]}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, extra) in enumerate(sides.items()):
                folder = Path(tmp) / f"{r}-{i}"
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "trainlab", "train", *sweep, *extra,
                                       f"hydra.sweep.dir={folder}"], capture_output=True, text=True, cwd=tmp)
                if done.returncode != 0:
                    sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
                seconds[name].append(time.perf_counter() - start)
                print(f"  {name}: {seconds[name][-1]:.1f} s", flush=True)
    # report() prints rates and divides a by b: sweeps per hour, so that higher is faster as elsewhere.
    rates = {name: [3600 / s for s in values] for name, values in seconds.items()}
    report(f"{args.jobs}-job sweep ({args.model}, {args.train_size} images, {args.epochs} epoch(s), {args.device}), "
           "sweeps per hour", rates,
           {"parallel_vs_sequential": ("hydra/launcher=parallel (default)", "basic launcher (sequential)"),
            "parallel2_vs_sequential": ("hydra/launcher=parallel jobs=2", "basic launcher (sequential)")},
           unit="sweeps/hour")


if __name__ == "__main__":
    main()
