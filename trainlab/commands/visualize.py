"""`trainlab visualize`: what the layers of a trained model see for one image: the first channels of each
stage's output (feature maps) as PNG grids beside the input image, the same in TensorBoard, and each layer's
activation statistics. The image is a file (read and resized as the training data were) or an index into
one of the run's splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from trainlab.analysis.activations import (
    capture,
    check_layers,
    feature_map_figure,
    input_figure,
    spatial,
    statistics,
    watched_layers,
)
from trainlab.core.errors import ConfigError, DataError
from trainlab.core.fs import atomic_write_text, claim_out_folder
from trainlab.core.options import key_values, positive
from trainlab.engine.ready import ReadyModel, ready_model, stored_run, to_gray, trained_runtime
from trainlab.record.checkpoint import checkpoint_path
from trainlab.record.run_dir import beside_run

log = logging.getLogger(__name__)

USAGE = """usage: trainlab visualize ckpt=<file.ckpt | run_dir> [image=<file | index>] [split=val] [layers=a,b,...]
                          [channels=16] [out=DIR]

Feature maps of one image: the input, then the first `channels` channels of each layer's output, one PNG
per layer (default layers: a ResNet's stem and its four stages; other models' ReLUs), the same grids in
TensorBoard (out/tensorboard) and each layer's mean, std and fraction of zeros in visualize.json.
image: an image file, or the index of an image in the run's `split` (default: image=0 of val).
Writes into out (default: <run>/visualize/<time>).
"""
OPTIONS = ("ckpt", "image", "split", "layers", "channels", "out")


def _image(options: dict, cfg, ready: ReadyModel) -> tuple[torch.Tensor, str]:
    """uint8 (C, H, W) with the checkpoint's data channels, and a name for it."""
    spec = options.get("image", "0")
    if spec.lstrip("-").isdigit():
        from trainlab.engine.build import build

        split = options.get("split", "val")
        data = build(cfg.dataset, "dataset")
        data.setup((split,))
        images = data.splits[split].images
        index = int(spec)
        if not 0 <= index < len(images):
            raise ConfigError(f"image={index} is not an image of the {split} split (it has {len(images)}: 0.."
                              f"{len(images) - 1})")
        label = data.splits[split].labels
        name = f"{split} #{index}" + (f" ({data.class_names[int(label[index])]})" if label is not None else "")
        return images[index], name
    from trainlab.data.decode import decode_files

    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"image={spec} is neither a file nor an index: pass an image file or e.g. image=0")
    pixels, bad = decode_files([str(path)], ready.size, "1 image", skip_bad=True)
    if bad:
        raise DataError(f"cannot decode image {path}: pass a readable image file")
    if ready.data_channels == 1:
        pixels = to_gray(pixels)
    return pixels[0], path.name


def visualize(options: dict[str, str]) -> dict:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        from trainlab.core.suggest import did_you_mean

        raise ConfigError(f"visualize does not know {', '.join(unknown)}{did_you_mean(unknown[0], OPTIONS)}: it "
                          f"takes {', '.join(OPTIONS)}")
    if not options.get("ckpt"):
        raise ConfigError("visualize needs ckpt=<file.ckpt | run_dir>; see trainlab visualize --help")
    channels = positive(options, "channels", 16)
    path = checkpoint_path(options["ckpt"])
    needs_data = not Path(options.get("image", "0")).expanduser().is_file()
    ckpt, cfg, _ = stored_run(path, [], ("ckpt",), needs_data=needs_data, anywhere=True)
    ready = ready_model(ckpt, cfg, trained_runtime(ckpt, cfg, "visualize"))
    model, runtime = ready.model, ready.runtime
    layers = check_layers(model, [s for s in options["layers"].split(",") if s]) if options.get("layers") \
        else watched_layers(model)
    image, name = _image(options, cfg, ready)
    out = claim_out_folder(Path(options["out"]).expanduser(), "visualize.json", "visualisation") \
        if options.get("out") else beside_run(path, "visualize", path.stem)
    x = ready.input(image[None])
    outputs = capture(model, x, layers)
    maps = spatial(outputs)
    if not maps:
        raise ConfigError(f"the layers shown ({', '.join(layers)}) output vectors, not feature maps (as an MLP's "
                          "do): pick convolutional layers with layers=..., or watch their statistics in training "
                          "(trainer.activations_every_n_epochs)")
    with torch.inference_mode(), runtime.autocast():
        probabilities = model(x).float().softmax(1)[0]
    top = int(probabilities.argmax())
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    from trainlab.analysis.fonts import use_fonts_for

    label = ready.class_names[top] if use_fonts_for([ready.class_names[top], name]) else f"class {top}"
    predicted = f"predicted {label} ({float(probabilities[top]):.2f})"
    files = {"input": "input.png"}
    fig = input_figure(image.cpu(), f"{name}\n{predicted}")
    fig.savefig(out / "input.png", dpi=120)
    plt.close(fig)
    for layer, values in maps.items():
        fname = f"{layer.replace('.', '_')}.png"
        fig = feature_map_figure(values[0], f"{layer}: {values.shape[1]} channels of {values.shape[2]}x"
                                            f"{values.shape[3]} (first {min(channels, values.shape[1])})", channels)
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        files[layer] = fname
    from torch.utils.tensorboard import SummaryWriter

    from trainlab.analysis.activations import channel_grid

    writer = SummaryWriter(str(out / "tensorboard"))
    writer.add_image("feature_maps/input", image.cpu(), 0)
    for layer, values in maps.items():
        writer.add_image(f"feature_maps/{layer}", channel_grid(values[0], channels), 0)
    writer.close()
    record = {"checkpoint": str(path), "epoch": ready.epoch, "image": name, "predicted": ready.class_names[top],
              "confidence": float(probabilities[top]), "layers": layers, "channels_shown": channels,
              "shapes": {k: list(v.shape[1:]) for k, v in outputs.items()}, "statistics": statistics(outputs),
              "files": files, "out": str(out)}
    atomic_write_text(out / "visualize.json", json.dumps(record, indent=2) + "\n")
    print(f"{name}: {predicted}")
    for layer, stats in record["statistics"].items():
        shape = "x".join(str(v) for v in record["shapes"][layer])
        print(f"  {layer:<10} {shape:<12} mean {stats['mean']:.3f}  std {stats['std']:.3f}  zeros "
              f"{stats['zero_fraction']:.1%}")
    print(f"wrote input.png, {len(maps)} feature-map grid(s), visualize.json and tensorboard/ to {out}")
    return record


def main(args: list[str]) -> dict:
    """`trainlab visualize key=value ...`."""
    return visualize(key_values("visualize", args, OPTIONS))
