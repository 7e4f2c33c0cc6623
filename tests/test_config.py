"""Every YAML under conf/ composes and its components instantiate; bad values stop with one line."""

from __future__ import annotations

import dataclasses
import inspect
import re
from importlib.resources import files

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import get_method, instantiate
from omegaconf import MISSING, OmegaConf

from trainlab.core.config import Settings, TrainSchema, load_settings
from trainlab.core.errors import ConfigError
from trainlab.engine.build import COMMON_MODEL_KEYS, build, build_partial, build_schedule, check_components
from trainlab.optim import build_optimizer

from helpers import assert_one_line, compose, run

CONF = files("trainlab.conf")


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def test_conf_ships_every_group():
    for group in ("dataset", "model", "optimizer", "scheduler", "loss", "augment", "device", "metrics", "experiment",
                  "debug"):
        assert options(group), group
    assert set(options("scheduler")) == {"none", "step", "multistep", "exponential", "cosine", "cyclic", "onecycle",
                                         "plateau", "wsd"}
    assert set(options("optimizer")) == {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"}
    assert set(options("dataset")) == {"tiny_imagenet", "image_folder", "digits", "fake", "mnist", "fashion_mnist",
                                       "cifar10", "cifar100", "torchvision"}


@pytest.mark.parametrize("name", options("model"))
def test_every_model_builds_and_runs(name):
    from trainlab.core.runtime import resolve_runtime
    from trainlab.engine.build import build_model

    cfg = compose([f"model={name}", "dataset=fake"])
    runtime = resolve_runtime("cpu", "32", "false", "auto", False)
    model = build_model(cfg, 7, [str(k) for k in range(7)], runtime)  # the runner's own path
    out = model(torch.randn(2, 3, cfg.dataset.image_size, cfg.dataset.image_size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", options("optimizer"))
def test_every_optimizer_builds(name):
    cfg = compose([f"optimizer={name}"])
    opt = build_optimizer(build(cfg.optimizer, "optimizer"), [torch.nn.Parameter(torch.zeros(3))])
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("name", options("scheduler"))
def test_every_scheduler_builds(name):
    cfg = compose([f"scheduler={name}", "trainer.epochs=4"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    schedule = build_schedule(cfg, load_settings(cfg), opt, steps_per_epoch=3)
    assert schedule.interval == ("step" if name in ("onecycle", "cyclic") else "epoch")
    used = []
    for _ in range(4):
        for _ in range(3):
            used.append(schedule.lr)
            opt.step()
            schedule.after_step()
        schedule.after_epoch({"val/loss": 1.0})
    assert all(lr > 0 for lr in used), used  # every step trains with a positive lr


@pytest.mark.parametrize("group", ["loss", "augment", "metrics"])
def test_other_groups_build(group):
    for name in options(group):
        cfg = compose([f"{group}={name}"])
        if group == "loss":
            assert isinstance(instantiate(cfg.loss), torch.nn.Module)
        elif group == "augment":
            aug = build(cfg.augment, "augment", mean=[0.5] * 3, std=[0.2] * 3, channels=None)
            out = aug.train(torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8))
            assert out.shape == (4, 3, 16, 16) and out.dtype == torch.float32
        elif group == "metrics":
            m = build_partial(cfg.metrics, "metrics", num_classes=6, split="val")
            m.update(torch.randn(8, 6), torch.arange(8) % 6, torch.tensor(1.0))
            assert "val/acc5" in m.compute()[0]


@pytest.mark.parametrize("name", options("dataset"))
def test_every_dataset_config_builds(name, tmp_path):
    overrides = [f"dataset={name}"]
    if name != "fake":
        overrides.append(f"dataset.root={tmp_path}")
    if name == "torchvision":
        overrides.append("dataset.name=SVHN")
    cfg = compose(overrides)
    build(cfg.dataset, "dataset")  # its constructor checks its own keys


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_composes_and_validates(name):
    cfg = compose([f"+experiment={name}", "dataset.root=/somewhere"])
    load_settings(cfg)  # the typed schema and the checks run before any data is read


def test_experiment_files_hold_only_overrides():
    for name in options("experiment"):
        text = CONF.joinpath("experiment", f"{name}.yaml").read_text()
        assert "# @package _global_" in text
        assert "_target_" not in text  # components come from their groups, never copied here


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=0", "trainer.epochs must be >= 1"),
    ("optimizer.lr=0", "optimizer.lr must be > 0"),
    ("optimizer.lr=-0.1", "cannot build the optimizer: Invalid learning rate: -0.1 (check the optimizer.* keys)"),
    ("trainer.precision=fp8", "trainer.precision must be one of"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("dataset.batch_size=0", "dataset.batch_size must be >= 1"),
    ("augment.color_jitter=2", "augment.color_jitter must be in [0, 1)"),
    ("lr_schedule.interval=week", "lr_schedule.interval must be epoch or step"),
    ("lr_schedule.warmup_epochs=10", "lr_schedule.warmup_epochs (10) must be >= 0 and smaller than trainer.epochs"),
    ("model=small_cnn model.weights=IMAGENET1K_V1", "small_cnn has no pretrained weights"),
    ("target.metric=val/accuracy", "target.metric=val/accuracy is not a recorded metric"),
    ("target.mode=up", "target.mode must be min or max"),
    ("metrics.average=none", "metrics.average must be one of macro, weighted, micro"),
    ("trainer.data_on_device=maybe", "trainer.data_on_device must be auto, true or false"),
])
def test_bad_values_are_refused_by_their_owner(override, message):
    cfg = compose(override.split())
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_components(cfg, load_settings(cfg))


@pytest.mark.parametrize("override, message", [
    ("trainer.epochs=abc", "could not be converted to Integer"),
    ("trainer.epoch=3", "Key 'epoch' not in 'TrainerSettings'"),
    ("lr_schedule.warmup_epochs=1.5", "could not be converted to Integer"),
])
def test_the_schema_refuses_wrong_types_and_keys_as_hydra_composes(override, message):
    with pytest.raises(ConfigCompositionException) as error:
        compose([override])
    assert message in f"{error.value} {error.value.__cause__}"


def test_types_live_in_the_schema_and_values_only_in_yaml():
    def fields(schema):
        for f in dataclasses.fields(schema):
            if dataclasses.is_dataclass(f.type) or f.default_factory is not dataclasses.MISSING:
                yield from fields(f.default_factory)
            else:
                yield f
    assert all(f.default is MISSING for f in fields(TrainSchema))  # no default value written twice
    cfg = compose([])
    assert not OmegaConf.missing_keys(OmegaConf.masked_copy(cfg, [f.name for f in dataclasses.fields(Settings)]))


@pytest.mark.parametrize("group", ["dataset", "model", "optimizer", "scheduler", "loss", "augment", "metrics"])
def test_component_nodes_hold_only_their_constructors_arguments(group):
    for name in options(group):
        node = compose([f"{group}={name}"])[group]
        target = get_method(node._target_)
        accepted = set()
        for fn in [c.__init__ for c in target.__mro__] if inspect.isclass(target) else [target]:
            params = inspect.signature(fn).parameters
            accepted |= set(params)
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                break  # **kwargs goes on to the parent class
        if group == "model":  # the keys every model has are applied by the runner (engine.build.architecture)
            accepted |= set(COMMON_MODEL_KEYS)
        keys = [k for k in node if not k.startswith("_")]
        assert keys and set(keys) <= set(accepted), (name, set(keys) - set(accepted))


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
    for command in ("train", "evaluate", "compare", "summary", "diagnose", "report", "runs", "predict", "export"):
        assert f"  {command} " in out, command
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for group in ("dataset:", "optimizer:", "scheduler:", "experiment:", "logger: mlflow, tensorboard, wandb"):
        assert group in out
    for flag in ("--multirun,-m", "--cfg,-c", "--config-dir,-cd", "--shell-completion,-sc"):  # as --help promises
        assert flag in out, flag
    code, _, err = run(capsys, "fly")
    assert code == 2 and "unknown command 'fly'" in err


def test_cfg_job_prints_the_composed_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "train", "+experiment=quickstart", "--cfg", "job")
    assert code == 0
    assert OmegaConf.create(out) == compose(["+experiment=quickstart"])  # what the run would be given
