"""`trainlab predict`: a trained checkpoint's top-k classes for new images that have no labels.

Any image files: a folder (searched at every depth; class subfolders are just more images), one image, or a
text file listing paths. Each image is decoded, resized and centre-cropped exactly as the checkpoint's data
were, normalised with the checkpoint's mean/std and run at the precision it was trained with. The input is
only read: the results go beside the checkpoint's run (`<run>/predict/...`), under `outputs/predict/`, or
to `out=`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from trainlab.core.errors import ConfigError, DataError
from trainlab.core.fs import atomic_write_text, claim_out_folder
from trainlab.core.options import key_values, positive
from trainlab.core.progress import progress_iter
from trainlab.data.archive import ArchivePath, is_archive, open_archive
from trainlab.data.decode import IMAGE_EXTENSIONS, decode_files
from trainlab.engine.ready import ready_model, stored_run, to_gray, trained_runtime
from trainlab.record.checkpoint import checkpoint_path
from trainlab.record.run_dir import beside_run

log = logging.getLogger(__name__)

USAGE = """usage: trainlab predict ckpt=<file.ckpt | run_dir | latest | YYYY-MM-DD> input=<folder | image | list.txt>
                        [out=DIR] [top_k=5] [batch_size=N]

The checkpoint's top-k classes for every image under input (any depth, any size; files that are not images
are skipped and counted). Writes predictions.csv and predict.json into out (default: <run>/predict/<time>).
"""
OPTIONS = ("ckpt", "input", "out", "top_k", "batch_size")


def list_inputs(spec: str) -> tuple[list[str], list[str]]:
    """(image files, other files) named by `input=`: a folder (recursively, hidden entries and trainlab's
    caches left out), an archive of images (.zip, .tar, .tar.gz, .tgz: read as it is, nothing unpacked), an
    image file, or a .txt file with one path per line (relative to the list's folder)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"input={spec} does not exist: pass a folder of images, an archive of them, an image file "
                        "or a .txt list")
    if is_archive(path):
        files = sorted(ArchivePath(open_archive(path)).files())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    elif path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        files = [(path.parent / ln).expanduser() for ln in lines if ln and not ln.startswith("#")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path} lists {len(missing)} file(s) that do not exist (first: {missing[0]}); "
                            "fix the list")
    else:
        files = [path]
    images = [str(f) for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
    others = [str(f) for f in files if f.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"input={spec} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); "
                        f"{len(others)} other file(s) found")
    return images, others


def claim_out_dir(out: Path, input_spec: str, images: list[str]) -> Path:
    """`out=` must be new, empty, or an earlier prediction's folder, and never inside the input folder or a
    folder that holds input images."""
    out = out.expanduser().resolve()
    source = Path(input_spec).expanduser().resolve()
    data_dirs = ({source} if source.is_dir() else set()) | {Path(p).resolve().parent for p in images}
    inside = next((d for d in sorted(data_dirs) if out == d or d in out.parents), None)
    if inside is not None:
        raise ConfigError(f"out={out} is inside the input {inside}: trainlab never writes into your data; "
                          "pick out= elsewhere")
    return claim_out_folder(out, "predict.json", "prediction")


def predict_images(options: dict[str, str]) -> dict:
    """The whole command: returns what predict.json holds."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"predict does not know {', '.join(unknown)}: it takes {', '.join(OPTIONS)}")
    for key in ("ckpt", "input"):
        if not options.get(key):
            raise ConfigError(f"predict needs {key}=...; see trainlab predict --help")
    top_k = positive(options, "top_k", 5)
    path = checkpoint_path(options["ckpt"])  # a checkpoint, a run directory, or a safetensors export
    ckpt, cfg, _ = stored_run(path, [], ("ckpt",), needs_data=False, anywhere=True)
    images_found, others = list_inputs(options["input"])  # before anything is written
    out = claim_out_dir(Path(options["out"]), options["input"], images_found) if options.get("out") \
        else beside_run(path, "predict", path.stem)
    ready = ready_model(ckpt, cfg, trained_runtime(ckpt, cfg, "predict"))
    top_k = min(top_k, len(ready.classes))
    batch = positive(options, "batch_size", ready.batch_size)
    pixels, bad = decode_files(images_found, ready.size, f"{len(images_found)} input images", skip_bad=True)
    bad_paths = [images_found[i] for i in bad]
    paths = [p for i, p in enumerate(images_found) if i not in set(bad)]
    if not paths:
        raise DataError(f"none of the {len(images_found)} image files under input={options['input']} could be read")
    if ready.data_channels == 1:  # trained on grayscale: the files are read as RGB, then made gray as PIL does
        pixels = to_gray(pixels)
    chunks = [(pixels[i:i + batch], torch.full((len(pixels[i:i + batch]),), -1)) for i in range(0, len(pixels), batch)]
    start = time.perf_counter()
    logits, _ = ready.logits(progress_iter(chunks, f"predicting {len(paths)} images"))
    seconds = time.perf_counter() - start
    classes, names, norm, size, runtime = ready.classes, ready.class_names, ready.normalization, ready.size, \
        ready.runtime
    table = predictions_table(paths, logits, classes, names, top_k)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.csv", table.to_csv(index=False))
    record = {"checkpoint": str(path), "epoch": ready.epoch, "input": str(options["input"]), "images": len(paths),
              "skipped_not_images": len(others), "skipped_unreadable": bad_paths, "top_k": top_k,
              "image_size": size, "normalization": norm, "seconds": seconds,
              "images_per_s": len(paths) / max(seconds, 1e-9), "runtime": runtime.to_dict(), "out": str(out)}
    atomic_write_text(out / "predict.json", json.dumps(record, indent=2, default=str) + "\n")
    _print(table, record, others)
    return record


def predictions_table(paths: list[str], logits: torch.Tensor, classes: list[str], names: list[str],
                      top_k: int) -> pd.DataFrame:
    """One row per image: the best class (index, id, name, probability) and the top-k (indices, names,
    probabilities, best first)."""
    probs = torch.softmax(logits.float(), dim=1)
    top_p, top_i = probs.topk(top_k, dim=1)
    return pd.DataFrame({
        "path": paths,
        "pred": top_i[:, 0].tolist(),
        "pred_id": [classes[i] for i in top_i[:, 0].tolist()],
        "pred_name": [names[i] for i in top_i[:, 0].tolist()],
        "confidence": top_p[:, 0].tolist(),
        f"top{top_k}": [" ".join(map(str, row)) for row in top_i.tolist()],
        f"top{top_k}_names": [" | ".join(names[i] for i in row) for row in top_i.tolist()],
        f"top{top_k}_probs": [" ".join(f"{p:.4f}" for p in row) for row in top_p.tolist()],
    })


def _print(table: pd.DataFrame, record: dict, others: list[str], shown: int = 10) -> None:
    width = max(len(Path(p).name) for p in table["path"][:shown])
    print(f"{'image':<{width}}  {'predicted':<30} confidence")
    for row in table.head(shown).itertuples():
        print(f"{Path(row.path).name:<{width}}  {str(row.pred_name)[:30]:<30} {row.confidence:.3f}")
    if len(table) > shown:
        print(f"... and {len(table) - shown} more")
    skipped = []
    if others:
        skipped.append(f"{len(others)} file(s) that are not images")
    if record["skipped_unreadable"]:
        skipped.append(f"{len(record['skipped_unreadable'])} unreadable image(s), listed in predict.json")
    print(f"{len(table)} images -> {record['out']}/predictions.csv ({record['images_per_s']:.0f} images/s)"
          + (f"; skipped {' and '.join(skipped)}" if skipped else ""))


def main(args: list[str]) -> dict:
    """`trainlab predict key=value ...`."""
    return predict_images(key_values("predict", args, OPTIONS))
