"""conf/ ships inside the wheel, so a non-editable `pip install .` finds every config."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from helpers import REPO


@pytest.mark.slow
def test_wheel_contains_every_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("trainlab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"trainlab/conf/{yaml.relative_to(REPO / 'conf').as_posix()}" in names, yaml
    assert "trainlab/cli/main.py" in names and "trainlab/data/files.py" in names
    # The installed wheel runs from anywhere: compose a config from it, without the repository on the path.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-I", "-c", (
        f"import sys; sys.path.insert(0, {str(target)!r}); import trainlab.conf; print(trainlab.conf.__file__); "
        + "from trainlab.cli import main; main(['train', '+experiment=resnet18_tiny', '--cfg', 'job'])")],
        capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(target))  # the configs came from the installed wheel
    assert "TinyImageNet" in out.stdout


def test_setup_refuses_to_start_torch_install_on_a_full_disk(tmp_path):
    # CI once stopped half-way through pip with "No space left on device"; the set-up now says it before pip starts.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup_env.sh").write_text((REPO / "scripts" / "setup_env.sh").read_text())
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted'\n"
                             "echo '/dev/vda 264241152 263192576 1048576 99% /'\n")  # 1 GB free
    (fake / "df").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", "source scripts/setup_env.sh"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"trainlab: installing torch into {tmp_path}/.venv needs about 7 GB free and that disk has 1 GB; "
        "free some space (or clone elsewhere) and run this again"]
    assert not list((tmp_path / ".venv").rglob("torch"))  # pip never started
