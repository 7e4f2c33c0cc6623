"""`trainlab report <run_dir | multirun_dir>`: report.md and a self-contained report.html (images embedded,
no network) from what a run already recorded: config, final and best metrics, curves, the last confusion
matrix with the most-confused pairs, per-class accuracy, and the diagnostics as the analysis. For a sweep:
a table of every job's final metrics, val curves overlaid, and for a search its trials, curves, best trial and the
parameters' importances."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import pandas as pd
import yaml

from trainlab.analysis import groups
from trainlab.analysis.fonts import use_fonts_for
from trainlab.analysis.plots import CURVES, confusion_figure, overlay_figure, plot_history, seed_band
from trainlab.core.errors import TrainlabError
from trainlab.core.fs import claim_out_folder, free_run_dir
from trainlab.core.suggest import did_you_mean
from trainlab.record.run_dir import (
    CONFUSION_DIR,
    ERROR_TXT,
    METRICS_CSV,
    OUTPUTS_ROOT,
    RUN_JSON,
    SUMMARY_JSON,
    diagnose_run,
    is_training_run,
    read_config,
    read_json,
    read_metrics,
    read_overrides,
    read_settings,
    sweep_jobs,
)
from trainlab.record.study import SEARCH_CSV
from trainlab.record.sweep import best_trial_line

log = logging.getLogger(__name__)

USAGE = """usage: trainlab report <run_dir | multirun_dir> [--rows KEY --cols KEY] [--metric 'final val/acc1']
       trainlab report <run_dir> <run_dir> ... [--out DIR]   (any runs side by side)

