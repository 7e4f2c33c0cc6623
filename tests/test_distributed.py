"""Several training processes on the CPU with the gloo backend: sharding, exact validation, DDP runs
started by trainlab (also inside a -m sweep) and by torchrun as two 'nodes', interrupts and resumes."""

from __future__ import annotations

import json
import logging.config
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from trainlab.core.columns import COLUMNS
from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError
from trainlab.core.runtime import resolve_runtime, seed_everything
from trainlab.data import EpochBatches
from trainlab.engine import distributed
from trainlab.engine.build import build_run
from trainlab.engine.distributed import SINGLE
from trainlab.engine.loop import validate
from trainlab.record.checkpoint import load_checkpoint

from helpers import TIMING, assert_one_line, compose, run, run_here, shell, start_cli, wait_for

# Real learning in a few seconds: lr low enough that the curves move over several epochs.
BASE = ["dataset=fake", "dataset.train_size=192", "dataset.val_size=45", "dataset.batch_size=16", "augment=none",
        "optimizer.lr=0.02", "trainer.epochs=3", "trainer.precision=32", "trainer.histogram_every_n_epochs=0",
        "trainer.log_every_n_steps=2"]


def numbers(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)


# --- sharding ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,batch,world", [(45, 16, 2), (10, 4, 3), (7, 8, 2), (64, 16, 4)])
def test_evaluation_shards_cover_every_sample_exactly_once(size, batch, world):
    shards = [list(EpochBatches(size, batch, shuffle=False, seed=0, drop_last=False, rank=r, world=world))
              for r in range(world)]
    seen = torch.cat([b for rank in shards for b in rank]).sort().values
    assert torch.equal(seen, torch.arange(size))  # no padding, no repeats, nothing dropped


def test_training_shards_split_each_global_batch_of_one_process():
    single = list(EpochBatches(100, 16, shuffle=True, seed=5, drop_last=True))
    ranks = [EpochBatches(100, 16, shuffle=True, seed=5, drop_last=True, rank=r, world=2) for r in range(2)]
    for sampler in [*ranks]:
        sampler.set_epoch(0)
    pairs = list(zip(*ranks))
    assert len(pairs) == len(single) == 6
    for whole, (a, b) in zip(single, pairs):
        assert len(a) == len(b) == 8 and sorted(torch.cat([a, b]).tolist()) == sorted(whole.tolist())


def test_global_batch_must_divide_between_the_processes():
    with pytest.raises(ConfigError, match="dataset.batch_size=30 is the global batch .* divisible by the 4"):
        distributed.check_batch(30, 4)


# --- exact validation ----------------------------------------------------------------------------------

def _validate(overrides: list[str], drift: bool, group=SINGLE) -> dict:
    """Validate freshly seeded weights on the val split; with `drift`, rank 1 starts with different BatchNorm
    statistics, as it would after training on its own shards."""
    cfg = compose(overrides)
    runtime = resolve_runtime("cpu", "32", "false", "1", False, (group.local_rank, group.local_world_size))
    seed_everything(0)
    run = build_run(cfg, load_settings(cfg), runtime, group)
    if drift and group.rank == 1:
        for module in run.stepper.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.add_(0.5)
    values = validate(run.stepper, run.val_loader, run.val_metrics, run.n_val)
    return values | {"_confusion": values["_confusion"].tolist(), "rank": group.rank}


@pytest.mark.slow
def test_validating_the_same_weights_with_one_or_two_processes_gives_the_same_metrics():
    overrides = ["dataset=fake", "dataset.val_size=45", "dataset.batch_size=8", "model=small_cnn"]  # 45 = 5*8 + 5
    one = _validate(overrides, drift=False)
    two = distributed.run(_validate, "cpu", 2, 8, overrides, True)
    assert two["rank"] == 0 and "RANK" not in os.environ  # the launch leaves this process as it was
    assert torch.tensor(two["_confusion"]).sum() == 45  # every sample counted exactly once
    assert two["_confusion"] == one["_confusion"]
    for key in ("val/acc1", "val/acc5", "val/precision", "val/recall", "val/f1", "val/kappa"):
        assert two[key] == one[key], key  # counts from the same confusion matrix: equal, not close
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=1e-6)  # sums in another order
    assert two["val/auroc"] == pytest.approx(one["val/auroc"], abs=1e-6)


