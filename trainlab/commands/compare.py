"""`trainlab compare`: is B better than A, with the evidence.

Two checkpoints: A and B are evaluation directories (from `trainlab evaluate`) or checkpoints / run directories,
which are evaluated on their validation split first. Writes disagreements.csv, per_class.csv, disagreements.png (a
labelled grid of the most confident disagreements) and compare.json with McNemar's test of the images only one of
them gets right.

Two recipes over seeds: two sweep folders, or one sweep split by an override (`by=optimizer`). Compares one number
per run (`metric=`, default "best val/acc1") between the groups (trainlab.analysis.evidence): Welch's interval and
p-value, the paired test when both ran the same seeds, the seeds needed at 80% power; writes compare.json,
runs.csv and compare.png.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from datetime import datetime
from pathlib import Path

import pandas as pd

from trainlab.core.errors import TrainlabError
from trainlab.core.fs import atomic_write_text, claim_out_folder, free_run_dir
from trainlab.core.options import positive, unquote
from trainlab.record.checkpoint import checkpoint_path
from trainlab.record.run_dir import (
    OUTPUTS_ROOT,
    SUMMARY_JSON,
    beside_run,
    claim_run_dir,
    read_config,
    read_json,
    read_metrics,
    read_settings,
    sweep_jobs,
)
from trainlab.record.sweep import is_sweep_dir

log = logging.getLogger(__name__)

USAGE = """usage: trainlab compare <A> <B> [n=10] [out=DIR]
       trainlab compare <sweep A> <sweep B> [metric="best val/acc1"] [out=DIR]
       trainlab compare <sweep> by=<key> [a=<value> b=<value>] [metric="best val/acc1"] [out=DIR]

Two checkpoints on the same images: A and B are evaluation directories (from `trainlab evaluate`), checkpoints or
run directories (evaluated on val first). Writes disagreements.csv, per_class.csv, compare.json (with McNemar's
test) and disagreements.png (n images).

