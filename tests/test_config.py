"""Every YAML under conf/ composes and its components instantiate; bad values stop with one line."""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from trainlab.build import build, build_partial, take
from trainlab.config import load_settings
from trainlab.errors import ConfigError
from trainlab.optim import LRSchedule

from helpers import assert_one_line, compose, run

CONF = files("trainlab.conf")


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_conf_ships_every_group():
    for group in ("dataset", "model", "optimizer", "scheduler", "loss", "augment", "device", "metrics", "experiment"):
        assert options(group), group
    assert set(options("scheduler")) == {"none", "step", "multistep", "exponential", "cosine", "cyclic", "onecycle",
                                         "plateau"}
    assert set(options("optimizer")) == {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"}
    assert set(options("dataset")) == {"tiny_imagenet", "image_folder", "digits", "fake"}


@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds_and_runs(name):
    from trainlab.build import build_model
    from trainlab.runtime import resolve_runtime

    cfg = compose([f"model={name}", "dataset=fake"])
    runtime = resolve_runtime("cpu", "32", "false", "auto", False)
    model = build_model(cfg, 7, [str(k) for k in range(7)], runtime)  # the runner's own path
    out = model(torch.randn(2, 3, cfg.dataset.image_size, cfg.dataset.image_size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", options("optimizer"))
def test_every_optimizer_builds(name):
    cfg = compose([f"optimizer={name}"])
    rest, (l1,) = take(cfg.optimizer, "l1")
    opt = build(rest, "optimizer")([torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr and l1 == 0.0


@pytest.mark.parametrize("name", options("scheduler"))
def test_every_scheduler_builds(name):
    cfg = compose([f"scheduler={name}"])
    rest, (interval, warmup, monitor) = take(cfg.scheduler, "interval", "warmup_epochs", "monitor")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    schedule = LRSchedule(build(rest, "scheduler"), opt, interval=interval, warmup_epochs=warmup, epochs=4,
                          steps_per_epoch=3, monitor=monitor)
    used = []
    for _ in range(4):
        for _ in range(3):
            used.append(schedule.lr)
            opt.step()
            schedule.after_step()
        schedule.after_epoch({"val/loss": 1.0})
    assert all(lr > 0 for lr in used), used  # every step trains with a positive lr


@pytest.mark.parametrize("group", ["loss", "augment", "metrics", "device"])
def test_other_groups_build(group):
    for name in options(group):
        cfg = compose([f"{group}={name}"])
        if group == "loss":
            assert isinstance(instantiate(cfg.loss), torch.nn.Module)
        elif group == "augment":
            aug = build(cfg.augment, "augment", mean=[0.5] * 3, std=[0.2] * 3)
            out = aug.train(torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8))
            assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
        elif group == "metrics":
            m = build_partial(cfg.metrics, "metrics", num_classes=6, split="val")
            m.update(torch.randn(8, 6), torch.arange(8) % 6, torch.tensor(1.0))
            assert "val/acc5" in m.compute()[0]
        else:
            assert cfg.device.type == name and cfg.device.count == 1


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_config_builds(name, tmp_path):
    overrides = [f"dataset={name}"]
    if name != "fake":
        overrides.append(f"dataset.root={tmp_path}")
    cfg = compose(overrides)
    data = build(cfg.dataset, "dataset")
    assert data.batch_size == cfg.dataset.batch_size


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_and_validates(name):
    cfg = compose([f"+experiment={name}", "dataset.root=/somewhere"])
    settings = load_settings(cfg)
    assert settings.trainer.epochs >= 1
    if name == "resnet18_tiny":
        assert cfg.dataset._target_.endswith("TinyImageNet") and cfg.optimizer.lr == 0.2
        assert cfg.dataset.batch_size == 256 and cfg.scheduler.warmup_epochs == 5


def test_experiment_files_hold_only_overrides():
    for name in options("experiment"):
        text = CONF.joinpath("experiment", f"{name}.yaml").read_text()
        assert "# @package _global_" in text
        assert "_target_" not in text  # components come from their groups, never copied here


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=0", "trainer.epochs must be >= 1"),
    ("optimizer.lr=-0.1", "optimizer.lr must be > 0"),
    ("trainer.epochs=abc", "trainer.epochs"),
    ("trainer.precision=fp8", "trainer.precision must be one of"),
    ("model.dropout=1.5", "model.dropout"),
    ("dataset.batch_size=0", "dataset.batch_size"),
])
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(compose([override]))


@pytest.mark.parametrize("args, message", [
    (["optimizer=foo"], "unknown optimizer 'foo': choose one of adadelta, adagrad, adam"),
    (["trainer.epochs=0"], "trainer.epochs must be >= 1"),
    (["trainer.epoch=3"], "trainer.epoch"),
    (["+experiment=resnet18_tiny"], "dataset.root is not set"),
    (["-m", "device=cpu,tpu"], "unknown device 'tpu'"),
])
def test_cli_config_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", *args)
    line = assert_one_line(code, out, err, message)
    assert line.startswith("trainlab: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_cli_help_lists_commands_and_groups(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("train", "evaluate", "compare", "summary", "diagnose", "report"):
        assert f"  {command} " in out, command
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for group in ("dataset:", "optimizer:", "scheduler:", "experiment:"):
        assert group in out
    code, _, err = run(capsys, "fly")
    assert code == 2 and "unknown command 'fly'" in err


def test_cfg_job_prints_the_composed_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "train", "+experiment=quickstart", "--cfg", "job")
    assert code == 0
    cfg = OmegaConf.create(out)
    assert cfg.trainer.epochs == 8 and cfg.dataset._target_ == "trainlab.data.Digits"
