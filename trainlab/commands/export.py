"""`trainlab export`: a checkpoint's model in a form other programs load without trainlab.

Every format comes with `model.json`: how to rebuild the network (the model config, and for ResNets the
torchvision builder), the class ids and names in output order, the input size and the normalisation. Each
export is checked by running it against the PyTorch model on the same batch; the largest difference of the
logits is printed and recorded.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

import trainlab
from trainlab.core.errors import ConfigError
from trainlab.core.fs import atomic_write_text, atomic_write_with, claim_out_folder
from trainlab.core.options import key_values
from trainlab.engine.build import data_channels, input_channels
from trainlab.engine.ready import plain_cpu, ready_model, stored_run
from trainlab.record.checkpoint import find_checkpoint
from trainlab.record.exports import SIDECAR
from trainlab.record.run_dir import OUTPUTS_ROOT, beside_run

log = logging.getLogger(__name__)

FORMATS = {"safetensors": "model.safetensors", "state_dict": "model.pt", "torchscript": "model.torchscript.pt",
           "onnx": "model.onnx"}
USAGE = f"""usage: trainlab export ckpt=<file.ckpt | run_dir | latest | DATE> format=<{'|'.join(FORMATS)}> [out=DIR]

Writes the model ({', '.join(FORMATS.values())}) with model.json (architecture, classes, input size,
normalisation) into out (default: <run>/export/<checkpoint>-<format>-<time>), and checks it by running it.
"""
CHECK_BATCH = 4
EXPORT_OPTIONS = ("ckpt", "format", "out")


def export_model(options: dict[str, str]) -> dict:
    unknown = sorted(set(options) - {"ckpt", "format", "out"})
    if unknown:
        raise ConfigError(f"export does not know {', '.join(unknown)}: it takes ckpt=, format= and out=")
    fmt = options.get("format", "")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if not options.get("ckpt"):
        raise ConfigError("export needs ckpt=<file.ckpt | run_dir>; see trainlab export --help")
    if fmt == "onnx":
        _require_onnx()
    path = find_checkpoint(options["ckpt"], OUTPUTS_ROOT, key="ckpt")
    ckpt, cfg, _ = stored_run(path, [], ("ckpt",), needs_data=False, anywhere=True)
    out = claim_out_folder(Path(options["out"]), SIDECAR, "export") if options.get("out") else \
        claim_out_folder(beside_run(path, "export", f"{path.stem}-{fmt}"), SIDECAR, "export")
    classes = list(ckpt["classes"])
    # fp32, contiguous, on the CPU: what another program expects to load (the checkpoint may hold
    # channels-last tensors, which safetensors refuses).
    ready = ready_model(ckpt, cfg, plain_cpu())
    model, size, channels = ready.model, ready.size, ready.channels
    example = torch.randn(CHECK_BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(example)
    target = out / FORMATS[fmt]
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import load_file, save

        data = save(state, metadata={"format": "pt", "classes": str(len(classes))})
        atomic_write_with(target, lambda f: f.write(data))
        got = _rebuilt(cfg, ckpt, load_file(str(target)))(example)
    elif fmt == "state_dict":
        atomic_write_with(target, lambda f: torch.save(state, f))
        got = _rebuilt(cfg, ckpt, torch.load(target, weights_only=True))(example)
    elif fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracing warns that torch.jit is deprecated in favour of export
            traced = torch.jit.trace(model, example)
            atomic_write_with(target, lambda f: torch.jit.save(traced, f))
            got = torch.jit.load(str(target))(example)
    else:
        got = _onnx(model, example, target)
    diff = float((torch.as_tensor(got) - expected).abs().max())
    sidecar = describe(cfg, ckpt, path, fmt, target, size, diff)
    atomic_write_text(out / SIDECAR, json.dumps(sidecar, indent=2) + "\n")
    print(f"exported {path} ({fmt}) -> {target}\n  checked on a batch of {CHECK_BATCH}: largest logit difference "
          f"to the PyTorch model {diff:.2e}\n  model.json: classes, input size {size}x{size}, normalisation, "
          "and how to rebuild the network")
    return sidecar


def describe(cfg, ckpt: dict, path: Path, fmt: str, target: Path, size: int, diff: float) -> dict:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg.pop("weights", None)
    sidecar = {
        "format": fmt, "file": target.name, "checkpoint": str(path), "epoch": ckpt["epoch"],
        "model": model_cfg, "num_classes": len(ckpt["classes"]), "classes": list(ckpt["classes"]),
        "class_names": list(ckpt["class_names"]), "input_size": [input_channels(cfg, data_channels(ckpt)), size, size],
        "input": ("RGB" if data_channels(ckpt) == 3 else "grayscale" + (" repeated into 3 channels" if
                  input_channels(cfg, 1) == 3 else "")) + ", resized on the shorter side and centre-cropped, scaled "
                 "to [0, 1], then (x - mean) / std",
        "normalization": ckpt.get("normalization"),
        "check": {"batch": CHECK_BATCH, "max_abs_diff": diff},
        "config": OmegaConf.to_container(cfg, resolve=True),  # the run's config: evaluate rebuilds its data from it
        "trainlab_version": trainlab.__version__, "torch_version": str(torch.__version__),
    }
    if str(model_cfg.get("_target_", "")).endswith("models.resnet"):
        sidecar["torchvision"] = {"builder": f"torchvision.models.{model_cfg['arch']}",
                                  "num_classes": len(ckpt["classes"]), "small_stem": bool(model_cfg["small_stem"]),
                                  "dropout_head": bool(model_cfg.get("dropout"))}
    return sidecar


def _rebuilt(cfg, ckpt: dict, state: dict):
    """A fresh model loaded from the exported weights (what another program would do)."""
    return torch.inference_mode()(ready_model({**ckpt, "model": state}, cfg, plain_cpu()).model)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("format=onnx needs the onnx extra: pip install 'trainlab[onnx]' (onnx, onnxscript, "
                          "onnxruntime)") from None


def _onnx(model: torch.nn.Module, example: torch.Tensor, target: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(target), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True)
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX file is written but not checked by running it")
        return model(example)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": example.numpy()})[0])


def main(args: list[str]) -> dict:
    """`trainlab export key=value ...`."""
    return export_model(key_values("export", args, EXPORT_OPTIONS))