Two recipes over seeds: two sweep folders, or one sweep whose jobs an override splits in two (by=optimizer; a= and
b= pick two of its values). metric: "best <column>" or "final <column>" of metrics.csv, or a summary.json field
(total_time_s, time_to_target.train_s). Writes compare.json, runs.csv and compare.png: each group's mean, std and
n, the difference with its 95% interval (Welch; paired when both ran the same seeds), p and the seeds needed.
"""
TILE_INCHES, TILE_DPI = (2.4, 2.8), 100  # one labelled picture in the grid: 240 x 280 pixels


def ensure_evaluated(spec: str) -> Path:
    """An evaluation directory for `spec`: itself if it holds predictions.csv, else a fresh evaluation of
    the checkpoint (or run directory) on its validation split."""
    path = Path(spec).expanduser()
    if (path / "predictions.csv").is_file() and (path / "metrics.json").is_file():
        return path
    from trainlab.engine.evaluation import evaluate

    ckpt = checkpoint_path(spec)
    out = beside_run(ckpt, "eval", f"{ckpt.stem}-val")
    lock = claim_run_dir(out, option="the evaluation folder")
    log.info("evaluating %s on val first", ckpt)
    try:
        evaluate(ckpt, "val", "auto", [], out)  # the weights the checkpoint was chosen by (EMA or trained)
    finally:
        lock.release()
    return out


def _load(eval_dir: Path) -> tuple[pd.DataFrame, dict]:
    record = read_json(eval_dir, "metrics.json")
    try:
        frame = pd.read_csv(eval_dir / "predictions.csv")
    except (OSError, ValueError) as e:
        raise TrainlabError(f"{eval_dir / 'predictions.csv'} is damaged ({' '.join(str(e).split())[:80]}): "
                            "evaluate the checkpoint again, or pass its checkpoint to compare") from None
    if not {"path", "pred", "pred_name", "confidence"} <= set(frame) or "split" not in record:
        raise TrainlabError(f"{eval_dir} is not a complete evaluation (predictions.csv or metrics.json lack their "
                            "columns): evaluate the checkpoint again, or pass its checkpoint to compare")
    if "target" not in frame:
        raise TrainlabError(f"{eval_dir} holds predictions for an unlabelled split ({record['split']}): "
                            "compare needs labels, evaluate on split=val or split=train")
    return frame, record


def compare(a_spec: str, b_spec: str, n: int = 10, out_dir: Path | None = None) -> dict:
    out_dir = _claim_out_dir(out_dir)  # first: a wrong out= is refused before any evaluation runs
    a_dir, b_dir = ensure_evaluated(a_spec), ensure_evaluated(b_spec)
    (a, a_rec), (b, b_rec) = _load(a_dir), _load(b_dir)
    if list(a["path"]) != list(b["path"]) or list(a["target"]) != list(b["target"]):
        raise TrainlabError(f"{a_dir} and {b_dir} were evaluated on different images "
                            f"({a_rec['split']}: {len(a)} vs {b_rec['split']}: {len(b)}); evaluate both on the same "
                            "split and data")
    both = pd.DataFrame({
        "path": a["path"], "target": a["target"], "target_name": a["target_name"],
        "a_pred": a["pred"], "a_pred_name": a["pred_name"], "a_confidence": a["confidence"],
        "b_pred": b["pred"], "b_pred_name": b["pred_name"], "b_confidence": b["confidence"],
    })
    a_right, b_right = both["a_pred"] == both["target"], both["b_pred"] == both["target"]
    both["right"] = [("both" if x and y else "A" if x else "B" if y else "neither") for x, y in zip(a_right, b_right)]
    differ = both[both["a_pred"] != both["b_pred"]].copy()
    # Most confident disagreements first, taking the true classes in turn so the grid is not one class.
    differ["confidence"] = differ[["a_confidence", "b_confidence"]].max(axis=1)
    differ = differ.sort_values("confidence", ascending=False, kind="stable")
    differ["turn"] = differ.groupby("target").cumcount()
    differ = differ.sort_values(["turn", "confidence"], ascending=[True, False], kind="stable")
    differ = differ.drop(columns=["confidence", "turn"])
    differ.to_csv(out_dir / "disagreements.csv", index=False)
    per_class = pd.DataFrame({"class": both["target_name"], "a": a_right, "b": b_right}).groupby("class").mean()
    per_class = per_class.rename(columns={"a": "a_acc", "b": "b_acc"})
    per_class["change"] = per_class["b_acc"] - per_class["a_acc"]
    per_class = per_class.reindex(per_class["change"].abs().sort_values(ascending=False).index)
    per_class.to_csv(out_dir / "per_class.csv")
    counts = {"images": len(both), "disagreements": len(differ),
              "both_right": int((a_right & b_right).sum()), "only_a_right": int((a_right & ~b_right).sum()),
              "only_b_right": int((~a_right & b_right).sum()), "both_wrong": int((~a_right & ~b_right).sum())}
    shown = 0
    if len(differ):
        shown = min(n, len(differ))
        disagreement_grid(differ.head(shown), a_rec["checkpoint"], b_rec["checkpoint"], out_dir / "disagreements.png")
    from trainlab.analysis.evidence import mcnemar

    result = {"a": str(a_dir), "b": str(b_dir),
              "a_checkpoint": a_rec["checkpoint"], "b_checkpoint": b_rec["checkpoint"],
              "split": a_rec["split"], **counts, "shown": shown,
              "evidence": mcnemar(counts["only_a_right"], counts["only_b_right"], counts["images"]),
              "largest_movers": [{"class": c, **{k: float(v) for k, v in row.items()}}
                                 for c, row in per_class.head(5).iterrows()]}
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=2) + "\n")
    _print(result, out_dir)
    return result


def _claim_out_dir(out_dir: Path | None) -> Path:
    """`out=` must be new, empty, or an earlier comparison's folder (whose files are replaced); by default a
    fresh folder under outputs/compare."""
    if out_dir is None:
        out_dir = free_run_dir(OUTPUTS_ROOT / "compare" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}")
    return claim_out_folder(out_dir, "compare.json", "comparison")


def _short(name: str, width: int = 18) -> str:
    name = str(name).split(",")[0]
    return name if len(name) <= width else name[:width - 1] + "…"


def _tail(path: str, parts: int = 3) -> str:
    return "/".join(Path(path).parts[-parts:])


def disagreement_grid(rows: pd.DataFrame, a_name: str, b_name: str, path: Path) -> None:
    """A grid of the images, each titled with the true class and both predictions (✓ right, ✗ wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainlab.analysis.fonts import use_fonts_for
    from trainlab.data.decode import decode_file

    names = sorted({str(n) for c in ("target_name", "a_pred_name", "b_pred_name") for n in rows[c]})
    if not use_fonts_for([*names, _tail(a_name), _tail(b_name)]):  # numbered instead: classes.csv names them
        rows = rows.assign(target_name=rows["target"].map(lambda i: f"#{i}"),
                           a_pred_name=rows["a_pred"].map(lambda i: f"#{i}"),
                           b_pred_name=rows["b_pred"].map(lambda i: f"#{i}"))
    cols = min(5, len(rows))
    grid_rows = math.ceil(len(rows) / cols)
    # Constrained layout fits the three-line titles inside each tile without changing the figure size.
    fig, axes = plt.subplots(grid_rows, cols, figsize=(cols * TILE_INCHES[0], grid_rows * TILE_INCHES[1]),
                             dpi=TILE_DPI, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, rows.iterrows()):
        try:
            ax.imshow(decode_file(row["path"], 64).permute(1, 2, 0).numpy())
        except (TrainlabError, OSError, RuntimeError, ValueError):
            ax.text(0.5, 0.5, "(no image file)", ha="center", va="center", transform=ax.transAxes)
        mark = lambda pred, target=row["target"]: "✓" if pred == target else "✗"  # noqa: E731
        ax.set_title(f"true: {_short(row['target_name'])}\n"
                     f"A: {_short(row['a_pred_name'])} {row['a_confidence']:.2f} {mark(row['a_pred'])}\n"
                     f"B: {_short(row['b_pred_name'])} {row['b_confidence']:.2f} {mark(row['b_pred'])}", fontsize=8)
    fig.suptitle(f"A = {_tail(a_name)}    B = {_tail(b_name)}", fontsize=9)
    fig.savefig(path, dpi=TILE_DPI)  # no bbox_inches="tight", which would change the size
    plt.close(fig)


def _print(result: dict, out_dir: Path) -> None:
    from rich.table import Table

    from trainlab.core.progress import console as make_console

    console = make_console()
    console.print(f"A: {result['a_checkpoint']}\nB: {result['b_checkpoint']}\n"
                  f"{result['images']} {result['split']} images")
    if not result["disagreements"]:
        console.print("no disagreements: A and B predict the same class for every image")
    counts = Table(title="agreement")
    for column in ("both right", "only A right", "only B right", "both wrong", "disagreements"):
        counts.add_column(column, justify="right")
    kinds = ("both_right", "only_a_right", "only_b_right", "both_wrong", "disagreements")
    counts.add_row(*(str(result[k]) for k in kinds))
    console.print(counts)
    movers = Table(title="per-class accuracy, largest changes (B - A)")
    for column in ("class", "A", "B", "change"):
        movers.add_column(column, justify="left" if column == "class" else "right")
    for row in result["largest_movers"]:
        movers.add_row(str(row["class"]), f"{row['a_acc']:.3f}", f"{row['b_acc']:.3f}", f"{row['change']:+.3f}")
    console.print(movers)
    picture = f", disagreements.png ({result['shown']} images)" if result["shown"] else ""
    console.print(f"wrote disagreements.csv, per_class.csv, compare.json{picture} to {out_dir}")
    evidence = result["evidence"]
    console.print(f"McNemar's exact test on the {evidence['only_a_right'] + evidence['only_b_right']} images only one "
                  f"of them gets right; {evidence['interval']}", highlight=False)
    print(f"verdict: {evidence['verdict']}")


def main(args: list[str]) -> dict:
    """`trainlab compare A B [n=10] [out=DIR]`, or two groups of runs (see USAGE)."""
    positional = [a for a in args if "=" not in a]
    options = {k: unquote(v) for k, v in (a.split("=", 1) for a in args if "=" in a)}
    out = Path(options["out"]) if "out" in options else None
    groups_of_runs = "by" in options or (len(positional) == 2 and all(is_sweep_dir(p) for p in positional))
    if groups_of_runs:
        allowed, wanted = {"by", "a", "b", "metric", "out"}, 1 if "by" in options else 2
        if len(positional) != wanted or set(options) - allowed or ("a" in options) != ("b" in options) or \
                ("a" in options and "by" not in options):
            raise TrainlabError("compare takes two sweep folders, or one sweep and by=<override> (with a=<value> "
                                f"b=<value> to pick two), and optional metric=, out= (got {' '.join(args)})")
        return compare_groups(positional, options, out)
    if len(positional) != 2 or set(options) - {"n", "out"}:
        raise TrainlabError(f"compare takes two evaluation dirs or checkpoints and optional n=, out= (got "
                            f"{' '.join(args)})")
    n = positive(options, "n", 10)
    return compare(positional[0], positional[1], n, out)


def _runs(sweep: Path, metric: str) -> tuple[list[dict], list[str]]:
    """Each finished job of a sweep: its folder, settings, seed and `metric` (None when it lacks it); and the jobs
    left out, with why."""
    from trainlab.analysis.groups import metric_value

    if not is_sweep_dir(sweep):
        raise TrainlabError(f"{sweep} is not a sweep folder (no sweep.json or multirun.yaml): pass the folder "
                            "`trainlab train -m` wrote")
    runs, left_out = [], []
    for job in sweep_jobs(sweep):
        try:
            summary, history = read_json(job, SUMMARY_JSON), read_metrics(job)
            settings = read_settings(job)
            seed = settings.get("seed", read_config(job).get("seed"))
        except TrainlabError as e:
            left_out.append(f"{job}: {e}")
            continue
        if not summary:
            left_out.append(f"{job}: not finished (no summary.json)")
            continue
        runs.append({"job": str(job), "settings": settings, "seed": str(seed),
                     "value": metric_value(history, summary, metric)})
    return runs, left_out


def _with_value(group: dict, metric: str, left_out: list[str]) -> dict:
    """The group's runs that have `metric` (a run that never reached a time to target has none: named)."""
    kept = [r for r in group["runs"] if r["value"] is not None and r["value"] == r["value"]]
    left_out += [f"{r['job']}: no {metric}" for r in group["runs"] if r not in kept]
    return {**group, "runs": kept}


def _split(positional: list[str], options: dict, metric: str) -> tuple[dict, dict, list[str]]:
    """The two groups, each {"label", "runs"}, and the jobs left out."""
    if "by" not in options:
        (a_runs, a_out), (b_runs, b_out) = (_runs(Path(p).expanduser(), metric) for p in positional)
        return {"label": positional[0], "runs": a_runs}, {"label": positional[1], "runs": b_runs}, a_out + b_out
    key = options["by"]
    runs, left_out = _runs(Path(positional[0]).expanduser(), metric)
    values = sorted({r["settings"][key] for r in runs if key in r["settings"]})
    if "a" in options:
        picked = [options["a"], options["b"]]
        missing = [v for v in picked if v not in values]
        if missing:
            raise TrainlabError(f"no finished job of {positional[0]} has {key}={missing[0]}; its values: "
                                f"{', '.join(values) or 'none'}")
    elif len(values) != 2:
        keys = sorted({k for r in runs for k in r["settings"] if k != "seed"})
        named = ", ".join(values) or "none"
        raise TrainlabError(f"by={key} splits {positional[0]} into {len(values)} group(s) ({named}): compare needs "
                            "two; " + ("pick them with a=<value> b=<value>" if values else
                                       f"split by one of its overrides: {', '.join(keys) or 'none'}"))
    else:
        picked = values
    groups = [{"label": f"{key}={v}", "runs": [r for r in runs if r["settings"].get(key) == v]} for v in picked]
    return groups[0], groups[1], left_out


def compare_groups(positional: list[str], options: dict, out_dir: Path | None) -> dict:
    """Two groups of runs: one number per run, the evidence for a difference, runs.csv, compare.png."""
    from trainlab.analysis.evidence import two_groups
    from trainlab.analysis.groups import is_fraction, lower_is_better

    metric = options.get("metric", "best val/acc1")
    a, b, left_out = _split(positional, options, metric)
    a, b = _with_value(a, metric, left_out), _with_value(b, metric, left_out)
    for line in left_out:
        log.warning("left out: %s", line)
    for name, group in (("A", a), ("B", b)):
        if not group["runs"]:
            why = f" ({left_out[0]}{', ...' if len(left_out) > 1 else ''})" if left_out else ""
            raise TrainlabError(f"group {name} ({group['label']}) has no finished run with {metric}{why}: metric= "
                                "takes 'best <column>' or 'final <column>' of metrics.csv (val/acc1, val/loss, ...) "
                                "or a summary.json field (total_time_s, time_to_target.train_s)")
    out_dir = _claim_out_dir(out_dir)  # once the groups are known: a mistake above leaves no folder
    by_seed = lambda group: {r["seed"]: r["value"] for r in group["runs"]}  # noqa: E731
    if len(by_seed(a)) != len(a["runs"]) or len(by_seed(b)) != len(b["runs"]):  # two runs with one seed
        by_seed = lambda group: {f"{r['seed']}@{i}": r["value"] for i, r in enumerate(group["runs"])}  # noqa: E731
    stats = two_groups(by_seed(a), by_seed(b), not lower_is_better(metric), is_fraction(metric))
    frame = pd.DataFrame([{"group": name, "label": g["label"], "job": r["job"], "seed": r["seed"], metric: r["value"]}
                          for name, g in (("A", a), ("B", b)) for r in g["runs"]])
    frame.to_csv(out_dir / "runs.csv", index=False)
    result = {"kind": "groups", "metric": metric, "higher_is_better": not lower_is_better(metric), **stats,
              "a": {"label": a["label"], **stats["a"], "runs": a["runs"]},
              "b": {"label": b["label"], **stats["b"], "runs": b["runs"]}, "left_out": left_out}
    groups_figure(frame, metric, a["label"], b["label"], stats, out_dir / "compare.png")
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=2) + "\n")
    _print_groups(result, out_dir)
    return result