def _what_rank_0_sees(group=SINGLE) -> dict:
    return {"probe": os.environ.get("TRAINLAB_PROBE"), "rank": os.environ["RANK"],
            "world": os.environ["WORLD_SIZE"]}


@pytest.mark.slow
def test_cpu_ranks_have_the_environment_the_launch_had(monkeypatch):
    monkeypatch.setenv("TRAINLAB_PROBE", "changed")
    seen = distributed.run(_what_rank_0_sees, "cpu", 2, 2)
    assert (seen["probe"], seen["rank"], seen["world"]) == ("changed", "0", "2")  # the agent's own variables kept
    monkeypatch.delenv("TRAINLAB_PROBE")
    assert distributed.run(_what_rank_0_sees, "cpu", 2, 2)["probe"] is None


# --- whole runs ----------------------------------------------------------------------------------------

def _job(sweep: Path, *wanted: str) -> Path:
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        if set(wanted) <= set(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())):
            return job
    raise AssertionError(f"no job with {wanted} in {sweep}")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """`-m device=cpu,cuda device.count=1,2 model=mlp,small_cnn`: four real runs and four that cannot run here."""
    if torch.cuda.is_available():
        pytest.skip("this test needs a machine without a GPU (the cuda jobs must fail)")
    folder = tmp_path_factory.mktemp("devices")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        code, _, err = run_here("train", "-m", *BASE, "device=cpu,cuda", "device.count=1,2", "model=mlp,small_cnn",
                                f"hydra.sweep.dir={folder / 'sweep'}")
    assert code == 1, err  # the cuda jobs fail, the sweep goes on
    assert err.count("no CUDA GPU is visible to PyTorch; use device=cpu") == 4  # one line per cuda job
    assert "Traceback" not in err
    return folder / "sweep"


