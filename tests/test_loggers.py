"""The `logger` group: TensorBoard on or off, MLflow read back with MLflow's own client, W&B offline read back
from its own record file, and a missing extra as one line."""

from __future__ import annotations

import json
import struct
import sys

import pandas as pd
import pytest

from helpers import FAST, assert_one_line, run, shell


def test_a_logger_whose_package_is_missing_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails, as without the extra
    code, out, err = run(capsys, "train", *FAST, "logger=[tensorboard,mlflow]")
    assert_one_line(code, out, err, "logger=mlflow needs MLflow: pip install 'trainlab[mlflow]'")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_tensorboard_off_leaves_metrics_csv_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", *FAST, "trainer.epochs=1", "logger=[]", "hydra.run.dir=run")
    assert code == 0, err
    assert not (tmp_path / "run" / "tensorboard").exists() and len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 1


@pytest.mark.slow
def test_mlflow_gets_params_metrics_and_artifacts_and_a_resume_continues_its_run(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # trainlab sets it for the file store; undone after
    store = tmp_path / "mlruns"
    args = [*FAST, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={store}", "optimizer.lr=0.07",
            "scheduler=step"]  # a schedule that may train longer on resume
    code, _, err = run(capsys, "train", *args, "trainer.epochs=1", "hydra.run.dir=run")
    assert code == 0, err
    code, _, err = run(capsys, "train", "resume=run", "trainer.epochs=2")
    assert code == 0, err
    ids = json.loads((tmp_path / "run" / "run.json").read_text())["loggers"]["mlflow"]
    client = MlflowClient(tracking_uri=store.as_uri())
    mlrun = client.get_run(ids["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    assert mlrun.data.params["optimizer.lr"] == "0.07" and mlrun.data.params["trainer.epochs"] == "1"
    frame = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for name in ("val/acc1", "train/loss", "lr"):  # one run across the resume, at the global steps
        history = client.get_metric_history(ids["run_id"], name)
        assert [m.step for m in history] == list(frame["step"])
        assert [m.value for m in history] == pytest.approx(list(frame[name]))
    artifacts = {a.path for a in client.list_artifacts(ids["run_id"])}
    assert {"metrics.csv", "summary.json", "plots", "confusion"} <= artifacts
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1


def wandb_history(run_file) -> list[dict]:
    """The history records of a .wandb file, read with wandb's own protobuf types. The file is LevelDB's log
    format (32 KiB blocks; each chunk: crc32, length, type; FULL=1, FIRST=2, MIDDLE=3, LAST=4) after a 7-byte
    header."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, records, pending = run_file.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            records.append(pending + chunk if kind == 4 else chunk)
        pending = chunk if kind == 2 else pending + chunk if kind == 3 else b""
    history = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return history


@pytest.mark.slow
def test_wandb_offline_records_every_epoch(tmp_path):
    """Read back after the process has ended, as a user (or `wandb sync`) reads it: wandb's service finishes
    writing its record file as the process exits, not when run.finish() returns."""
    pytest.importorskip("wandb")
    code, _, err = shell("train", *FAST, "logger=[wandb]", "hydra.run.dir=run", cwd=tmp_path,
                         env_extra={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert code == 0, err
    offline = next((tmp_path / "run" / "wandb").glob("offline-run-*"))
    history = wandb_history(next(offline.glob("run-*.wandb")))
    frame = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert [h["_step"] for h in history] == list(frame["step"])
    assert [h["val/acc1"] for h in history] == pytest.approx(list(frame["val/acc1"]))
    assert (offline / "files" / "metrics.csv").exists() and (offline / "files" / "plots").is_dir()
    ids = json.loads((tmp_path / "run" / "run.json").read_text())["loggers"]["wandb"]
    assert ids["mode"] == "offline" and ids["id"] in offline.name
