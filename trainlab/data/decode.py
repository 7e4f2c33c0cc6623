"""Decoding image files once into a uint8 tensor, and the on-disk cache that makes it once per data set.

The cache is a plain `.npy` array memory-mapped copy-on-write, so DataLoader workers (and later DDP ranks)
share one copy through the page cache. Its name carries a fingerprint of every source file's path, size and
modification time: when any file changes, the fingerprint changes and the array is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from trainlab.errors import DataError
from trainlab.progress import progress_iter

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def decode_file(path: str, size: int) -> torch.Tensor:
    """One image file as uint8 (3, size, size) RGB: grayscale and CMYK become RGB; other sizes are
    resized on the shorter side and centre-cropped."""
    try:
        data = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
        image = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        image = _decode_with_pil(path)
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, size, antialias=True)
        image = TF.center_crop(image, [size, size])
    return image


def _decode_with_pil(path: str) -> torch.Tensor:
    # torchvision.io covers JPEG/PNG/GIF/WEBP; PIL covers the rest (BMP, TIFF) and is the second opinion
    # before a file is declared corrupt.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e}; replace or delete the file") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode_files(paths: list[str], size: int, what: str, skip_bad: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Decode every file; returns (images of the good files, indices of the skipped bad ones).
    A bad file is an error naming it, unless `skip_bad`."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    bad: list[int] = []
    for i, path in enumerate(progress_iter(paths, f"decoding {what}")):
        try:
            out[i - len(bad)] = decode_file(path, size)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e}, or set dataset.skip_bad_images=true to leave such files out") from None
            log.warning("skipping %s", e)
            bad.append(i)
    return out[:len(paths) - len(bad)], bad


def fingerprint(paths: list[str], size: int) -> str:
    h = hashlib.sha1(f"v1 {size}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            raise DataError(f"cannot read image {p}: {e.strerror}") from None
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def resolve_cache_dir(root: Path, cache_dir: Optional[str]) -> Path:
    """`cache_dir` if given, else `<root>/.trainlab_cache`, else (read-only data) a per-root folder under
    ~/.cache/trainlab."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    beside = root / ".trainlab_cache"
    if os.access(root, os.W_OK) or beside.is_dir():
        return beside
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "trainlab" / f"{root.name}-{digest}"


def load_or_decode(paths: list[str], size: int, split: str, cache_dir: Optional[Path],
                   skip_bad: bool = False) -> tuple[torch.Tensor, dict]:
    """Decoded images for `paths`, from the cache when it is current. Returns (images, meta); meta holds
    the cache file (or None), the indices of skipped bad files and, once computed, the split's channel
    statistics."""
    if cache_dir is None:
        images, bad = decode_files(paths, size, f"{len(paths)} {split} images", skip_bad)
        return images, {"file": None, "skipped": bad}
    key = fingerprint(paths, size)
    array_path = cache_dir / f"{split}-{size}px-{key}.npy"
    meta_path = array_path.with_suffix(".json")
    if array_path.exists() and meta_path.exists():
        log.info("using the decoded %s cache %s", split, array_path)
        return torch.from_numpy(np.load(array_path, mmap_mode="c")), json.loads(meta_path.read_text())
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the cache folder {cache_dir}: {e.strerror}; "
                        "set dataset.cache_dir=<writable folder> or dataset.cache=false") from None
    images, bad = decode_files(paths, size, f"{len(paths)} {split} images (once, into {cache_dir})", skip_bad)
    tmp = array_path.with_name(array_path.name + ".tmp")
    with open(tmp, "wb") as f:  # write then rename: a killed run never leaves a half-written cache
        np.save(f, images.numpy())
    os.replace(tmp, array_path)
    for stale in cache_dir.glob(f"{split}-{size}px-*.npy"):
        if stale != array_path:
            stale.unlink(missing_ok=True)
            stale.with_suffix(".json").unlink(missing_ok=True)
    meta = {"file": str(array_path), "skipped": bad}
    write_meta(array_path, meta)
    return images, meta


def write_meta(array_path: Path, meta: dict) -> None:
    meta_path = Path(array_path).with_suffix(".json")
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)