@pytest.mark.slow
def test_device_sweep_runs_ddp_in_one_directory_per_job_and_reports_the_scaling(sweep, capsys, monkeypatch):
    monkeypatch.chdir(sweep)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [str(i) for i in range(8)]  # nothing else
    ddp = _job(sweep, "device.count=2", "model=mlp", "device=cpu")
    assert not [p for p in ddp.iterdir() if p.is_dir() and p.name not in
                (".hydra", "checkpoints", "confusion", "plots", "tensorboard")]
    assert json.loads((ddp / "run.json").read_text())["distributed"] == {
        "world_size": 2, "nodes": 1, "processes_per_node": 2, "backend": "gloo", "launcher": "trainlab (elastic)",
        "batch_size_global": 16, "batch_size_per_process": 8}
    frame = pd.read_csv(ddp / "metrics.csv")
    assert list(frame.columns) == list(COLUMNS) and list(frame["epoch"]) == [1, 2, 3]
    assert frame["throughput/train_ips_per_device"].mul(2).sub(frame["throughput/train_ips"]).abs().max() < 1e-6
    assert torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
    assert run(capsys, "report", str(ddp))[0] == 0
    assert "on cpu x 2 processes (1 machine(s), gloo, global batch 16)" in (ddp / "report.md").read_text()

    assert run(capsys, "report", str(sweep))[0] == 0
    table = pd.read_csv(sweep / "scaling.csv")
    assert len(table) == 8 and set(table["others"]) == {"model=mlp", "model=small_cnn"}
    ok = table[table["status"] == "ok"]
    assert sorted(zip(ok["device"], ok["count"])) == [("cpu", 1), ("cpu", 1), ("cpu", 2), ("cpu", 2)]
    assert (ok["global batch"] == 16).all() and list(ok["batch per device"]) == [16 // c for c in ok["count"]]
    assert (ok[ok["count"] == 1]["speed-up"] == 1.0).all() and ok["efficiency"].notna().all()
    failed = table[table["device"] == "cuda"]
    assert len(failed) == 4 and failed["status"].str.startswith("failed: device=cuda was requested").all()
    assert (sweep / "scaling.png").is_file() and "Device scaling" in (sweep / "report.html").read_text()
    code, out, _ = run(capsys, "diagnose", str(sweep))
    assert code == 0 and f"{ddp}:" in out


@pytest.mark.slow
def test_ddp_without_batchnorm_equals_one_process_and_with_it_tracks_closely(sweep):
    # Same global batches, gradients averaged over equal shards: an MLP takes the same steps up to rounding.
    one, two = (numbers(_job(sweep, "device=cpu", f"device.count={n}", "model=mlp")) for n in (1, 2))
    pd.testing.assert_frame_equal(one, two, rtol=1e-4)
    assert one["val/loss"].iloc[-1] < one["val/loss"].iloc[0]  # it learned: the comparison is not vacuous
    # BatchNorm normalises each rank's half batch with its own statistics: close, not equal.
    one, two = (numbers(_job(sweep, "device=cpu", f"device.count={n}", "model=small_cnn")) for n in (1, 2))
    assert (one["train/loss"] - two["train/loss"]).abs().max() < 0.15
    assert (one["val/acc1"] - two["val/acc1"]).abs().max() < 0.15
    assert not one.equals(two)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_nodes_on_localhost_train_the_same_run(sweep, tmp_path):
    run_dir, port = tmp_path / "run", _free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    nodes = [subprocess.Popen(
        [str(torchrun), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
         f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=trainlab-test", "-m", "trainlab", "train", *BASE,
         "model=mlp", "trainer.threads=1", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    group = json.loads((run_dir / "run.json").read_text())["distributed"]
    assert (group["world_size"], group["nodes"], group["launcher"]) == (2, 2, "torchrun")
    assert sum("epoch 3/3" in out for out in outputs) == 1  # rank 0 logs, the other node stays quiet
    # The same processes, sharding and collectives as trainlab's own launch: the same numbers.
    pd.testing.assert_frame_equal(numbers(run_dir), numbers(_job(sweep, "device=cpu", "device.count=2", "model=mlp")),
                                  rtol=1e-4)


@pytest.mark.slow
def test_sigterm_stops_every_rank_and_two_processes_resume_exactly(sweep, tmp_path, capsys, monkeypatch):
    args = BASE + ["model=small_cnn", "device.count=2", "trainer.log_every_n_steps=1"]
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_cli(args + [f"hydra.run.dir={run_dir}"], tmp_path, log)
    wait_for(log, "epoch 2 train 3/", proc)
    proc.send_signal(signal.SIGTERM)  # to the launching process only, as a scheduler would
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
    assert "continue with: trainlab train resume=" in log.read_text() and "Traceback" not in log.read_text()
    ckpt = load_checkpoint(run_dir / "checkpoints" / "interrupted.ckpt")
    assert ckpt["position"]["epoch"] == 2 and len(ckpt["position"]["ranks"]) == 2
    monkeypatch.chdir(tmp_path)
    code, out, err = shell("train", f"resume={run_dir}", "device.count=1")
    assert_one_line(code, out, err, "resume it with device.count=2")
    code, _, err = run(capsys, "train", f"resume={run_dir}")
    assert code == 0, err
    pd.testing.assert_frame_equal(numbers(run_dir), numbers(_job(sweep, "device=cpu", "device.count=2",
                                                                 "model=small_cnn")))


def compose_hydra(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module("trainlab.conf", version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True).hydra


def test_torchrun_needs_one_run_directory(monkeypatch, capsys, tmp_path):
    from trainlab.cli.hydra_job import torchrun_args
    from trainlab.core.errors import ConfigError

    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="under torchrun every rank must write into the same run: pass "
                       "hydra.run.dir=<a directory every machine can reach>"):
        torchrun_args(["dataset=fake"])
    # rank 1 neither writes Hydra's files nor the log file: rank 0 does
    args = torchrun_args(["hydra.run.dir=/shared/run", "hydra.output_subdir=.hydra/resume-x"])
    assert args[:3] == ["hydra.run.dir=/shared/run", "hydra.output_subdir=null",
                        "hydra.job_logging.root.handlers=[console]"]
    # Nor does it create the log file while setting logging up (it would race rank 0's claim of an empty folder).
    hydra_cfg = compose_hydra(args)
    handlers = OmegaConf.to_container(hydra_cfg.job_logging, resolve=False)
    handlers["handlers"]["file"]["filename"] = str(tmp_path / "train.log")
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        logging.config.dictConfig(handlers)
        assert not (tmp_path / "train.log").exists()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(before[0])
        for handler in before[1]:
            root.addHandler(handler)
    monkeypatch.setenv("RANK", "0")
    assert torchrun_args(["hydra.run.dir=/shared/run"]) == ["hydra.run.dir=/shared/run"]


def test_a_slurm_step_with_several_tasks_is_refused(monkeypatch):
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(ConfigError, match="this SLURM step runs 4 tasks .*tasks_per_node=1"):
        distributed.run(lambda group: pytest.fail("must not run"), "cpu", 1, 16)
