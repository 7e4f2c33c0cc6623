"""Where a run ran: Python, torch, CUDA/cuDNN, devices, host, the git commit of the working directory, and
every installed package (requirements.txt beside run.json), so a result can be traced and rebuilt."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(cwd: Path) -> dict | None:
    """The commit of the user's working directory and whether tracked files changed since (None outside git)."""
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return None
    changes = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(changes), "root": _git(cwd, "rev-parse", "--show-toplevel")}


def cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def environment(cwd: Path | None = None) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "hostname": socket.gethostname(), "torch": str(torch.__version__),
        "torchvision": _version("torchvision"), "hydra": _version("hydra-core"),
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else
        [cpu_name()],
        "git": git_state(Path(cwd or Path.cwd())),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def requirements() -> str:
    """`pip freeze` without starting pip: name==version of every installed distribution, sorted. Read once per
    process (~0.2 s of metadata parsing): the jobs of a sweep run with the packages that process imported."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(found[k] for k in sorted(found)) + "\n"
