"""Decoding image files once into a uint8 tensor, and the on-disk cache that makes it once per data set.

The cache is a plain `.npy` array memory-mapped copy-on-write, so DataLoader workers (and later DDP ranks)
share one copy through the page cache. Its name carries a fingerprint of every source file's path, size and
modification time: when any file changes, the fingerprint changes and the array is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from trainlab.core.errors import DataError, TrainlabError
from trainlab.core.fs import FolderLock, atomic_write_text, atomic_write_with, cache_home
from trainlab.core.progress import progress_iter
from trainlab.data.archive import read_bytes, reading_order, split_member, stat_key

log = logging.getLogger(__name__)

CACHE_FORMAT = "trainlab-decoded-v2"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def decode_file(path: str, size: int) -> torch.Tensor:
    """One image file (or archive member, `<archive>/<member>`) as uint8 (3, size, size) RGB: grayscale and
    CMYK become RGB; other sizes are resized on the shorter side and centre-cropped."""
    try:
        raw = read_bytes(path)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e.strerror or e}") from None
    try:
        image = decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        image = _decode_with_pil(path, raw)
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, size, antialias=True)
        image = TF.center_crop(image, [size, size])
    return image


def _decode_with_pil(path: str, raw: bytes) -> torch.Tensor:
    # torchvision.io covers JPEG/PNG/GIF/WEBP; PIL covers the rest (BMP, TIFF) and is the second opinion
    # before a file is declared corrupt.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        why = "not an image torchvision or PIL can read" if isinstance(e, UnidentifiedImageError) else e
        fix = "pack the archive again without it" if split_member(path) else "replace or delete the file"
        raise DataError(f"cannot decode image {path}: {why}; {fix}") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def decode_files(paths: list[str], size: int, what: str, skip_bad: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Decode every file; returns (images of the good files, indices of the skipped bad ones).
    A bad file is an error naming it, unless `skip_bad`."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    bad: list[int] = []
    for i in progress_iter(reading_order(paths), f"decoding {what}"):
        try:
            out[i] = decode_file(paths[i], size)
        except DataError as e:
            if not skip_bad:
                raise DataError(f"{e}, or set dataset.skip_bad_images=true to leave such files out") from None
            log.warning("skipping %s", e)
            bad.append(i)
    if not bad:
        return out, bad
    keep = torch.ones(len(paths), dtype=torch.bool)
    keep[bad] = False
    return out[keep], sorted(bad)


def fingerprint(paths: list[str], size: int) -> str:
    h = hashlib.sha1(f"v1 {size}\n".encode())
    for p in paths:
        try:
            key = stat_key(p)
        except OSError as e:
            raise DataError(f"cannot read image {p}: {e.strerror}") from None
        h.update(f"{p}\t{key}\n".encode())
    return h.hexdigest()[:16]


OLD_CACHE_NAME = ".trainlab_cache"  # where trainlab <= 0.x kept decoded arrays: inside the data folder (no more)


def resolve_cache_dir(root: Path, cache_dir: str | None) -> Path:
    """The folder of a data set's decoded arrays: `<name>-<digest of its resolved path>` inside `dataset.cache_dir`
    when given (a cluster's shared cache), else inside trainlab's cache folder (`decoded/`). Never inside the data
    folder: a hidden folder there is a 'class' to every tool that takes a directory's folders as classes."""
    root = Path(root).expanduser()
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    base = Path(cache_dir).expanduser() if cache_dir else cache_home() / "decoded"
    old = root / OLD_CACHE_NAME
    if root.is_dir() and old.is_dir():
        log.info("%s was written by an earlier trainlab and is no longer used (decoded images are kept in %s now): "
                 "delete it when you like", old, base)
    return base / f"{root.name}-{digest}"


def _read_cache(array_path: Path, count: int, size: int) -> tuple[torch.Tensor, dict] | None:
    """The cached images if the cache is complete and matches (`count` files at `size`), else None. A cache
    is never trusted: a truncated array, a missing or foreign meta file, or a shape that does not match
    means it is rebuilt."""
    meta_path = array_path.with_suffix(".json")
    if not array_path.exists() and not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError("it was written by another version")
        expected = (count - len(meta["skipped"]), 3, size, size)
        if array_path.stat().st_size != meta["bytes"]:
            raise ValueError(f"{array_path.stat().st_size} bytes instead of {meta['bytes']}")
        images = np.load(array_path, mmap_mode="c")
        if images.shape != expected or images.dtype != np.uint8:
            raise ValueError(f"shape {images.shape} instead of {expected}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("the decoded-image cache %s is incomplete or damaged (%s): decoding the images again", array_path,
                    e.strerror if isinstance(e, OSError) and e.strerror else e)
        return None
    log.info("using the decoded cache %s", array_path)
    return torch.from_numpy(images), meta


def load_or_decode(paths: list[str], size: int, split: str, cache_dir: Path | None,
                   skip_bad: bool = False, source: str = "") -> tuple[torch.Tensor, dict]:
    """Decoded images for `paths`, from the cache when it is current. Returns (images, meta); meta holds
    the cache file (or None), the indices of skipped bad files and, once computed, the split's channel
    statistics. `source`: the data folder, so that an explicit cache folder shared by several data sets
    replaces only this one's outdated arrays."""
    if cache_dir is None:
        images, bad = decode_files(paths, size, f"{len(paths)} {split} images", skip_bad)
        return images, {"file": None, "skipped": bad}
    array_path = cache_dir / f"{split}-{size}px-{fingerprint(paths, size)}.npy"
    cached = _read_cache(array_path, len(paths), size)
    if cached is not None:
        return cached
    fix = "set dataset.cache_dir=<a writable folder with space> or dataset.cache=false"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(cache_dir)
        if not lock.acquire():
            log.info("another trainlab process is decoding into %s: waiting for it", cache_dir)
            lock.acquire(wait=True)
    except OSError as e:
        raise DataError(f"cannot use the cache folder {cache_dir}: {e.strerror or e}; {fix}") from None
    try:
        cached = _read_cache(array_path, len(paths), size)  # built by the process this one waited for
        if cached is not None:
            return cached
        images, bad = decode_files(paths, size, f"{len(paths)} {split} images (once, into {cache_dir})", skip_bad)
        meta = {"format": CACHE_FORMAT, "file": str(array_path), "source": source, "split": split, "size": size,
                "skipped": bad}
        try:  # write then rename: a killed run never leaves a half-written array under the real name
            atomic_write_with(array_path, lambda f: np.save(f, images.numpy()))
            meta["bytes"] = os.path.getsize(array_path)
            write_meta(array_path, meta)
        except TrainlabError as e:  # the one line of a failed write, with the cache's own fix
            array_path.unlink(missing_ok=True)
            reason = str(e).split(": ", 1)[-1].split(";")[0]
            raise DataError(f"cannot write the decoded-image cache {array_path}: {reason}; {fix}") from None
        _remove_outdated(cache_dir, array_path, meta)
        return images, meta
    finally:
        lock.release()


def _remove_outdated(cache_dir: Path, current: Path, meta: dict) -> None:
    """Delete the arrays this cache held for earlier versions of the same split and data folder: only files
    whose meta file says trainlab wrote them for that split and folder."""
    for other in cache_dir.glob(f"{meta['split']}-{meta['size']}px-*.npy"):
        other_meta = other.with_suffix(".json")
        try:
            old = json.loads(other_meta.read_text())
        except (OSError, ValueError):
            continue
        if other != current and old.get("file") == str(other) and old.get("source", meta["source"]) == meta["source"]:
            other.unlink(missing_ok=True)
            other_meta.unlink(missing_ok=True)


def write_meta(array_path: Path, meta: dict) -> None:
    atomic_write_text(Path(array_path).with_suffix(".json"), json.dumps(meta, indent=1))
