"""What the tests share: the shrunken config, the CLI (as users meet it, in a subprocess: `shell`, `run_cli`; in
this process, for what a command computes and writes: `run`), and the checks that files were left alone.
Fixtures live in conftest.py; everything importable lives here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainlab import cli
from trainlab.core.config import compose  # noqa: F401  (tests compose the real config through this)
from trainlab.data.testing import write_tiny_imagenet  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
# The real config, shrunk: in-memory data, a small CNN, fp32 (the same numbers on every CPU), no histograms.
FAST = ["+debug=fast"]  # conf/debug/fast.yaml: the real config shrunk to seconds (fake data, small CNN, fp32, 2 epochs)
# Tests that stop a run mid-epoch (a signal once a progress line appears): 32-pixel images make each step ~4x
# longer than +debug=fast's 16, so the epoch is still running when the signal lands.
LONGER_STEPS = ["dataset.image_size=32"]
# Clock-dependent columns; everything else must agree between runs that compute the same thing.
TIMING = ["time/train_s", "time/val_s", "throughput/train_ips", "throughput/train_ips_per_device", "memory/peak_mb"]


def _env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(extra or {})}
    env.pop("TRAINLAB_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def run_cli(*args, cwd=None, env_extra=None, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """`trainlab <args>` in a fresh interpreter: for exit codes, signals, torchrun and resource limits."""
    return subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=_env(env_extra),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def shell(*args, **kwargs) -> tuple[int, str, str]:
    """`trainlab <args>` as a user meets it from a shell (a fresh interpreter, in this test's working directory):
    (exit status, stdout, stderr). For what a process shows: its exit status and its one-line errors."""
    done = run_cli(*args, **kwargs)
    return done.returncode, done.stdout, done.stderr


def start_cli(args, cwd, log: Path) -> subprocess.Popen:
    """`trainlab train <args>` started in the background, its output going to `log`."""
    return subprocess.Popen([sys.executable, "-m", "trainlab", "train", *args], cwd=cwd, env=_env(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, path.read_text() if path.exists() else "process ended"
        time.sleep(0.05)
    raise AssertionError(f"'{text}' never appeared in {path}")


def run_limited(*args, max_file_bytes: int, cwd: Path, timeout: float = 300) -> tuple[int, str, str]:
    """`trainlab <args>` in a fresh interpreter whose files cannot grow past `max_file_bytes` (RLIMIT_FSIZE: what a
    full disk looks like to a writer): (exit status, stdout, stderr). Its output goes through pipes, which the limit
    does not reach."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    done = subprocess.run([sys.executable, "-m", "trainlab", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)
    return done.returncode, done.stdout, done.stderr


def signal_when(path: Path, text: str, pid_file: Path, signum: int, timeout: float = 240) -> threading.Event:
    """In the background, while a command runs in this process: once `text` appears in `path`, send `signum` to
    the process whose pid `pid_file` holds (a job that command started). The event is set once it is sent."""
    sent = threading.Event()

    def watch() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if path.exists() and text in path.read_text():
                os.kill(int(pid_file.read_text()), signum)
                sent.set()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return sent


def exit_status(args) -> int:
    """`trainlab <args>` in this process (the console script's code path): the status the process would exit with."""
    try:
        cli.main(list(args))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


def run(capsys, *args) -> tuple[int, str, str]:
    """`trainlab <args>` in this process: (exit status, stdout, stderr)."""
    code = exit_status(args)
    out, err = capsys.readouterr()
    return code, out, err


def run_here(*args) -> tuple[int, str, str]:
    """`run` for module fixtures, which cannot use capsys: the output is captured here (the logging handlers a run
    sets up write to it too)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = exit_status(args)
    return code, out.getvalue(), err.getvalue()


def assert_one_line(code: int, out: str, err: str, *parts: str, status: int = 2) -> str:
    """The error contract: this exit status, one `trainlab:` line on stderr holding `parts`, no traceback."""
    assert code == status, err
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.startswith("trainlab:")]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def hashes(*folders: Path) -> dict[str, str]:
    """sha256 of every file under the folders, by path."""
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_untouched(before: dict[str, str], *folders: Path, new_allowed: str | None = None) -> None:
    """Every file that existed is byte-identical; nothing new appears (but inside a `new_allowed` folder)."""
    after = hashes(*folders)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"changed or removed: {changed[:5]}"
    new = [p for p in after if p not in before and not (new_allowed and f"/{new_allowed}/" in p)]
    assert not new, f"written into a folder trainlab does not own: {new[:5]}"


def blown_checkpoint(run_dir: Path) -> tuple[dict, Path]:
    """`run_dir`'s last.ckpt (returned as loaded) and a copy whose learning rate is 1e30: resuming from the copy,
    the first step of the next epoch applies a huge update and the step after it sees a non-finite loss."""
    import torch

    from trainlab.record.checkpoint import save_checkpoint

    good = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    blown = {**good, "optimizer": {**good["optimizer"], "param_groups": [
        {**group, "lr": 1e30} for group in good["optimizer"]["param_groups"]]}}
    save_checkpoint(run_dir / "blown.ckpt", blown)
    return good, run_dir / "blown.ckpt"