def groups_figure(frame: pd.DataFrame, metric: str, a_label: str, b_label: str, stats: dict, path: Path) -> None:
    """Each run's value as a dot per group, runs of the same seed joined, each group's mean with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats as sps

    from trainlab.analysis.fonts import drawable_labels

    labels = drawable_labels([_tail(a_label, 2), _tail(b_label, 2)])
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100, layout="constrained")
    for x, name in enumerate(("A", "B")):
        values = frame.loc[frame["group"] == name, metric].to_numpy()
        ax.scatter([x] * len(values), values, alpha=0.6, color="C0" if x == 0 else "C1")
        if len(values) > 1:
            half = sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5
            ax.errorbar(x + 0.12, values.mean(), yerr=half, fmt="o", color="black", capsize=4)
    a_rows, b_rows = (frame[frame["group"] == g].set_index("seed")[metric] for g in ("A", "B"))
    for seed in a_rows.index.intersection(b_rows.index):
        if a_rows.index.is_unique and b_rows.index.is_unique:
            ax.plot([0, 1], [a_rows[seed], b_rows[seed]], color="grey", alpha=0.3, linewidth=0.8)
    ax.set_xticks([0, 1], [f"A: {labels[0]}", f"B: {labels[1]}"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel(metric)
    ax.set_title("\n".join(textwrap.wrap(stats["verdict"], 64)), fontsize=8)
    fig.savefig(path)
    plt.close(fig)


def _print_groups(result: dict, out_dir: Path) -> None:
    from rich.table import Table

    from trainlab.core.progress import console as make_console

    console = make_console()
    table = Table(title=f"{result['metric']} per group")
    for column in ("group", "runs", "mean", "std", "n"):
        table.add_column(column, justify="left" if column in ("group", "runs") else "right")
    for name in ("a", "b"):
        d = result[name]
        table.add_row(f"{name.upper()}: {d['label']}", " ".join(f"{r['value']:.4f}" for r in d["runs"]),
                      "—" if d["mean"] is None else f"{d['mean']:.4f}", "—" if d["std"] is None else f"{d['std']:.4f}",
                      str(d["n"]))
    console.print(table)
    chosen = result.get("paired") or result.get("welch")
    if chosen:
        console.print(f"difference B - A: {result['difference']:+.4f}, 95% interval [{chosen['ci_low']:+.4f}, "
                      f"{chosen['ci_high']:+.4f}], p = {chosen['p_value']:.3g} ({result['test']})", highlight=False)
    if result["seeds_needed"]:
        from trainlab.analysis.evidence import MAX_SEEDS

        more = f"more than {MAX_SEEDS}" if result["seeds_needed"] > MAX_SEEDS else result["seeds_needed"]
        console.print(f"seeds per group to tell this difference apart at 80% power: {more}", highlight=False)
    console.print(f"wrote runs.csv, compare.json{', compare.png' if (out_dir / 'compare.png').exists() else ''} to "
                  f"{out_dir}", highlight=False)
    print(f"verdict: {result['verdict']}")
