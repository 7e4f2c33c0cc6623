"""How trainlab writes, and the rules that keep it away from everything else: the user cache folder, atomic writes,
one line for a failed write, a lock per folder being written, and free folder names. What a run folder is, and the
claim on one, is record.run_dir's.

The rule, also stated in the README: trainlab never deletes, moves or writes into anything it did not
create. It writes runs into new or empty folders (or trainlab run folders with `resume=`/`overwrite=true`),
caches into `.trainlab_cache/` or the cache folder, and the demo data into an empty folder or one it marked.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from trainlab.core.errors import TrainlabError

log = logging.getLogger(__name__)

LOCK_NAME = ".trainlab.lock"
# errno values that mean "the user's disk or permissions", not a bug: one line, not a traceback.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def cache_home() -> Path:
    """trainlab's own cache folder: $TRAINLAB_CACHE_DIR, else $XDG_CACHE_HOME/trainlab, else ~/.cache/trainlab."""
    if os.environ.get("TRAINLAB_CACHE_DIR"):
        return Path(os.environ["TRAINLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "trainlab"


def write_error(path: Path, error: OSError, fix: str = "") -> TrainlabError:
    """The one line for a failed write: what could not be written, why, and what to do."""
    hint = fix or ("free some disk space (or raise the quota or file-size limit)" if error.errno in _FULL
                   else "check the disk" if error.errno == errno.EIO else "check the folder's permissions")
    return TrainlabError(f"cannot write {path}: {error.strerror or error}; {hint}")


class _Watched:
    """A file whose failed writes are kept: torch's zip writer (torch.save) turns the OSError of a full disk into
    RuntimeError('[enforce fail at inline_container.cc] . unexpected pos ...'), which names neither file nor cause."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object], durable: bool = False) -> None:
    """`write(f)` into a temporary file of a unique name beside `path`, then rename: readers (and a second process
    writing the same file) never see a half-written file. A failed write of any kind (a full disk, a quota or
    file-size limit, a read-only folder, however the library that writes reports it) is one line naming the file
    and the cause, the old file is left as it was and the temporary file is removed. `durable`: fsync before the
    rename (checkpoints)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    watched = None
    try:
        with os.fdopen(fd, "wb") as f:
            watched = _Watched(f)
            write(watched)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        Path(tmp).unlink(missing_ok=True)
        cause = watched.error if watched is not None and watched.error is not None else e
        if isinstance(cause, OSError):
            raise write_error(path, cause) from None
        raise
    except BaseException:  # KeyboardInterrupt, a signal's exception: no half-written file stays behind
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class FileLock:
    """An advisory lock on the file `path` (flock), held until `release()` or the process ends (a killed process
    frees it). On systems without fcntl it locks nothing."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Returns False when another process holds it (and `wait` is False)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the other checks still apply
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return "another process"
        return f"process {pid}" if pid.isdigit() else "another process"

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a holder's pid only while it holds it: the file stays the same between runs
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FolderLock(FileLock):
    """The lock on a folder trainlab writes into: `folder/.trainlab.lock`."""

    def __init__(self, folder: Path):
        super().__init__(Path(folder) / LOCK_NAME)


def contents(folder: Path) -> list[str]:
    """The names in `folder`, trainlab's lock file left out."""
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)


def free_run_dir(folder: Path) -> Path:
    """`folder`, or the first of folder_1, folder_2, ... that is missing or empty and not locked: for the
    run directories trainlab names itself (two runs started in the same second get the same name)."""
    folder = Path(folder)
    candidate, k = folder, 0
    while candidate.is_dir() and (contents(candidate) or not _unlocked(candidate)):
        k += 1
        candidate = folder.with_name(f"{folder.name}_{k}")
    return candidate


def _unlocked(folder: Path) -> bool:
    lock = FolderLock(folder)
    try:
        if not lock.path.exists():
            return True
        free = lock.acquire()
    except OSError:
        return False
    lock.release()
    return free


def claim_out_folder(out: Path, marker: str, what: str) -> Path:
    """`out=` of compare, predict and export: made if missing; an existing folder must be empty or hold an
    earlier result of the same command (its `marker` file), whose files are then replaced."""
    out = Path(out).expanduser()
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / marker).is_file():
        raise TrainlabError(f"out={out} is not empty and holds no earlier {what}: trainlab writes only into new or "
                            "empty folders; pick another out=<folder>")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainlabError(f"cannot create {out}: {e.strerror or e}; pick a writable out=<folder>") from None
    return out
