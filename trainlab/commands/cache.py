"""`trainlab cache [list | remove <name>]`: what trainlab keeps in its own cache folder (decoded images of each data
set, the digits demo data, autotune's timings), with sizes and the data each came from; `remove` deletes one entry,
and only inside that folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from trainlab.core.errors import TrainlabError
from trainlab.core.fs import FolderLock, cache_home

USAGE = """usage: trainlab cache [list]           what trainlab keeps in its cache folder, with sizes and sources
       trainlab cache remove <name>    delete one entry of that folder (a name from the list)

The cache folder is $TRAINLAB_CACHE_DIR, else $XDG_CACHE_HOME/trainlab, else ~/.cache/trainlab. A data set cached
with dataset.cache_dir=<folder> is listed with: trainlab cache list <folder>
"""
DECODED = "decoded"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _decoded(folder: Path) -> str | None:
    """'decoded images of <data folder>' when `folder` holds arrays trainlab wrote (their descriptions say so and
    name the data they came from), else None: never listed, never removed."""
    from trainlab.data.decode import CACHE_FORMAT

    sources = set()
    for meta in folder.glob("*.json"):
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("format") == CACHE_FORMAT:
            sources.add(str(record.get("source") or "?"))
    return f"decoded images of {', '.join(sorted(sources))}" if sources else None


def entries(home: Path) -> list[tuple[str, Path, str]]:
    """(name, path, what it holds) of every entry trainlab wrote into `home`: each data set's decoded arrays, the
    digits demo (its marker), autotune's choices. Anything else there is not trainlab's: left out, and alone."""
    from trainlab.data.digits import MARKER

    found = []
    if not home.is_dir():
        return found
    folders = [(f"{DECODED}/{d.name}", d) for d in sorted((home / DECODED).iterdir()) if d.is_dir()] \
        if (home / DECODED).is_dir() else []
    folders += [(d.name, d) for d in sorted(home.iterdir()) if d.is_dir() and d.name != DECODED]
    for name, folder in folders:  # (a data set's folder in an explicit dataset.cache_dir sits at the top)
        holds = _decoded(folder)
        if holds:
            found.append((name, folder, holds))
        elif name == "digits" and (folder / MARKER).is_file():
            found.append((name, folder, "the digits demo data (made again when needed)"))
    if (home / "autotune.json").is_file():
        found.append(("autotune.json", home / "autotune.json",
                      "autotune's measured choices per machine and model (measured again)"))
    return sorted(found)


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def show(home: Path) -> None:
    from rich.table import Table

    from trainlab.core.progress import console

    found = entries(home)
    if not found:
        print(f"{home}: nothing cached")
        return
    table = Table(title=str(home))
    for column in ("name", "size", "holds"):
        table.add_column(column, justify="right" if column == "size" else "left")
    sizes = [_size(path) for _, path, _ in found]
    for (name, _, holds), size in zip(found, sizes):
        table.add_row(name, _human(size), holds)
    console().print(table)
    print(f"{len(found)} {'entry' if len(found) == 1 else 'entries'}, {_human(sum(sizes))}; remove one with: "
          "trainlab cache remove <name>")


def remove(home: Path, name: str) -> None:
    """Delete the entry `name` of the cache folder: only one trainlab wrote (entries), never a path outside it,
    never one a running trainlab holds."""
    known = {entry_name: path for entry_name, path, _ in entries(home)}
    if name not in known:
        raise TrainlabError(f"{name} is not an entry trainlab wrote into the cache folder {home}: "
                            f"choose one of {', '.join(known) or '(none: it is empty)'} (trainlab cache list)")
    path = known[name]
    if not path.resolve().is_relative_to(home.resolve()):
        raise TrainlabError(f"{path} lies outside the cache folder {home}: trainlab leaves it alone")
    if path.is_dir():
        lock = FolderLock(path)
        if not lock.acquire():
            raise TrainlabError(f"{path} is in use by {lock.holder()}: remove it once that run has finished")
        shutil.rmtree(path)
    else:
        path.unlink()
    print(f"removed {path}")


def main(args: list[str]) -> None:
    action, rest = (args[0], args[1:]) if args else ("list", [])
    if action == "list" and len(rest) <= 1:
        show(Path(rest[0]).expanduser() if rest else cache_home())
    elif action == "remove" and len(rest) == 1:
        remove(cache_home(), rest[0])
    else:
        raise TrainlabError(f"unknown arguments '{' '.join(args)}': trainlab cache [list [<folder>] | remove <name>]")
