"""The data and files users really have: a small photo folder with Chinese class names, a sweep with a damaged job,
YAML with a typo. trainlab leaves the data folder exactly as it was (its cache lives in trainlab's own cache
folder), draws the class names with real glyphs where the machine has a font for them (indices and one line where
it has none), reports every readable job of a sweep, and meets broken YAML with one line naming file, line and
column."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import FAST, assert_one_line, hashes, run, run_cli, shell

CLASSES = {"猫": 4, "狗": 3, "鸟": 3}  # 10 images: far fewer than the default batch of 128


def _photos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for k, (name, count) in enumerate(CLASSES.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(60 + 60 * k, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"照片{i}.png")
    return root


def _entries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _cjk_font_files() -> list[str]:
    """The fonts with Chinese glyphs, found without trainlab (fontconfig's own list)."""
    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.split(":")[0].strip() for line in listed.splitlines() if line.strip()})


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """The student's story through the real CLI: train on 10 photos in Chinese-named folders with the default
    batch size, then evaluate, predict and compare; the folder's files and entries before and after."""
    base = tmp_path_factory.mktemp("story")
    photos = _photos(base / "我的照片")
    before = (hashes(photos), _entries(photos))
    env = {"TRAINLAB_CACHE_DIR": str(base / "cache")}
    results = {}
    results["train"] = run_cli("train", *FAST, "dataset=image_folder", f"dataset.root={photos}",
                               f"hydra.run.dir={base / 'run'}", cwd=base, env_extra=env)
    ckpt = base / "run" / "checkpoints" / "last.ckpt"
    results["evaluate"] = run_cli("evaluate", f"ckpt={ckpt}", f"hydra.run.dir={base / 'eval'}", cwd=base,
                                  env_extra=env)
    results["predict"] = run_cli("predict", f"ckpt={ckpt}", f"input={photos}", f"out={base / 'predict'}", cwd=base,
                                 env_extra=env)
    results["compare"] = run_cli("compare", str(base / "run" / "checkpoints" / "best.ckpt"), str(ckpt),
                                 f"out={base / 'compare'}", cwd=base, env_extra=env)
    return base, photos, before, results, env


@pytest.mark.slow
def test_train_evaluate_predict_and_compare_leave_the_data_folder_as_it_was(story):
    base, photos, (files, entries), results, _ = story
    for command, result in results.items():
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert hashes(photos) == files and _entries(photos) == entries  # byte for byte, entry for entry
    from torchvision.datasets import ImageFolder

    assert ImageFolder(str(photos)).classes == sorted(CLASSES)  # no hidden cache folder posing as a class
    decoded = list((base / "cache" / "decoded").iterdir())
    assert len(decoded) == 1 and decoded[0].name.startswith("我的照片-")


@pytest.mark.slow
def test_a_training_set_smaller_than_the_batch_trains_as_one_batch(story):
    base, _, _, results, _ = story
    info = json.loads((base / "run" / "run.json").read_text())
    train_images = info["data"]["sizes"]["train"]
    assert info["data"]["batch_size_configured"] == 128 and info["data"]["batch_size"] == train_images < 10
    assert info["steps_per_epoch"] == 1
    console = results["train"].stdout + results["train"].stderr
    assert f"dataset.batch_size=128 is larger than the {train_images} training images" in console
    metrics = pd.read_csv(base / "run" / "metrics.csv")
    assert list(metrics["step"]) == [1, 2]
    assert json.loads((base / "eval" / "metrics.json").read_text())["images"] == 10 - train_images


@pytest.mark.slow
def test_chinese_class_names_draw_no_missing_glyph_warnings(story):
    """Whatever fonts the machine has, the console never fills with matplotlib's per-character warnings."""
    _, _, _, results, _ = story
    for command, result in results.items():
        console = result.stdout + result.stderr
        assert "Glyph" not in console and "findfont" not in console, (command, console[-1500:])
    assert (story[0] / "compare" / "disagreements.png").is_file() or "no disagreements" in results["compare"].stdout


