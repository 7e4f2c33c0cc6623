#!/usr/bin/env python
"""One hyper-parameter search run three ways on this machine: Hydra's Optuna sweeper (batches of n_jobs trials, each
batch waiting for its slowest), trainlab's hydra/sweeper=search without pruning (a trial starts as soon as one
ends), and trainlab's with the median pruner (Optuna's defaults). The same search space (lr, weight decay, batch
size), sampler seed, trials and trials at once (hydra/launcher=parallel places them all); wall time of the whole
`trainlab train -m`, start-up included, one arm after the other in one process.

    .venv/bin/python scripts/bench_search.py [--trials 12] [--at-once 2] [--epochs 8] [--base +experiment=quickstart]

Prints each arm's wall time, the epochs its trials trained and the best value found (the study's best val/acc1),
then RATIO async_vs_batched and pruned_vs_batched: the batched search's seconds / the other's (above 1: faster).
Hydra's sweeper needs hydra-optuna-sweeper (scripts/test.sh installs it next to Optuna 4+ with --no-deps).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from benchlib import report

# lr and weight decay, as a user searches them; the batch size too, which makes some trials take longer than others
# (as they do in real searches: model sizes, batch sizes, early stopping), which is where batches wait.
SPACE = ["optimizer.lr=tag(log, interval(0.0003, 0.3))", "optimizer.weight_decay=tag(log, interval(0.00001, 0.01))",
         "dataset.batch_size=choice(32, 64, 128)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--at-once", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--base", default="+experiment=quickstart", help="the experiment every trial runs")
    args = parser.parse_args()
    common = ["-m", args.base, f"trainer.epochs={args.epochs}", "trainer.autotune=false", "logger=[]",
              "trainer.histogram_every_n_epochs=0", "trainer.activations_every_n_epochs=0", "target.value=null",
              *SPACE, "hydra/launcher=parallel", f"hydra.launcher.jobs={args.at_once}", "hydra.sweeper.sampler.seed=0",
              f"hydra.sweeper.n_trials={args.trials}", f"hydra.sweeper.n_jobs={args.at_once}",
              "hydra.sweeper.direction=maximize"]
    arms = {"Hydra's Optuna sweeper (batches)": ["hydra/sweeper=optuna"],
            "hydra/sweeper=search, no pruning": ["hydra/sweeper=search", "hydra.sweeper.pruner=none"],
            "hydra/sweeper=search, median pruner": ["hydra/sweeper=search", "hydra.sweeper.pruner=median"]}
    seconds, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(arms.items()):
            folder = Path(tmp) / str(i)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "trainlab", "train", *common, *extra,
                                   f"hydra.sweep.dir={folder}"], capture_output=True, text=True, cwd=tmp)
            seconds[name] = [time.perf_counter() - start]
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            epochs = sum(len(pd.read_csv(m)) for m in folder.glob("*/metrics.csv"))
            best = yaml.safe_load((folder / "optimization_results.yaml").read_text())["best_value"]
            rows.append({"search": name, "wall s": round(seconds[name][0], 1), "epochs trained": epochs,
                         "best val/acc1": round(best, 4)})
            print(f"  {name}: {seconds[name][0]:.1f} s, {epochs} epochs trained, best val/acc1 {best:.4f}", flush=True)
    print("\n" + pd.DataFrame(rows).to_string(index=False))
    rates = {name: [3600 / s for s in values] for name, values in seconds.items()}
    report(f"{args.trials} trials, {args.at_once} at once, {args.epochs} epochs each ({args.base}), searches per hour",
           rates, {"async_vs_batched": ("hydra/sweeper=search, no pruning", "Hydra's Optuna sweeper (batches)"),
                   "pruned_vs_batched": ("hydra/sweeper=search, median pruner", "Hydra's Optuna sweeper (batches)")},
           unit="searches/hour")


if __name__ == "__main__":
    main()
