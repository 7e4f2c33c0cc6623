"""`trainlab predict`: any images, the same answers as evaluate, nothing written into the input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import FAST, assert_one_line, assert_untouched, hashes, run, shell, write_tiny_imagenet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN trained for one epoch on a Tiny-ImageNet-layout tree (three colour-coded classes)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_tiny_imagenet(root / "tiny", val_per_class=4)
    run_dir = root / "run"
    from trainlab.engine.fit import train

    from helpers import compose
    train(compose(FAST + ["dataset=tiny_imagenet", f"dataset.root={data}", "dataset.batch_size=6",
                          "trainer.epochs=1"]), run_dir)
    return data, run_dir


def test_predict_agrees_with_evaluate_on_the_same_images(trained, tmp_path, capsys, monkeypatch):
    data, run_dir = trained
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "evaluate", f"ckpt={run_dir}", "split=val", f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv").set_index("path")
    before = hashes(data)
    code, out, err = run(capsys, "predict", f"ckpt={run_dir}", f"input={data / 'val' / 'images'}",
                         f"out={tmp_path / 'pred'}", "batch_size=5")
    assert code == 0, err
    assert_untouched(before, data)
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("path")
    assert sorted(predicted.index) == sorted(evaluated.index)
    both = predicted.join(evaluated, rsuffix="_eval")
    assert (both["pred"] == both["pred_eval"]).all() and (both["pred_name"] == both["pred_name_eval"]).all()
    assert np.allclose(both["confidence"], both["confidence_eval"], atol=1e-5)
    assert (both["top3"].str.split().str[0].astype(int) == both["pred"]).all()  # 3 classes: top_k capped at 3
    probs = both["top3_probs"].str.split().apply(lambda p: [float(x) for x in p])
    assert all(abs(sum(p) - 1) < 1e-3 and p == sorted(p, reverse=True) for p in probs)
    assert f"{len(predicted)} images -> {tmp_path / 'pred'}/predictions.csv" in out


def test_any_images_at_any_depth_junk_skipped_and_counted(trained, tmp_path, capsys, monkeypatch):
    data, run_dir = trained
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    (photos / "cats" / "old").mkdir(parents=True)
    shutil.copy(data / "val" / "images" / "val_0.JPEG", photos / "cats" / "a.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(photos / "cats" / "old" / "b.png")
    Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8), "L").save(photos / "c.jpeg")
    (photos / "notes.txt").write_text("not an image")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / ".hidden").mkdir()
    shutil.copy(photos / "cats" / "a.jpg", photos / ".hidden" / "skip.jpg")
    before = hashes(photos)
    code, out, err = run(capsys, "predict", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={photos}",
                         "top_k=2")
    assert code == 0, err
    assert_untouched(before, photos, new_allowed="-nothing-")
    result = next((run_dir / "predict").glob("last-*"))  # beside the checkpoint's run by default
    table = pd.read_csv(result / "predictions.csv")
    assert sorted(p.rsplit("/", 1)[-1] for p in table["path"]) == ["a.jpg", "b.png", "c.jpeg"]
    assert list(table.columns) == ["path", "pred", "pred_id", "pred_name", "confidence", "top2", "top2_names",
                                   "top2_probs"]
    record = json.loads((result / "predict.json").read_text())
    assert record["skipped_not_images"] == 1 and [p.rsplit("/", 1)[-1] for p in record["skipped_unreadable"]] == [
        "broken.jpg"]
    assert "skipped 1 file(s) that are not images and 1 unreadable image(s)" in out
    # one image file, and a list of files
    code, _, err = run(capsys, "predict", f"ckpt={run_dir}", f"input={photos / 'c.jpeg'}", f"out={tmp_path / 'one'}")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "one" / "predictions.csv")) == 1
    (tmp_path / "list.txt").write_text("# two of them\nphotos/c.jpeg\n\nphotos/cats/a.jpg\n")
    code, _, err = run(capsys, "predict", f"ckpt={run_dir}", f"input={tmp_path / 'list.txt'}",
                       f"out={tmp_path / 'listed'}")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "listed" / "predictions.csv")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["input=photos"], "predict needs ckpt="),
    (["ckpt=RUN", "input=nowhere"], "input=nowhere does not exist"),
    (["ckpt=RUN", "input=photos", "out=photos/results"], "is inside the input"),
    (["ckpt=RUN", "input=photos", "top_k=0"], "top_k must be a positive integer"),
    (["ckpt=RUN", "input=photos", "colour=red"], "predict does not know colour"),
    (["ckpt=RUN", "input=empty"], "holds no image files"),
])
def test_bad_predict_arguments_are_one_line(trained, tmp_path, capsys, monkeypatch, args, message):
    _, run_dir = trained
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    args = [a.replace("RUN", str(run_dir)) for a in args]
    made_before = sorted((run_dir / "predict").glob("*")) if (run_dir / "predict").exists() else []
    assert_one_line(*shell("predict", *args), message)
    made_after = sorted((run_dir / "predict").glob("*")) if (run_dir / "predict").exists() else []
    assert not (tmp_path / "photos" / "results").exists() and made_after == made_before  # nothing written


def test_predict_reads_a_safetensors_export_like_its_checkpoint(trained, tmp_path, capsys, monkeypatch):
    data, run_dir = trained
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "export", f"ckpt={run_dir}", "format=safetensors", f"out={tmp_path / 'exported'}")
    assert code == 0, err
    images = data / "val" / "images"
    for name, ckpt in (("from_ckpt", run_dir), ("from_export", tmp_path / "exported")):
        code, _, err = run(capsys, "predict", f"ckpt={ckpt}", f"input={images}", f"out={tmp_path / name}")
        assert code == 0, err
    a, b = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("from_ckpt", "from_export"))
    assert list(a["path"]) == list(b["path"]) and (a["pred"] == b["pred"]).all()
    assert np.allclose(a["confidence"], b["confidence"], atol=1e-5)


def test_evaluate_reads_a_safetensors_export_like_its_checkpoint(trained, tmp_path, capsys, monkeypatch):
    _, run_dir = trained
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "export", f"ckpt={run_dir}", "format=safetensors", f"out={tmp_path / 'exported'}")
    assert code == 0, err
    for name, ckpt in (("ckpt", run_dir), ("export", tmp_path / "exported" / "model.safetensors")):
        code, _, err = run(capsys, "evaluate", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / name}")
        assert code == 0, err
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text())["metrics"] for name in ("ckpt", "export"))
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_trained_checkpoint_predicts_and_exports_on_a_cpu(trained, tmp_path, capsys, monkeypatch):
    import torch

    from trainlab.record.checkpoint import load_checkpoint, save_checkpoint

    data, run_dir = trained
    monkeypatch.chdir(tmp_path)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    ckpt["config"]["device"]["type"], ckpt["config"]["trainer"]["precision"] = "cuda", "16-mixed"
    ckpt["speed"] = {"precision": "16-mixed", "channels_last": True}
    save_checkpoint(tmp_path / "gpu.ckpt", {k: v for k, v in ckpt.items() if k not in ("format",)})
    code, _, err = run(capsys, "predict", f"ckpt={tmp_path / 'gpu.ckpt'}", f"input={data / 'val' / 'images'}",
                       f"out={tmp_path / 'pred'}")
    assert code == 0, err
    runtime = json.loads((tmp_path / "pred" / "predict.json").read_text())["runtime"]
    assert runtime["device"] == "cpu" and runtime["precision"] == "32"
    assert "no GPU here: the checkpoint's model runs on the CPU in fp32" in err
    code, _, err = run(capsys, "export", f"ckpt={tmp_path / 'gpu.ckpt'}", "format=state_dict", f"out={tmp_path / 'x'}")
    assert code == 0, err
    assert set(torch.load(tmp_path / "x" / "model.pt", weights_only=True)) == set(ckpt["model"])