@pytest.mark.slow
def test_trainlab_cache_lists_and_removes_only_its_own_entries(story):
    base, photos, _, _, env = story
    listed = run_cli("cache", cwd=base, env_extra=env)
    assert listed.returncode == 0, listed.stderr
    name = next(line.split()[1] for line in listed.stdout.splitlines() if "decoded/" in line)
    assert name.startswith("decoded/我的照片-") and "decoded images of" in listed.stdout
    outside = run_cli("cache", "remove", "../../我的照片", cwd=base, env_extra=env)
    assert outside.returncode == 2 and "is not an entry trainlab wrote into the cache folder" in outside.stderr
    assert photos.is_dir()
    removed = run_cli("cache", "remove", name, cwd=base, env_extra=env)
    assert removed.returncode == 0, removed.stderr
    assert not list((base / "cache" / "decoded").iterdir())


def test_trainlab_cache_leaves_what_it_did_not_write_in_the_cache_folder(tmp_path, capsys, monkeypatch):
    """TRAINLAB_CACHE_DIR may name a folder that holds other things too: only trainlab's entries are listed or
    removed."""
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "scratch"))
    for folder in ("mine", "decoded/not-trainlabs", "digits"):
        (tmp_path / "scratch" / folder).mkdir(parents=True)
        (tmp_path / "scratch" / folder / "notes.json").write_text('{"format": "mine"}')
    before = hashes(tmp_path / "scratch")
    code, out, err = run(capsys, "cache")
    assert code == 0 and "nothing cached" in out, out + err
    for name in ("mine", "decoded/not-trainlabs", "digits"):
        assert_one_line(*shell("cache", "remove", name), "is not an entry trainlab wrote")
    assert hashes(tmp_path / "scratch") == before


def test_a_cache_an_earlier_version_left_in_the_data_folder_is_named_and_left_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "cache"))
    photos = _photos(tmp_path / "photos")
    old = photos / ".trainlab_cache"
    old.mkdir()
    (old / "train-16px-0123.npy").write_bytes(b"old arrays")
    before = hashes(photos)
    code, out, err = run(capsys, "train", *FAST, "dataset=image_folder", f"dataset.root={photos}",
                         "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    assert hashes(photos) == before
    assert (out + err).count(f"{old} was written by an earlier trainlab and is no longer used") == 1
    assert (tmp_path / "cache" / "decoded").is_dir()


# --- pictures: real glyphs where a font has them, indices and one line where none does ---------------------------


def _render(text: str, **font) -> np.ndarray:
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(1, 0.5), dpi=100)
    fig.text(0.1, 0.2, text, fontsize=20, **font)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    return pixels


@pytest.fixture
def fresh_fonts(monkeypatch):
    """trainlab's font choice made anew (it is made once per process), and matplotlib's fonts put back after."""
    import matplotlib

    from trainlab.analysis import fonts

    family = matplotlib.rcParams["font.family"]
    fonts._fallbacks.cache_clear()
    fonts._say_once.cache_clear()
    yield fonts
    matplotlib.rcParams["font.family"] = family
    fonts._fallbacks.cache_clear()
    fonts._say_once.cache_clear()


def test_chinese_class_names_are_drawn_with_the_machines_cjk_font(fresh_fonts):
    font_files = _cjk_font_files()
    if not font_files:
        pytest.skip("no font with Chinese glyphs on this machine (scripts/test.sh installs fonts-wqy-zenhei in CI)")
    from matplotlib.font_manager import FontProperties

    from trainlab.analysis.plots import confusion_figure

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = confusion_figure(torch.eye(3, dtype=torch.int64), list(CLASSES), "val")
        fig.canvas.draw()
        ours = _render("猫狗鸟")  # with the fonts trainlab set up
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASSES)
    assert not [w for w in caught if "Glyph" in str(w.message)]
    # The glyphs are one of the machine's CJK fonts' own, not DejaVu Sans' empty boxes.
    assert any(np.array_equal(ours, _render("猫狗鸟", fontproperties=FontProperties(fname=f))) for f in font_files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not np.array_equal(ours, _render("猫狗鸟", family="DejaVu Sans"))


def test_without_a_cjk_font_pictures_number_the_classes_and_one_line_says_what_to_install(fresh_fonts, monkeypatch,
                                                                                           caplog):
    from matplotlib import font_manager

    from trainlab.analysis.plots import confusion_figure

    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])  # a machine without CJK fonts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            fig = confusion_figure(torch.eye(3, dtype=torch.int64), list(CLASSES), "val")
            fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2"]
    lines = [r.getMessage() for r in caplog.records if "no installed font" in r.getMessage()]
    assert len(lines) == 1 and "fonts-noto-cjk" in lines[0]
    assert not [w for w in caught if "Glyph" in str(w.message)]