A sweep's report groups the jobs that differ only in seed (mean ± std, n) and pivots two overridden keys;
the tables are also written as seeds.csv/.md/.tex and pivot.csv/.md/.tex, and each value of the pivot's key against
its first (trainlab.analysis.evidence) as evidence.csv.
"""
OPTIONS = ("--rows", "--cols", "--metric", "--out")
FILES = "report_files"
HEADLINE = ["val/acc1", "val/acc5", "val/loss", "val/f1", "val/kappa", "val/auroc", "train/acc1", "train/loss"]


class Document:
    """Collects sections once and renders them as Markdown (images as files) and HTML (images inline)."""

    def __init__(self, title: str, out_dir: Path):
        self.title, self.out_dir = title, out_dir
        self.md: list[str] = [f"# {title}\n"]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]
        (out_dir / FILES).mkdir(parents=True, exist_ok=True)

    def heading(self, text: str) -> None:
        self.md.append(f"\n## {text}\n")
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        self.md.append("\n".join(f"- {i}" for i in items) + "\n")
        self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def code(self, text: str) -> None:
        self.md.append(f"```yaml\n{text}```\n")
        self.html.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, frame: pd.DataFrame, floats: str = "{:.4f}") -> None:
        shown = frame.map(lambda v: floats.format(v) if isinstance(v, float) else str(v))
        header = "| " + " | ".join(map(str, shown.columns)) + " |"
        rule = "|" + "---|" * len(shown.columns)
        rows = ["| " + " | ".join(r) + " |" for r in shown.astype(str).values.tolist()]
        self.md.append("\n".join([header, rule, *rows]) + "\n")
        self.html.append(shown.to_html(index=False, escape=True, border=0))

    def figure(self, fig, name: str, caption: str) -> None:
        import matplotlib.pyplot as plt

        path = self.out_dir / FILES / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        self.image(path, caption)

    def image(self, path: Path, caption: str) -> None:
        self.md.append(f"![{caption}]({FILES}/{path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def write(self) -> tuple[Path, Path]:
        md, page = self.out_dir / "report.md", self.out_dir / "report.html"
        md.write_text("\n".join(self.md))
        style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{padding:3px 8px;border-bottom:"
                 "1px solid #ddd;text-align:right}pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}"
                 "figcaption{color:#666;font-size:85%}")
        page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                        f"<style>{style}</style></head><body>{''.join(self.html)}</body></html>\n")
        return md, page


def _config_yaml(run_dir: Path) -> str:
    return yaml.safe_dump(read_config(run_dir), sort_keys=False)


def report(path: Path, rows: str | None = None, cols: str | None = None,
           metric: str = "final val/acc1") -> tuple[Path, Path]:
    path = Path(path)
    if (path / METRICS_CSV).is_file():
        if rows or cols:
            raise TrainlabError(f"--rows/--cols pivot the jobs of a sweep; {path} is a single run")
        return run_report(path)
    if sweep_jobs(path):
        return sweep_report(path, rows, cols, metric)
    raise TrainlabError(f"{path} holds no metrics.csv and no sweep jobs: point at a run or multirun directory")


def run_report(run_dir: Path) -> tuple[Path, Path]:
    history = read_metrics(run_dir)  # every file read before anything is written: a damaged one writes nothing
    summary = read_json(run_dir, SUMMARY_JSON)
    config = _config_yaml(run_dir)
    doc = Document(f"trainlab report: {run_dir}", run_dir)
    group = read_json(run_dir, RUN_JSON).get("distributed", {})
    processes = (f" x {group['world_size']} processes ({group.get('nodes', 1)} machine(s), {group.get('backend')}, "
                 f"global batch {group.get('batch_size_global')})" if group.get("world_size", 1) > 1 else "")
    if summary:
        doc.text(f"Stopped: {summary.get('stopped')} ({summary.get('stop_reason')}); "
                 f"{summary.get('epochs_run')} epochs "
                 f"in {summary.get('total_time_s', 0) / 60:.1f} min; best {summary.get('monitor')} at epoch "
                 f"{summary.get('best_epoch')}; precision {summary.get('runtime', {}).get('precision')} on "
                 f"{summary.get('runtime', {}).get('device')}{processes}.")
    doc.heading("Final and best metrics")
    rows = {"final": history.iloc[-1]}
    if summary.get("best"):
        rows[f"best (epoch {summary['best_epoch']})"] = pd.Series(summary["best"])
    doc.table(pd.DataFrame([{"": name, **{k: float(r[k]) for k in HEADLINE if k in r}} for name, r in rows.items()]))
    doc.text("Every recorded metric of the last epoch:")
    last = history.iloc[-1]
    values = [int(last[c]) if c in ("epoch", "step") else float(last[c]) for c in history.columns]
    doc.table(pd.DataFrame({"metric": list(history.columns), "value": pd.Series(values, dtype=object)}))
    doc.heading("Curves")
    captions = {"loss.png": "train and val loss (mean cross-entropy per sample) per epoch",
                "accuracy.png": "top-1 and top-5 accuracy per epoch",
                "metrics.png": "val precision, recall, F1 (macro), Cohen's kappa and AUROC per epoch",
                "lr.png": "learning rate per epoch", "grad_norm.png": "mean and max global gradient norm per epoch",
                "time.png": "seconds spent training and validating per epoch",
                "throughput.png": "training throughput (images per second) per epoch"}
    for written in plot_history(history, run_dir / FILES):
        doc.image(written, captions.get(written.name, CURVES[written.name][0]))
    _confusion_sections(doc, run_dir)
    doc.heading("Analysis")
    findings = diagnose_run(run_dir)
    doc.bullets([f.line() for f in findings] or ["No problems found in the curves."])
    doc.heading("Configuration")
    doc.code(config)
    return doc.write()


def _confusion_sections(doc: Document, run_dir: Path) -> None:
    files = sorted((run_dir / CONFUSION_DIR).glob("val_epoch*.csv"))
    if not files:
        return
    table = pd.read_csv(files[-1], index_col=0)
    labels, counts = list(table.index), table.to_numpy()
    import torch

    doc.heading(f"Confusion matrix ({files[-1].stem.replace('_', ', ')})")
    doc.figure(confusion_figure(torch.from_numpy(counts), labels, f"val confusion, {files[-1].stem}"), "confusion.png",
               "rows: true class, columns: predicted class; colour: fraction of the true class")
    if not use_fonts_for(labels):  # the picture shows indices: the names beside it
        doc.text("The picture numbers the classes (no installed font draws their names):")
        doc.table(pd.DataFrame({"index": range(len(labels)), "class": labels}))
    support = counts.sum(axis=1)
    pairs = [(counts[i, j], labels[i], labels[j], counts[i, j] / max(support[i], 1))
             for i in range(len(labels)) for j in range(len(labels)) if i != j and counts[i, j] > 0]
    pairs.sort(key=lambda p: (-p[0], -p[3]))
    if not pairs:
        doc.text("Most confused pairs: none, every validation image was classified correctly.")
    else:
        doc.text("Most confused pairs:")
        doc.table(pd.DataFrame([{"true class": t, "predicted as": p, "images": int(n), "share of true class": s}
                                for n, t, p, s in pairs[:15]]), floats="{:.3f}")
    accuracy = pd.DataFrame({"class": labels, "images": support,
                             "accuracy": [counts[i, i] / max(support[i], 1) for i in range(len(labels))]})
    accuracy = accuracy[accuracy["images"] > 0].sort_values("accuracy", ascending=False)
    k = min(10, max(1, len(accuracy) // 2))
    doc.heading("Per-class accuracy")
    doc.text(f"Best {k}:")
    doc.table(accuracy.head(k), floats="{:.3f}")
    doc.text(f"Worst {k}:")
    doc.table(accuracy.tail(k).iloc[::-1], floats="{:.3f}")


# The metrics.csv columns a sweep's report reads: a job whose file lacks one is reported without it, and named.
REPORTED = ("epoch", "val/acc1", "val/acc5", "val/loss", "train/acc1", "throughput/train_ips")


def _job_entry(job: Path, label: str) -> dict:
    """What the report needs of a job, read from its folder once. A damaged file (or a metrics.csv without a
    column the report reads) does not stop the report: `damaged` holds its one line, and what could be read
    is used."""
    entry = {"job": label, "settings": {}, "overrides": [], "history": None, "summary": {},
             "failed": (job / ERROR_TXT).is_file(), "damaged": None}
    try:
        entry["overrides"], entry["settings"] = read_overrides(job), read_settings(job)
        entry["history"], entry["summary"] = read_metrics(job), read_json(job, SUMMARY_JSON)
    except TrainlabError as e:
        entry["damaged"] = str(e)
        return entry
    missing = [c for c in REPORTED if entry["history"] is not None and c not in entry["history"]]
    if "epoch" in missing:
        entry["history"] = None
    if missing:
        entry["damaged"] = (f"{job / METRICS_CSV} has no {', '.join(missing)} column (hand-edited, or written by "
                            "another version): reported without it")
    return entry


def _value(frame: pd.DataFrame, column: str, how: str) -> float:
    if column not in frame or not frame[column].notna().any():
        return float("nan")
    values = frame[column].dropna()
    return float(values.iloc[-1] if how == "last" else getattr(values, how)())


def sweep_report(sweep_dir: Path, pivot_rows: str | None = None, pivot_cols: str | None = None,
                 metric: str = "final val/acc1", jobs: list[Path] | None = None) -> tuple[Path, Path]:
    """The report of a sweep's jobs, written into `sweep_dir`; with `jobs`, of any runs (`trainlab report A B`),
    written into `sweep_dir` (the out folder), each run named by its path. A job with a damaged record is named
    in one line (and in the table) and the others are reported."""
    names = {job: str(job) for job in jobs} if jobs else None
    jobs = jobs or sweep_jobs(sweep_dir)
    name = (lambda job: names[job]) if names else (lambda job: job.name)  # noqa: E731
    entries = {job: _job_entry(job, name(job)) for job in jobs}
    for entry in entries.values():
        if entry["damaged"]:
            log.warning("%s: %s", entry["job"], entry["damaged"])
    table = groups.job_table(list(entries.values()))
    if (pivot_rows is None) != (pivot_cols is None):
        raise TrainlabError("a pivot needs both --rows <key> and --cols <key>")
    grid = groups.pivot(table, pivot_rows, pivot_cols, metric) if pivot_rows else None  # checked before writing
    doc = Document(f"trainlab report: {len(jobs)} runs side by side" if names else
                   f"trainlab sweep report: {sweep_dir}", sweep_dir)
    rows, curves, curve_job = [], {}, {}
    overrides = {job: entries[job]["overrides"] for job in jobs}
    readable = [set(o) for job, o in overrides.items() if not entries[job]["damaged"] or o]
    common = set.intersection(*readable) if readable else set()
    if common:
        doc.text("Every job: " + " ".join(o for o in overrides[jobs[0]] if o in common))
    for job in jobs:
        entry = entries[job]
        label = " ".join(o for o in overrides[job] if o not in common) or name(job)
        history = entry["history"]
        if history is None:
            reason = (job / ERROR_TXT).read_text().strip() if entry["failed"] else ""
            rows.append({"job": name(job), "overrides": label,
                         "status": f"damaged: {entry['damaged']}" if entry["damaged"] else
                         f"failed: {reason}" if reason else "no epoch recorded"})
            continue
        curves[f"{name(job)}: {label}"] = history
        curve_job[f"{name(job)}: {label}"] = name(job)
        rows.append({"job": name(job), "overrides": label,
                     "status": entry["summary"].get("stopped", "running?") + (" (damaged: see above)"
                                                                              if entry["damaged"] else ""),
                     "epochs": int(history["epoch"].iloc[-1]), "best val/acc1": _value(history, "val/acc1", "max"),
                     **{k: _value(history, k, "last") for k in ("val/acc1", "val/acc5", "val/loss", "train/acc1")},
                     "images/s": _value(history, "throughput/train_ips", "mean")})
    damaged = [e for e in entries.values() if e["damaged"]]
    if damaged:
        doc.heading("Damaged records")
        doc.text("These jobs' files could not be read whole; the rest of the report leaves out what is missing:")
        doc.table(pd.DataFrame({"job": [e["job"] for e in damaged], "problem": [e["damaged"] for e in damaged]}))
    doc.heading("Jobs")
    doc.table(pd.DataFrame(rows).fillna(""))
    seeds = groups.seed_table(table)
    by_seed = groups.SEED in table and (seeds["n"] > 1).any()
    if by_seed:
        doc.heading("Seeds: mean ± std")
        doc.text("Jobs that differ only in seed, as one row: mean ± sample standard deviation over the n jobs that "
                 "produced metrics; failed jobs are counted in their own column. Also in seeds.csv (numbers), "
                 "seeds.md and seeds.tex.")
        groups.export(seeds, sweep_dir, "seeds")
        doc.table(groups.shown(seeds))
        print(groups.markdown(groups.shown(seeds)))
    if grid is not None:
        doc.heading(f"{metric}: {pivot_rows} down, {pivot_cols} across")
        doc.text("mean ± std over seeds (n jobs); also in pivot.csv, pivot.md and pivot.tex.")
        groups.export(grid, sweep_dir, "pivot")
        doc.table(grid)
        print(groups.markdown(grid))
        evidence = groups.pivot_evidence(table, pivot_rows, pivot_cols, metric)
        if len(evidence):
            doc.heading(f"Is it better than {evidence['A'].iloc[0]}? ({metric}, over seeds)")
            doc.text("Each value against the first with finished runs: the difference B - A with its 95% interval "
                     "(paired over the same seeds, else Welch), p and the seeds per group needed at 80% power "
                     "(docs/comparing.md); also in evidence.csv.")
            evidence.to_csv(sweep_dir / "evidence.csv", index=False)
            doc.table(evidence, floats="{:.4g}")
            for _, row in evidence.iterrows():
                print(f"{row['B']} vs {row['A']}: {row['verdict']}")
    if curves:
        doc.heading("Validation curves")
        if by_seed:
            label_of = {name(job): " ".join(f"{k}={v}" for k, v in r.items() if k in groups.setting_columns(table))
                        or "all jobs" for job, (_, r) in zip(jobs, table.iterrows())}
            bands: dict[str, list[pd.DataFrame]] = {}
            for key, history in curves.items():
                bands.setdefault(label_of[curve_job[key]], []).append(history)
            for column, ylabel, file in (("val/acc1", "val top-1 accuracy (fraction)", "val_acc1.png"),
                                         ("val/loss", "val loss (mean cross-entropy per sample)", "val_loss.png")):
                doc.figure(seed_band(bands, column, ylabel), file,
                           f"{column} per epoch: the mean over seeds, the band ± one standard deviation")
        else:
            doc.figure(overlay_figure(curves, "val/acc1", "val top-1 accuracy (fraction)"), "val_acc1.png",
                       "val/acc1 per epoch, one line per job")
            doc.figure(overlay_figure(curves, "val/loss", "val loss (mean cross-entropy per sample)"), "val_loss.png",
                       "val/loss per epoch, one line per job")
    if any(o.startswith("device") for job in jobs for o in overrides[job] if o not in common):
        _scaling_section(doc, sweep_dir, [job for job in jobs if not entries[job]["damaged"]])
    if (sweep_dir / SEARCH_CSV).is_file():
        _search_section(doc, sweep_dir)
    elif (optuna := sweep_dir / "optimization_results.yaml").is_file():  # Hydra's Optuna sweeper
        doc.heading("Hyper-parameter search (Optuna)")
        line = best_trial_line(sweep_dir)
        if line:
            doc.text(line[0].upper() + line[1:] + ".")
        doc.code(optuna.read_text())
    return doc.write()


def _search_section(doc: Document, sweep_dir: Path) -> None:
    """hydra/sweeper=search: every trial (search.csv), each one's monitored curve, the best trial, the parameters'
    importances (Optuna's fANOVA, from the study) and the value against each parameter."""
    from trainlab.analysis.plots import search_curves, value_against_parameters
    from trainlab.record.study import FIXED_COLUMNS, importances

    doc.heading("Hyper-parameter search")
    try:
        table = pd.read_csv(sweep_dir / SEARCH_CSV)
        missing = [c for c in FIXED_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"no column {', '.join(missing)}")
    except (OSError, ValueError) as e:  # pandas' ParserError and EmptyDataError are ValueErrors
        why = " ".join(str(e).split())
        log.warning("%s could not be read (%s): the search's section is left out; the jobs are reported",
                    sweep_dir / SEARCH_CSV, why)
        doc.text(f"search.csv could not be read ({why}); the jobs above are reported from their own folders.")
        return
    params = [c for c in table.columns if c not in FIXED_COLUMNS]
    counts = table["state"].value_counts()
    doc.text(f"{len(table)} trials: " + ", ".join(f"{n} {state}" for state, n in counts.items()) + ". "
             "A pruned trial's value is the last one it reported (its epoch is where the pruner stopped it); every "
             "trial's folder keeps its whole record. Also in search.csv.")
    line = best_trial_line(sweep_dir)
    if line:
        doc.text(line[0].upper() + line[1:] + ".")
    doc.table(table.drop(columns=["folder"]).fillna(""), floats="{:.4g}")
    curves, monitor = {}, "val/acc1"
    for _, row in table.iterrows():
        folder = Path(str(row["folder"]))
        history = read_metrics(folder) if folder.is_dir() else None
        if history is not None:
            curves[int(row["number"])] = history
            monitor = _monitor(folder) or monitor
    if curves:
        doc.figure(search_curves(curves, dict(zip(table["number"], table["state"])), monitor), "search_curves.png",
                   f"{monitor} per epoch, one line per trial")
    found = importances(sweep_dir)
    if isinstance(found, str):
        doc.text(f"Parameter importances: {found}.")
    else:
        doc.text("Parameter importances (Optuna's fANOVA over the completed trials: the share of the value's "
                 "variance each parameter explains):")
        doc.table(pd.DataFrame({"parameter": list(found), "importance": list(found.values())}))
    if params and (table["state"].isin(["complete", "pruned"])).any():
        doc.figure(value_against_parameters(table, params, monitor), "search_parameters.png",
                   "each trial's value against each parameter (hollow: pruned, at its last reported value)")


def _monitor(run_dir: Path) -> str | None:
    try:
        return read_json(run_dir, SUMMARY_JSON).get("monitor")
    except TrainlabError:
        return None


def scaling_table(jobs: list[Path]) -> pd.DataFrame:
    """Per job: device type, process count, global and per-process batch, images/s for the whole group and
    per device, epoch time, speed-up over the 1-device job of the same type (and the same other overrides),
    scaling efficiency and the final metrics. Failed jobs keep their reason."""
    rows = []
    overrides = {job: read_overrides(job) for job in jobs}
    common = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    for job in jobs:
        config, run = read_config(job), read_json(job, RUN_JSON)
        group = run.get("distributed", {})
        device = config.get("device", {})
        count = int(group.get("world_size", device.get("count", 1)))
        batch = int(group.get("batch_size_global", config.get("dataset", {}).get("batch_size", 0)))
        others = " ".join(o for o in overrides[job] if o not in common and not o.startswith(("device", "+device")))
        row = {"job": job.name, "device": device.get("type", "?"), "count": count, "others": others,
               "global batch": batch, "batch per device": batch // max(count, 1)}
        history = read_metrics(job)
        if history is not None:
            last = history.iloc[-1]
            row.update({"images/s": float(history["throughput/train_ips"].mean()),
                        "images/s per device": float(history["throughput/train_ips"].mean()) / count,
                        "epoch s": float((history["time/train_s"] + history["time/val_s"]).mean()),
                        **{k: float(last[k]) for k in ("val/acc1", "val/loss", "train/loss")}, "status": "ok"})
        else:
            error = job / ERROR_TXT
            row["status"] = "failed: " + (error.read_text().strip() if error.is_file() else "?")
        rows.append(row)
    table = pd.DataFrame(rows)
    if "images/s" in table:
        single = table[table["count"] == 1].groupby(["device", "others"])["images/s"].max().to_dict()
        table["speed-up"] = [r["images/s"] / single[(r["device"], r["others"])]
                             if single.get((r["device"], r["others"])) else float("nan") for _, r in table.iterrows()]
        table["efficiency"] = table["speed-up"] / table["count"]
    if not table["others"].astype(bool).any():
        table = table.drop(columns="others")
    return table


def _scaling_section(doc: Document, sweep_dir: Path, jobs: list[Path]) -> None:
    import matplotlib.pyplot as plt

    table = scaling_table(jobs)
    table.to_csv(sweep_dir / "scaling.csv", index=False)
    doc.heading("Device scaling")
    doc.table(table.fillna(""), floats="{:.2f}")
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    labels = [f"{r['device']} x{r['count']}" + (f"\n{r['others']}" if r.get("others") else "")
              for _, r in table.iterrows()]
    ax.bar(labels, table["images/s"].fillna(0) if "images/s" in table else [0] * len(table), color="tab:blue")
    ax.set_ylabel("training images per second")
    ax.set_xlabel("device x processes (failed jobs: 0)")
    fig.tight_layout()
    fig.savefig(sweep_dir / "scaling.png", dpi=100)
    doc.figure(fig, "scaling.png", "training throughput per device configuration")


def main(args: list[str]) -> None:
    """`trainlab report <dir> [--rows KEY --cols KEY] [--metric NAME]`, or `trainlab report A B ... [--out DIR]`."""
    options, rest, items = {}, [], iter(a2 for a in args for a2 in (a.split("=", 1) if a.startswith("--") else [a]))
    for item in items:
        if item.startswith("--"):
            if item not in OPTIONS:
                raise TrainlabError(f"unknown option {item}{did_you_mean(item, OPTIONS)} (report takes "
                                    f"{', '.join(OPTIONS)})")
            value = next(items, None)
            if value is None:
                raise TrainlabError(f"{item} needs a value, e.g. {item} optimizer")
            options[item[2:]] = value
        else:
            rest.append(item)
    pivot = (options.get("rows"), options.get("cols"), options.get("metric", "final val/acc1"))
    if len(rest) > 1:  # any runs side by side, not only one sweep's jobs
        md, page = _compare_runs([Path(p) for p in rest], Path(options["out"]) if "out" in options else None, pivot)
    else:
        path = Path(rest[0]) if rest else Path()
        if not rest or not path.is_dir():
            raise TrainlabError(f"{path} is not a directory: pass a trainlab run directory (outputs/<date>/<time>)")
        md, page = report(path, *pivot)
    print(f"wrote {page} (self-contained) and {md}")


def _compare_runs(runs: list[Path], out: Path | None, pivot: tuple) -> tuple[Path, Path]:
    from datetime import datetime

    for run_dir in runs:
        if not is_training_run(run_dir):
            raise TrainlabError(f"{run_dir} holds no run (no run.json): `trainlab report A B ...` compares run "
                                "directories; for a whole sweep pass its multirun directory alone")
    out = claim_out_folder(out or free_run_dir(OUTPUTS_ROOT / "report" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"),
                           "report.md", "report")
    return sweep_report(out, *pivot, jobs=runs)
