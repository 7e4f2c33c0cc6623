"""`trainlab compare A B`: the images two checkpoints judge differently.

A and B are evaluation directories (from `trainlab evaluate`) or checkpoints / run directories, which
are evaluated on their validation split first. Writes disagreements.csv, per_class.csv and
disagreements.png (a labelled grid of the most confident disagreements).
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from pathlib import Path

import pandas as pd

from trainlab.core.errors import TrainlabError
from trainlab.core.fs import atomic_write_text, claim_out_folder, free_run_dir
from trainlab.core.options import positive, unquote
from trainlab.record.checkpoint import checkpoint_path
from trainlab.record.run_dir import OUTPUTS_ROOT, beside_run, claim_run_dir, read_json

log = logging.getLogger(__name__)

USAGE = """usage: trainlab compare <A> <B> [n=10] [out=DIR]

A and B: evaluation directories (from `trainlab evaluate`), checkpoints or run directories (evaluated on
val first). Writes disagreements.csv, per_class.csv, compare.json and disagreements.png (n images).
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
    result = {"a": str(a_dir), "b": str(b_dir),
              "a_checkpoint": a_rec["checkpoint"], "b_checkpoint": b_rec["checkpoint"],
              "split": a_rec["split"], **counts, "shown": shown,
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


def main(args: list[str]) -> dict:
    """`trainlab compare A B [n=10] [out=DIR]`."""
    positional = [a for a in args if "=" not in a]
    options = {k: unquote(v) for k, v in (a.split("=", 1) for a in args if "=" in a)}
    if len(positional) != 2 or set(options) - {"n", "out"}:
        raise TrainlabError(f"compare takes two evaluation dirs or checkpoints and optional n=, out= (got "
                            f"{' '.join(args)})")
    n = positive(options, "n", 10)
    return compare(positional[0], positional[1], n, Path(options["out"]) if "out" in options else None)