# --- a sweep with damaged jobs: every readable job reported, each damaged one named in one line -----------------


@pytest.mark.slow
def test_a_sweep_report_names_damaged_jobs_and_reports_the_others(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code, _, err = run(capsys, "train", "-m", *FAST, "trainer.epochs=1", "seed=0,1,2", f"hydra.sweep.dir={sweep}")
    assert code == 0, err
    lost = pd.read_csv(sweep / "1" / "metrics.csv").drop(columns=["throughput/train_ips", "val/acc1"])
    lost.to_csv(sweep / "1" / "metrics.csv", index=False)
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text("- seed=2\n- [unclosed\n")
    code, out, err = run(capsys, "report", str(sweep))
    assert code == 0, err
    assert "Traceback" not in out + err
    damaged = [ln for ln in err.splitlines() if "damaged" in ln or "has no" in ln]
    assert len([ln for ln in damaged if f"{sweep / '1' / 'metrics.csv'} has no val/acc1, throughput/train_ips"
                in ln]) == 1, err
    assert len([ln for ln in damaged if f"{sweep / '2' / '.hydra' / 'overrides.yaml'}:3:" in ln]) == 1, err
    report = (sweep / "report.md").read_text()
    assert "Damaged records" in report
    expected = pd.read_csv(sweep / "0" / "metrics.csv")["val/acc1"].iloc[-1]
    assert f"{expected:.4f}" in report  # job 0 is reported with its value
    code, out, err = run(capsys, "runs", str(sweep))
    assert code == 0, err
    assert f"{sweep / '1' / 'metrics.csv'} has no val/acc1, throughput/train_ips column" in err
    assert f"{sweep / '2' / '.hydra' / 'overrides.yaml'}:3:" in err


# --- YAML that does not parse: one line with file, line and column ----------------------------------------------


def _broken(folder: Path, relative: str) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\ntrainer:\n  epochs: [1, 2\nseed: 1\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("place", ["experiment", "group", "primary"])
def test_a_yaml_file_that_does_not_parse_is_one_line_naming_file_line_and_column(place, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "my_configs"
    if place == "experiment":
        path = _broken(mine, "experiment/broken.yaml")
        args = ["train", *FAST, "+experiment=broken", f"hydra.searchpath=[file://{mine}]"]
    elif place == "group":
        path = _broken(mine, "model/mine.yaml")
        args = ["train", *FAST, "model=mine", f"hydra.searchpath=[file://{mine}]"]
    else:
        path = _broken(mine, "config.yaml")
        args = ["train", "-cp", str(mine), "-cn", "config"]
    code, out, err = shell(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(code, out, err, f"trainlab: error: {path}:4:5: expected ',' or ']', but got ':'")
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_a_runs_stored_config_that_does_not_parse_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "train", *FAST, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    stored = tmp_path / "run" / ".hydra" / "config.yaml"
    stored.write_text(stored.read_text() + "dataset: {root: [\n")
    before = hashes(tmp_path / "run")
    code, out, err = shell("report", str(tmp_path / "run"))
    assert_one_line(code, out, err, f"{stored}:")
    assert hashes(tmp_path / "run") == before  # nothing written


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("TRAINLAB_DEBUG", raising=False)
    monkeypatch.setitem(os.environ, "PYTHONWARNINGS", "default")
