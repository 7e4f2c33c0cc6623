"""Where trainlab writes, and the rules that keep it away from everything else: the user cache folder,
atomic writes, a lock per folder being written, and the claim on a run directory (new, empty, or a run
of trainlab's own: never a folder of the user's).

The rule, also stated in the README: trainlab never deletes, moves or writes into anything it did not
create. It writes runs into new or empty folders (or trainlab run folders with `resume=`/`overwrite=true`),
caches into `.trainlab_cache/` or the cache folder, and the demo data into an empty folder or one it marked.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from trainlab.core.errors import TrainlabError

log = logging.getLogger(__name__)

LOCK_NAME = ".trainlab.lock"
# What a run, an evaluation or a summary leaves in its directory: the names `overwrite=true` may remove.
RUN_ENTRIES = ("run.json", "summary.json", "metrics.csv", "classes.csv", "train.log", "evaluate.log", "summary.log",
               "error.txt", "checkpoints", "tensorboard", "confusion", "plots", ".hydra", "report.md",
               "report.html", "report_files", "metrics.json", "predictions.csv", "confusion.csv", "summary.txt",
               "requirements.txt", "activations.csv", "lr_find.csv", "lr_find.json", "lr_find.png", "lr_find.log")
# Any of these means "a trainlab run (or evaluation, or summary) lives here".
RUN_MARKERS = ("run.json", "checkpoints", "metrics.csv", "metrics.json", "summary.txt", ".hydra")
# errno values that mean "the user's disk or permissions", not a bug: one line, not a traceback.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def cache_home() -> Path:
    """trainlab's own cache folder: $TRAINLAB_CACHE_DIR, else $XDG_CACHE_HOME/trainlab, else ~/.cache/trainlab."""
    if os.environ.get("TRAINLAB_CACHE_DIR"):
        return Path(os.environ["TRAINLAB_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "trainlab"


def write_error(path: Path, error: OSError, fix: str = "") -> TrainlabError:
    """The one line for a failed write: what could not be written, why, and what to do."""
    hint = fix or ("free some disk space" if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                   else "check the folder's permissions")
    return TrainlabError(f"cannot write {path}: {error.strerror or error}; {hint}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file of a unique name beside `path`, then rename: readers (and a second process
    writing the same file) never see a half-written file, and a failure leaves the old file as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class FolderLock:
    """An advisory lock on `folder/.trainlab.lock` (flock), held until `release()` or the process ends
    (a killed process frees it). On systems without fcntl it locks nothing."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
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
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> FolderLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holds_run(folder: Path) -> bool:
    """A trainlab run (or evaluation, or summary) lives here: the folder has a run's files *and* trainlab's mark
    on it (the lock file trainlab leaves in every folder it claims, or a run.json trainlab wrote). Another
    tool's output folder (Hydra's .hydra/, Lightning's checkpoints/) is not one, so overwrite=true never
    removes anything from it."""
    folder = Path(folder)
    if not any((folder / name).exists() for name in RUN_MARKERS):
        return False
    if (folder / LOCK_NAME).exists():
        return True
    try:
        return "trainlab_version" in json.loads((folder / "run.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)


def claim_run_dir(folder: Path, mode: str = "new", option: str = "hydra.run.dir") -> FolderLock:
    """Make `folder` this process's run directory and lock it for the process's lifetime.

    mode "new": the folder must be missing or empty; "resume": it continues the run already there;
    "overwrite": a trainlab run there is replaced (its files removed first; nothing else is touched).
    A folder of the user's (not empty, no trainlab run in it) is never accepted."""
    folder = Path(folder).expanduser()
    ours = holds_run(folder)  # decided before the lock file is made in it
    if folder.is_dir() and _contents(folder) and not ours:
        raise _not_a_run(folder, _contents(folder), option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(folder)
        free = lock.acquire()
    except OSError as e:
        raise TrainlabError(f"cannot create the run directory {folder}: {e.strerror or e}; "
                            f"pick a writable {option}=<folder>") from None
    if not free:
        raise TrainlabError(f"{folder} is in use: {lock.holder()} of trainlab is writing into it; wait for it to "
                            f"finish or pick another {option}=<folder>")
    contents = _contents(folder)
    if contents and mode != "resume":
        if not ours:
            lock.release()
            raise _not_a_run(folder, contents, option)
        if mode == "new":
            lock.release()
            raise TrainlabError(f"{folder} already holds a trainlab run: continue it with resume={folder}, pick "
                                f"another {option}=<folder>, or pass overwrite=true to replace it")
        remove_run_entries(folder)
    return lock


def _not_a_run(folder: Path, contents: list[str], option: str) -> TrainlabError:
    return TrainlabError(f"{folder} is not empty and holds no trainlab run ({', '.join(contents[:3])}"
                         f"{', ...' if len(contents) > 3 else ''}): trainlab writes only into new or empty folders; "
                         f"pick another {option}=<folder>")


def remove_run_entries(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """`overwrite=true`: remove what an earlier trainlab run wrote into `folder` (the names in RUN_ENTRIES,
    nothing else), so its checkpoints and event files cannot mix with the new run's."""
    removed = [name for name in RUN_ENTRIES if name not in keep and (folder / name).exists()]
    for name in removed:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    if removed:
        log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(removed), folder)


def free_run_dir(folder: Path) -> Path:
    """`folder`, or the first of folder_1, folder_2, ... that is missing or empty and not locked: for the
    run directories trainlab names itself (two runs started in the same second get the same name)."""
    folder = Path(folder)
    candidate, k = folder, 0
    while candidate.is_dir() and (_contents(candidate) or not _unlocked(candidate)):
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
