"""Data sets read straight from an archive (`dataset.root=tiny-imagenet-200.zip`): nothing is unpacked.

An archive is opened once per process and indexed (member -> size, folder -> entries); `ArchivePath` offers the
part of `pathlib.Path` the data set readers use (`/`, `iterdir`, `is_dir`, `is_file`, `read_text`, `name`,
`suffix`), so a reader walks a folder and an archive with the same code. A member's path is written
`<archive>/<member>` (`/data/tiny-imagenet-200.zip/tiny-imagenet-200/val/images/val_0.JPEG`): that is what
predictions.csv shows and what `read_bytes` reads back, for compare's image grid as for decoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from trainlab.core.errors import DataError, TrainlabError
from trainlab.core.fs import atomic_write_text

log = logging.getLogger(__name__)

SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # tiny-imagenet-200.zip as published by Stanford CS231n
_BROKEN = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, ValueError)


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIXES) and Path(path).is_file()


class Archive:
    """A zip or tar file's member list, and its members' bytes."""

    def __init__(self, path: Path):
        self.path = path
        st = path.stat()
        self.stamp = (st.st_size, st.st_mtime_ns)
        self.sizes: dict[str, int] = {}
        self.order: dict[str, int] = {}  # position in the file: a compressed tar is read forward only
        self.children: dict[str, dict[str, bool]] = {"": {}}  # folder -> {name: is_dir}
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}  # member -> what its archive calls it
        try:
            if path.name.lower().endswith(".zip"):
                self._zip = zipfile.ZipFile(path)
                self._fd = self._zip.fp.fileno()
                entries = [(i, i.filename, i.file_size, i.is_dir()) for i in self._zip.infolist()]
            else:
                self._tar = tarfile.open(path)
                entries = [(i, i.name, i.size, i.isdir()) for i in self._tar.getmembers() if i.isfile() or i.isdir()]
        except _BROKEN as e:
            raise DataError(f"{path} is not a readable {_kind(path)} archive ({_why(e)}): it may be truncated or "
                            "damaged; download or pack it again") from None
        for position, (info, name, size, is_dir) in enumerate(entries):
            while name.startswith("./"):
                name = name[2:]
            name = name.strip("/")
            if not name or name.startswith("__MACOSX"):  # macOS's resource forks, not data
                continue
            if not is_dir:
                self.sizes[name], self.order[name], self._members[name] = size, position, info
            self._add(name, is_dir)

    def _add(self, name: str, is_dir: bool) -> None:
        """Enter `name` and every folder above it (zips often list no folder entries)."""
        if is_dir:
            self.children.setdefault(name, {})
        parent, _, leaf = name.rpartition("/")
        while True:
            known = self.children.setdefault(parent, {})
            already = leaf in known
            known[leaf] = known.get(leaf, False) or is_dir
            if already or not parent:
                return
            parent, _, leaf = parent.rpartition("/")
            is_dir = True

    def read(self, member: str) -> bytes:
        try:
            info = self._members[member]
            return self._read_zip(info) if self._zip is not None else self._tar.extractfile(info).read()
        except KeyError:
            raise DataError(f"{self.path} has no member {member}") from None
        except _BROKEN as e:
            raise DataError(f"cannot read {self.path}/{member} ({_why(e)}): the archive is truncated or damaged; "
                            "download or pack it again") from None

    def _read_zip(self, info: zipfile.ZipInfo) -> bytes:
        """One member in one positioned read: its local header and data, inflated and CRC-checked. zipfile's own
        `read` seeks, re-reads the header and builds a stream object per member (measured ~25% slower over
        Tiny-ImageNet's 110,000 small members); anything but stored or deflated members goes through it."""
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            return self._zip.read(info)
        guess = 30 + len(info.filename.encode()) + len(info.extra) + 64
        chunk = os.pread(self._fd, guess + info.compress_size, info.header_offset)
        if len(chunk) < 30 or chunk[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {info.filename}")
        start = 30 + struct.unpack("<H", chunk[26:28])[0] + struct.unpack("<H", chunk[28:30])[0]
        raw = chunk[start:start + info.compress_size]
        if len(raw) < info.compress_size:  # a longer local extra field than guessed
            raw = os.pread(self._fd, info.compress_size, info.header_offset + start)
        if len(raw) < info.compress_size:
            raise EOFError(f"{info.filename} is cut off")
        data = raw if info.compress_type == zipfile.ZIP_STORED else zlib.decompress(raw, -15)
        if zlib.crc32(data) != info.CRC:
            raise zipfile.BadZipFile(f"CRC mismatch in {info.filename}")
        return data

    def md5(self) -> str:
        digest = hashlib.md5()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()


def _kind(path: Path) -> str:
    return "zip" if path.name.lower().endswith(".zip") else "tar"


def _why(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


_OPEN: dict[tuple[str, tuple[int, int]], Archive] = {}
_LATEST: dict[str, Archive] = {}  # by path: what reading a member uses, without a stat per member


def open_archive(path: Path) -> Archive:
    """The archive at `path`, indexed once per process (again when its size or modification time changed)."""
    st = path.stat()
    key = (str(path), (st.st_size, st.st_mtime_ns))
    if key not in _OPEN:
        _OPEN[key] = Archive(path)
    _LATEST[str(path)] = _OPEN[key]
    return _OPEN[key]


def _member(path: str) -> tuple[Archive, str] | None:
    """(archive, member) for a member of an archive opened in this process, without touching the disk."""
    for name, opened in _LATEST.items():
        if path.startswith(name) and path[len(name):len(name) + 1] == "/":
            return opened, path[len(name) + 1:]
    return None


class ArchivePath:
    """A folder or file inside an archive, read-only: the subset of `pathlib.Path` the readers use."""

    def __init__(self, archive: Archive, at: str = ""):
        self.archive, self.at = archive, at.strip("/")

    def __truediv__(self, name: str) -> ArchivePath:
        return ArchivePath(self.archive, f"{self.at}/{name}" if self.at else str(name))

    def __str__(self) -> str:
        return f"{self.archive.path}/{self.at}" if self.at else str(self.archive.path)

    def __repr__(self) -> str:
        return f"ArchivePath({str(self)!r})"

    def __lt__(self, other: ArchivePath) -> bool:
        return self.at < other.at

    @property
    def name(self) -> str:
        return self.at.rpartition("/")[2] if self.at else self.archive.path.name

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def is_dir(self) -> bool:
        return self.at in self.archive.children

    def is_file(self) -> bool:
        return self.at in self.archive.sizes

    def exists(self) -> bool:
        return self.is_dir() or self.is_file()

    def iterdir(self) -> Iterator[ArchivePath]:
        for name in self.archive.children.get(self.at, {}):
            yield self / name

    def read_bytes(self) -> bytes:
        return self.archive.read(self.at)

    def files(self) -> Iterator[ArchivePath]:
        """Every file below this folder, at any depth, hidden entries left out."""
        for entry in self.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from entry.files()
            else:
                yield entry

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)


def archive_root(root: Path, marker: str | None = None) -> ArchivePath:
    """The data set's top inside an archive: the archive itself, or its one top folder when everything is in
    it (`tiny-imagenet-200/` in the official zip). `marker`: a file the top must hold (wnids.txt)."""
    top = ArchivePath(open_archive(root))
    entries = list(top.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (marker and (top / marker).is_file()):
        return entries[0]
    return top


def split_member(path: str) -> tuple[Path, str] | None:
    """(archive, member) for a path written `<archive>/<member>`, None for a plain file."""
    lowered = path.lower()
    for suffix in SUFFIXES:
        at = lowered.find(suffix + "/")
        while at >= 0:
            archive = Path(path[:at + len(suffix)])
            if archive.is_file():
                return archive, path[at + len(suffix) + 1:]
            at = lowered.find(suffix + "/", at + 1)
    return None


def read_bytes(path: str) -> bytes:
    """A plain file's bytes, or an archive member's (`<archive>/<member>`)."""
    opened = _member(path)
    if opened is not None:
        return opened[0].read(opened[1])
    inside = split_member(path) if not os.path.isfile(path) else None
    if inside is None:
        with open(path, "rb") as f:
            return f.read()
    archive, member = inside
    return open_archive(archive).read(member)


def stat_key(path: str) -> str:
    """What says a file changed: size and modification time; for a member, its size in the archive and the
    archive's own size and modification time."""
    inside = split_member(path) if not os.path.isfile(path) else None
    if inside is None:
        st = os.stat(path)
        return f"{st.st_size}\t{st.st_mtime_ns}"
    archive = open_archive(inside[0])
    size = archive.sizes.get(inside[1])
    if size is None:
        raise DataError(f"{inside[0]} has no member {inside[1]}")
    return f"{size}\t{archive.stamp[0]}\t{archive.stamp[1]}"


def reading_order(paths: list[str]) -> list[int]:
    """Indices of `paths` in the order to read them: members of a tar archive in the order it stores them (a
    compressed tar cannot seek back without decompressing from its start), everything else as listed."""
    if not any(name.lower().endswith((".tar", ".tar.gz", ".tgz")) for name in _LATEST):
        return list(range(len(paths)))
    positions = []
    for i, path in enumerate(paths):
        opened = _member(path)
        positions.append((opened[0].order.get(opened[1], 0) if opened and opened[0]._tar else 0, i))
    return [i for _, i in sorted(positions)]


def check_official_tiny(root: Path, cache_dir: Path | None) -> None:
    """Log whether a Tiny-ImageNet archive is the published file (its MD5); a different one is a warning, not
    a refusal: people repack it. The digest is kept in the cache folder, keyed by the archive's size and time."""
    archive = open_archive(root)
    record = (cache_dir / "archive-md5.json") if cache_dir else None
    known = {}
    if record is not None and record.is_file():
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            known = {}
    key = f"{root.resolve()}\t{archive.stamp[0]}\t{archive.stamp[1]}"
    digest = known.get(key)
    if digest is None:
        digest = archive.md5()
        if record is not None:
            try:
                record.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(record, json.dumps({**known, key: digest}, indent=1))
            except (OSError, TrainlabError) as e:  # a read-only cache: computed again next time
                log.warning("could not keep the archive's MD5 in %s: %s", record, e)
    if digest == TINY_MD5:
        log.info("%s: MD5 %s, the official tiny-imagenet-200.zip", root, digest)
    else:
        log.warning("%s is not the official archive (MD5 %s, the published file's is %s): a repacked or different "
                    "file; it is read as it is", root, digest, TINY_MD5)
