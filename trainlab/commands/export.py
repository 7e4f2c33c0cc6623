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
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf

import trainlab
from trainlab.core.errors import ConfigError, TrainlabError
from trainlab.core.fs import atomic_write_text, claim_out_folder, free_run_dir
from trainlab.core.runtime import resolve_runtime
from trainlab.engine.build import build_model, data_channels, input_channels
from trainlab.record.checkpoint import OUTPUTS_ROOT, find_checkpoint
from trainlab.record.stored_run import stored_run

log = logging.getLogger(__name__)

FORMATS = {"safetensors": "model.safetensors", "state_dict": "model.pt", "torchscript": "model.torchscript.pt",
           "onnx": "model.onnx"}
USAGE = f"""usage: trainlab export ckpt=<file.ckpt | run_dir | latest | DATE> format=<{'|'.join(FORMATS)}> [out=DIR]

Writes the model ({', '.join(FORMATS.values())}) with model.json (architecture, classes, input size,
normalisation) into out (default: <run>/export/<checkpoint>-<format>-<time>), and checks it by running it.
"""
CHECK_BATCH = 4


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
    out = _out_dir(Path(options["out"]) if options.get("out") else None, path, fmt)
    classes = list(ckpt["classes"])
    # fp32, contiguous, on the CPU: what another program expects to load (the checkpoint may hold
    # channels-last tensors, which safetensors refuses).
    runtime = resolve_runtime("cpu", "32", "false", "auto", False)
    model = build_model(cfg, len(classes), classes, runtime, start_weights=False, channels=data_channels(ckpt))
    model.load_state_dict(ckpt["model"])
    model.eval()
    size, channels = int(cfg.dataset.image_size), input_channels(cfg, data_channels(ckpt))
    example = torch.randn(CHECK_BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(example)
    target = out / FORMATS[fmt]
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import load_file, save_file

        save_file(state, str(target), metadata={"format": "pt", "classes": str(len(classes))})
        got = _rebuilt(cfg, classes, load_file(str(target)), data_channels(ckpt))(example)
    elif fmt == "state_dict":
        torch.save(state, target)
        got = _rebuilt(cfg, classes, torch.load(target, weights_only=True), data_channels(ckpt))(example)
    elif fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracing warns that torch.jit is deprecated in favour of export
            torch.jit.trace(model, example).save(str(target))
            got = torch.jit.load(str(target))(example)
    else:
        got = _onnx(model, example, target)
    diff = float((torch.as_tensor(got) - expected).abs().max())
    sidecar = describe(cfg, ckpt, path, fmt, target, size, diff)
    atomic_write_text(out / "model.json", json.dumps(sidecar, indent=2) + "\n")
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


def exported_weights(spec: str) -> Path | None:
    """The safetensors file of a `trainlab export` named by `ckpt=` (its folder, or the file with model.json
    beside it); None when `spec` is something else (a checkpoint, a run directory)."""
    path = Path(spec).expanduser()
    folder = path if path.is_dir() else path.parent
    sidecar = folder / "model.json"
    if not sidecar.is_file() or (path.is_file() and path.suffix != ".safetensors"):
        return None
    try:
        described = json.loads(sidecar.read_text())
    except ValueError:
        return None
    if described.get("format") != "safetensors":
        raise ConfigError(f"{folder} holds a {described.get('format')} export; ckpt= reads checkpoints and "
                          "safetensors exports (trainlab export format=safetensors)")
    return folder / described["file"]


def load_export(weights: Path) -> dict:
    """A safetensors export in the shape of a checkpoint (weights, classes, normalisation, the run's config),
    so evaluate and predict take it like one."""
    from safetensors.torch import load_file

    described = json.loads((weights.parent / "model.json").read_text())
    if "config" not in described:
        raise TrainlabError(f"{weights.parent} was exported before exports carried the run's config: export the "
                            "checkpoint again")
    return {"model": load_file(str(weights)), "classes": described["classes"],
            "class_names": described["class_names"], "normalization": described["normalization"],
            "config": described["config"], "choices": {}, "epoch": described["epoch"],
            "speed": {"precision": "32", "channels_last": False}}  # exports are fp32 and contiguous


def _rebuilt(cfg, classes: list[str], state: dict, channels: int):
    """A fresh model loaded from the exported weights (what another program would do)."""
    model = build_model(cfg, len(classes), classes, resolve_runtime("cpu", "32", "false", "auto", False),
                        start_weights=False, channels=channels)
    model.load_state_dict(state)
    model.eval()
    return torch.inference_mode()(model)


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


def _out_dir(out: Path | None, ckpt: Path, fmt: str) -> Path:
    stamp = datetime.now()
    if out is None:
        run = ckpt.parent.parent
        inside_run = ckpt.parent.name == "checkpoints" and (run / "run.json").is_file()
        base = run / "export" if inside_run else OUTPUTS_ROOT / "export" / f"{stamp:%Y-%m-%d}"
        out = free_run_dir(base / f"{ckpt.stem}-{fmt}-{stamp:%H-%M-%S}")
    return claim_out_folder(out, "model.json", "export")
