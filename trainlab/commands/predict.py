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
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch

from trainlab.augment import BatchAugment
from trainlab.commands.evaluate import checkpoint_path
from trainlab.commands.evaluate import predict as logits_of
from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError, DataError
from trainlab.core.fs import atomic_write_text, claim_out_folder, free_run_dir
from trainlab.core.progress import progress_iter
from trainlab.core.runtime import resolve_runtime
from trainlab.data.decode import IMAGE_EXTENSIONS, decode_files
from trainlab.engine.build import build_model, data_channels, input_channels
from trainlab.record.checkpoint import OUTPUTS_ROOT
from trainlab.record.stored_run import stored_run

log = logging.getLogger(__name__)

USAGE = """usage: trainlab predict ckpt=<file.ckpt | run_dir | latest | YYYY-MM-DD> input=<folder | image | list.txt>
                        [out=DIR] [top_k=5] [batch_size=N]

The checkpoint's top-k classes for every image under input (any depth, any size; files that are not images
are skipped and counted). Writes predictions.csv and predict.json into out (default: <run>/predict/<time>).
"""
OPTIONS = ("ckpt", "input", "out", "top_k", "batch_size")


def list_inputs(spec: str) -> tuple[list[str], list[str]]:
    """(image files, other files) named by `input=`: a folder (recursively, hidden entries and trainlab's
    caches left out), an image file, or a .txt file with one path per line (relative to the list's folder)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"input={spec} does not exist: pass a folder of images, an image file or a .txt list")
    if path.is_dir():
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


def default_out_dir(ckpt: Path, kind: str = "predict") -> Path:
    """Beside the checkpoint's run when it sits in one (`<run>/<kind>/<time>`), else under outputs/<kind>."""
    stamp = datetime.now()
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run / "run.json").is_file():
        return free_run_dir(run / kind / f"{ckpt.stem}-{stamp:%Y-%m-%d_%H-%M-%S}")
    return free_run_dir(OUTPUTS_ROOT / kind / f"{stamp:%Y-%m-%d}" / f"{ckpt.stem}-{stamp:%H-%M-%S}")


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


def _positive(options: dict, key: str, default: int) -> int:
    value = options.get(key, str(default))
    if not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"{key} must be a positive integer (got {value})")
    return int(value)


def predict_images(options: dict[str, str]) -> dict:
    """The whole command: returns what predict.json holds."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"predict does not know {', '.join(unknown)}: it takes {', '.join(OPTIONS)}")
    for key in ("ckpt", "input"):
        if not options.get(key):
            raise ConfigError(f"predict needs {key}=...; see trainlab predict --help")
    top_k = _positive(options, "top_k", 5)
    path = checkpoint_path(options["ckpt"])  # a checkpoint, a run directory, or a safetensors export
    ckpt, cfg, _ = stored_run(path, [], ("ckpt",), needs_data=False, anywhere=True)
    images_found, others = list_inputs(options["input"])  # before anything is written
    out = claim_out_dir(Path(options["out"]), options["input"], images_found) if options.get("out") \
        else default_out_dir(path)
    model, runtime, about = _from_checkpoint(ckpt, cfg)
    classes, names, norm, size = about["classes"], about["class_names"], about["normalization"], about["size"]
    top_k = min(top_k, len(classes))
    batch = _positive(options, "batch_size", about["batch_size"])
    pixels, bad = decode_files(images_found, size, f"{len(images_found)} input images", skip_bad=True)
    bad_paths = [images_found[i] for i in bad]
    paths = [p for i, p in enumerate(images_found) if i not in set(bad)]
    if not paths:
        raise DataError(f"none of the {len(images_found)} image files under input={options['input']} could be read")
    if len(norm["mean"]) == 1:  # trained on grayscale: the files are read as RGB, then made gray as PIL does
        pixels = to_gray(pixels)
    normalize = BatchAugment(mean=norm["mean"], std=norm["std"], channels=about["channels"])
    chunks = [(pixels[i:i + batch], torch.full((len(pixels[i:i + batch]),), -1)) for i in range(0, len(pixels), batch)]
    start = time.perf_counter()
    logits, _ = logits_of(model, progress_iter(chunks, f"predicting {len(paths)} images"), normalize, runtime)
    seconds = time.perf_counter() - start
    table = predictions_table(paths, logits, classes, names, top_k)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.csv", table.to_csv(index=False))
    record = {"checkpoint": str(path), "epoch": about["epoch"], "input": str(options["input"]), "images": len(paths),
              "skipped_not_images": len(others), "skipped_unreadable": bad_paths, "top_k": top_k,
              "image_size": size, "normalization": norm, "seconds": seconds,
              "images_per_s": len(paths) / max(seconds, 1e-9), "runtime": runtime.to_dict(), "out": str(out)}
    atomic_write_text(out / "predict.json", json.dumps(record, indent=2, default=str) + "\n")
    _print(table, record, others)
    return record


def _from_checkpoint(ckpt: dict, cfg, command: str = "predict") -> tuple[torch.nn.Module, object, dict]:
    settings = load_settings(cfg, require_data=False)
    classes = list(ckpt["classes"])
    # The precision and memory format the checkpoint was trained with: its numbers, not a new measurement.
    speed = dict(ckpt.get("speed") or {})
    if settings.device.type == "cpu" and speed.get("precision") == "16-mixed":
        speed["precision"] = "32"  # fp16 autocast needs a GPU (on_this_machine said so)
    runtime = resolve_runtime(settings.device.type, str(speed.get("precision", settings.trainer.precision)),
                              str(speed.get("channels_last", settings.trainer.channels_last)).lower(),
                              settings.trainer.threads, False)
    if speed:
        log.info("%s: precision=%s channels_last=%s, as the checkpoint was trained", command, runtime.precision,
                 str(runtime.channels_last).lower())
    model = build_model(cfg, len(classes), classes, runtime, start_weights=False, channels=data_channels(ckpt))
    model.load_state_dict(ckpt["model"])
    about = {"channels": input_channels(cfg, data_channels(ckpt)), "classes": classes,
             "class_names": list(ckpt["class_names"]), "epoch": ckpt["epoch"],
             "normalization": ckpt.get("normalization") or {"mean": [0.5] * 3, "std": [0.25] * 3},
             "size": int(cfg.dataset.image_size), "batch_size": int(cfg.dataset.batch_size)}
    return model, runtime, about


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


def to_gray(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> (N, 1, H, W) with ITU-R 601 luma, rounded as PIL's convert("L")."""
    weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    return ((pixels.to(torch.int32) * weights).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor") \
        .to(torch.uint8)
