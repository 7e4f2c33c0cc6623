"""`trainlab diagnose <run_dir | multirun_dir>`: what the curves of a run (or of every job of a sweep) say:
over-fitting, a plateau, a loss that rises, accuracy at chance, dead layers (analysis.diagnostics)."""

from __future__ import annotations

from pathlib import Path

from trainlab.core.errors import TrainlabError
from trainlab.record.run_dir import METRICS_CSV, diagnose_run, sweep_jobs

USAGE = "usage: trainlab diagnose <run_dir | multirun_dir>\n"


def print_findings(path: Path) -> None:
    """The diagnostics of a run, or of every job of a sweep."""
    runs = [path] if (path / METRICS_CSV).is_file() else \
        [j for j in sweep_jobs(path) if (j / METRICS_CSV).is_file()]
    if not runs:
        raise TrainlabError(f"{path} has no metrics.csv: point at a trainlab run or multirun directory")
    for run in runs:
        findings = diagnose_run(run)
        if len(runs) > 1:
            print(f"{run}:")
        for finding in findings:
            print(("  " if len(runs) > 1 else "") + finding.line())
        if not findings:
            print(("  " if len(runs) > 1 else f"{run}: ") + "no problems found in the curves")


def main(args: list[str]) -> None:
    path = Path(args[0])
    if len(args) != 1 or not path.is_dir():
        raise TrainlabError(f"{' '.join(args)} is not a directory: pass a trainlab run directory (outputs/<date>/"
                            "<time>) or a multirun directory")
    print_findings(path)
