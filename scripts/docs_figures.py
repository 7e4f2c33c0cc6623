#!/usr/bin/env python
"""Remake every image in docs/ from real runs on the digits (scikit-learn's scans, no download), so no picture in
the docs is older than the code that draws it. About 10 minutes on 2 CPU cores.

    .venv/bin/python scripts/docs_figures.py                 # runs into a temporary folder, writes docs/*.png
    .venv/bin/python scripts/docs_figures.py --work /tmp/f   # keep the runs

  docs/report.png          the quickstart's report: its curves, confusion matrix and per-class figures, one page
  docs/lr_find.png         trainlab lr-find +experiment=quickstart
  docs/feature_maps.png    trainlab visualize of the quickstart's best checkpoint (the stem's maps of val image 0)
  docs/disagreements.png   trainlab compare of a 2-epoch and the full (6-epoch) quickstart
  docs/seeds_val_acc1.png  a sweep of two learning rates x two seeds: val/acc1 mean ± std per learning rate
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def trainlab(*args: str, cwd: Path) -> None:
    print("$ trainlab " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, check=True)


def report_page(run: Path, target: Path) -> None:
    """The report's own figures (plots/*.png and the report's confusion images) stacked into one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    images = [run / "report_files" / f"{name}.png" for name in ("loss", "accuracy", "metrics", "confusion")]
    fig, axes = plt.subplots(len(images), 1, figsize=(10, 4.2 * len(images)), dpi=100)
    for ax, path in zip(list(axes) if len(images) > 1 else [axes], images):
        ax.imshow(mpimg.imread(path))
        ax.set_axis_off()
    fig.suptitle(f"trainlab report: {run.name} (+experiment=quickstart)", y=0.995)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="trainlab-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    quick, short = work / "outputs" / "quick", work / "outputs" / "short"
    trainlab("train", "+experiment=quickstart", f"hydra.run.dir={quick}", cwd=work)
    trainlab("train", "+experiment=quickstart", "trainer.epochs=2", f"hydra.run.dir={short}", cwd=work)
    trainlab("report", str(quick), cwd=work)
    report_page(quick, DOCS / "report.png")
    trainlab("lr-find", "+experiment=quickstart", f"hydra.run.dir={work / 'lr_find'}", cwd=work)
    shutil.copy(work / "lr_find" / "lr_find.png", DOCS / "lr_find.png")
    trainlab("visualize", f"ckpt={quick}", "image=0", f"out={work / 'visualize'}", cwd=work)
    shutil.copy(work / "visualize" / "relu.png", DOCS / "feature_maps.png")
    trainlab("compare", str(short), str(quick), "n=12", f"out={work / 'compare'}", cwd=work)
    shutil.copy(work / "compare" / "disagreements.png", DOCS / "disagreements.png")
    sweep = work / "sweep"
    trainlab("train", "-m", "+experiment=quickstart", "trainer.epochs=3", "optimizer.lr=0.001,0.002", "seed=0,1",
             f"hydra.sweep.dir={sweep}", cwd=work)
    trainlab("report", str(sweep), cwd=work)
    shutil.copy(sweep / "report_files" / "val_acc1.png", DOCS / "seeds_val_acc1.png")
    print(f"wrote docs/report.png, lr_find.png, feature_maps.png, disagreements.png and seeds_val_acc1.png (runs in "
          f"{work})")


if __name__ == "__main__":
    main()
