"""The GPU path, checked on the CPU: data resident on the training device (trainer.data_on_device), a training
step that reads nothing back from the device between log intervals, the fused optimizer and torch.compile as an
autotune candidate. On a CPU the resident path is the default, so the rest of the suite (exact resume, DDP
sharding under gloo) runs through it too; these tests pin down that it equals the DataLoader path."""

from __future__ import annotations

import collections
import json

import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainlab.core.config import component, load_settings
from trainlab.core.errors import ConfigError
from trainlab.core.runtime import resolve_runtime
from trainlab.data import FakeData
from trainlab.data.base import DeviceBatches, data_placement
from trainlab.engine.autotune import Candidate, Workload, decide
from trainlab.engine.build import build_run
from trainlab.engine.fit import train
from trainlab.engine.interrupt import StopRequest
from trainlab.engine.loop import EpochTally, train_epoch
from trainlab.metrics import ClassificationMetrics
from trainlab.optim import fused_choice
from trainlab.record.recorder import SilentRecorder

from helpers import FAST, TIMING, compose

# Operations that make the host wait for a GPU: a tensor read back as a Python number (.item(), bool(t)), and
# the ones whose output size depends on the data (torch.bincount reads its largest index back, twice).
SYNCS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.bincount", "aten.nonzero",
         "aten.masked_select", "aten.unique", "aten._unique")


class SyncSpy(TorchDispatchMode):
    """Records every aten operation that would stall a GPU."""

    def __init__(self):
        super().__init__()
        self.seen = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(SYNCS):
            self.seen[str(func)] += 1
        return func(*args, **(kwargs or {}))


def fake(**kw) -> FakeData:
    data = component("dataset", "fake", num_classes=5, train_size=70, val_size=23, image_size=16, batch_size=8, **kw)
    data.setup(("train", "val"))
    return data


@pytest.mark.parametrize("split, train, world", [("train", True, 1), ("train", True, 2), ("val", False, 1),
                                                 ("val", False, 3)])
def test_device_batches_are_the_loaders_batches(split, train, world):
    data = fake()
    for rank in range(world):
        loader = data.loader(split, seed=3, train=train, rank=rank, world=world)
        resident = data.loader(split, seed=3, train=train, rank=rank, world=world, device=torch.device("cpu"))
        assert isinstance(resident, DeviceBatches) and len(resident) == len(loader)
        for epoch, start in ((1, 0), (2, 0), (2, 1)):  # a new order per epoch; a mid-epoch resume skips batches
            loader.sampler.set_epoch(epoch, start_batch=start)
            resident.sampler.set_epoch(epoch, start_batch=start)
            ours, theirs = list(resident), list(loader)
            assert len(ours) == len(theirs) > 0
            for (xa, ya), (xb, yb) in zip(ours, theirs):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_placement_on_a_cpu_follows_the_workers_setting():
    cpu = torch.device("cpu")
    assert data_placement("auto", fake(), cpu)[0] is True
    on, why = data_placement("auto", fake(num_workers=2), cpu)
    assert on is False and "num_workers=2" in why
    assert data_placement("false", fake(), cpu) == (False, "set by trainer.data_on_device")
    assert data_placement("true", fake(num_workers=2), cpu)[0] is True


def test_placement_on_a_gpu_depends_on_its_free_memory(monkeypatch):
    """The rule on a GPU, with its free memory faked (the arrays here take 70*3*16*16 + 23*3*16*16 bytes plus
    8 per label: ~72 KB)."""
    gpu, data = torch.device("cuda:0"), fake()
    free = {"bytes": 10**9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 2 * 10**9))
    on, why = data_placement("auto", data, gpu)
    assert on is True and "copied there once" in why
    free["bytes"] = 100_000  # fits, but in more than half of what is free: the activations need room
    on, why = data_placement("auto", data, gpu)
    assert on is False and "pinned memory" in why
    assert data_placement("true", data, gpu)[0] is True  # asked for, and it fits at all
    free["bytes"] = 50_000
    with pytest.raises(ConfigError, match="trainer.data_on_device=true but the arrays take"):
        data_placement("true", data, gpu)


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
@pytest.mark.parametrize("extra", [[], ["trainer.accumulate_grad_batches=2", "augment.mixup_alpha=0.2"]])
def test_training_on_resident_data_equals_the_dataloader_path(tmp_path, extra):
    args = FAST + ["dataset.train_size=96", "dataset.val_size=32", "dataset.batch_size=16"] + extra
    train(compose(args + ["trainer.data_on_device=true"]), tmp_path / "resident")
    train(compose(args + ["trainer.data_on_device=false"]), tmp_path / "loader")
    resident = pd.read_csv(tmp_path / "resident" / "metrics.csv").drop(columns=TIMING)
    loader = pd.read_csv(tmp_path / "loader" / "metrics.csv").drop(columns=TIMING)
    pd.testing.assert_frame_equal(resident, loader)
    a = torch.load(tmp_path / "resident" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "loader" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    runtime = json.loads((tmp_path / "resident" / "run.json").read_text())["runtime"]
    assert runtime["data_on_device"] is True and runtime["reasons"]["data_on_device"] == "set by trainer.data_on_device"
    runtime = json.loads((tmp_path / "loader" / "run.json").read_text())["runtime"]
    assert runtime["data_on_device"] is False


def test_the_spy_sees_host_syncs():
    with SyncSpy() as spy:
        torch.tensor(2.0).item()
        torch.bincount(torch.tensor([1, 2]))
    assert spy.seen["aten._local_scalar_dense.default"] == 1 and spy.seen["aten.bincount.default"] == 1


@pytest.mark.parametrize("extra", [[], ["trainer.grad_clip=1.0", "trainer.accumulate_grad_batches=2",
                                        "augment.cutmix_alpha=1.0", "augment.mixup_alpha=0.2",
                                        "augment.random_erasing=0.5", "trainer.ema_decay=0.9"]])
def test_a_training_epoch_reads_nothing_back_between_log_intervals(tmp_path, extra):
    """Every step of an epoch without a log interval: no .item(), no data-dependent shapes (the per-step metric
    updates included: the confusion matrix is counted with index_add_, not torchmetrics' bincount)."""
    cfg = compose(FAST + ["dataset.train_size=64", "dataset.val_size=16", "dataset.batch_size=16"] + extra)
    run = build_run(cfg, load_settings(cfg), resolve_runtime("cpu", "32", "false", "auto", "false"))
    assert isinstance(run.train_loader, DeviceBatches)
    recorder = SilentRecorder(tmp_path)
    tally = EpochTally(torch.device("cpu"), epoch=1, step=0)
    run.train_loader.sampler.set_epoch(1)
    if run.stepper.ema is not None:  # its one read of the step counter happens at the first update, here
        run.stepper.ema.update_parameters(run.stepper.model)
    with StopRequest() as stop, SyncSpy() as spy:
        train_epoch(run, tally, torch.Generator().manual_seed(0), recorder, stop, log_every=10**6)
    assert tally.batches == 4 and tally.step == (4 if not extra else 2)
    assert not spy.seen, dict(spy.seen)


def test_the_weight_ema_equals_torchs_averaged_model_across_a_reload():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from trainlab.optim import WeightEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    ours = WeightEMA(model, 0.8)
    theirs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    for step in range(6):
        model.train()(torch.randn(4, 3, 6, 6))  # moves BatchNorm's running statistics (buffers)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        if step == 3:  # as a resume does: a fresh average loaded from the state so far
            state = ours.state_dict()
            ours = WeightEMA(model, 0.8)
            ours.load_state_dict(state)
        ours.update_parameters(model)
        theirs.update_parameters(model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_metric_updates_read_nothing_back():
    metrics = ClassificationMetrics(7, "train", top_k=5, average="macro", with_auroc=False)
    with SyncSpy() as spy:
        for _ in range(3):
            metrics.update(torch.randn(16, 7), torch.randint(0, 7, (16,)), torch.tensor(1.0))
    assert not spy.seen, dict(spy.seen)


def test_fused_optimizers_on_a_gpu_only_where_torch_has_them():
    def make(cls, **kw):
        import functools
        return functools.partial(cls, lr=0.1, **kw)

    assert fused_choice(make(torch.optim.AdamW), "cpu")[0] == {}
    assert fused_choice(make(torch.optim.AdamW, foreach=False), "cuda:0")[0] == {}
    assert fused_choice(make(torch.optim.RMSprop), "cuda:0")[0] == {}  # no fused kernel at all
    # Where a GPU is visible, AdamW and SGD get fused kernels; without one the trial construction fails and
    # trainlab keeps torch's default, saying so.
    extra, why = fused_choice(make(torch.optim.AdamW), "cuda:0")
    assert extra == ({"fused": True} if torch.cuda.is_available() else {}), why
    assert "fused" in why


def test_compile_is_a_candidate_on_a_gpu_and_wins_only_by_a_margin(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path))
    fp32, bf16 = Candidate("32", True), Candidate("bf16-mixed", True)
    calls = []

    def measure(speeds):
        def timed(make, candidate, device, work, best=0.0):
            calls.append(candidate)
            return speeds[candidate]
        return timed

    model = {"_target_": "x", "width": 1}
    gpu = torch.device("cpu")  # decide() takes any device (tune_runtime offers compile on a GPU only)
    work = Workload((3, 8, 8), 3, 8)
    faster = {fp32: 100, bf16: 200, Candidate("bf16-mixed", True, True): 260}
    decision = decide(None, model, gpu, [fp32, bf16], work, measure=measure(faster), try_compile=True)
    # One compilation: of the fastest eager option, not of every option.
    assert calls == [fp32, bf16, Candidate("bf16-mixed", True, True)]
    assert decision.choice.compile and decision.to_dict()["compile"] is True
    assert decide(None, model, gpu, [fp32, bf16], work, try_compile=True).cached  # cached with compile
    close = {fp32: 100, bf16: 200, Candidate("bf16-mixed", True, True): 204}  # within 3%: no compile time to pay
    decision = decide(None, {**model, "width": 2}, gpu, [fp32, bf16], work, measure=measure(close),
                      try_compile=True)
    assert decision.choice == bf16


def test_compile_auto_is_off_on_a_cpu_and_says_why():
    runtime = resolve_runtime("cpu", "32", "false", "auto", "auto", autotune=True)
    assert runtime.compile is False and runtime.reasons["compile"].startswith("auto: off on a CPU")
    assert resolve_runtime("cpu", "32", "false", "auto", "false").reasons["compile"] == "set by trainer.compile"
    with pytest.raises(ConfigError, match="trainer.compile must be auto, true or false"):
        load_settings(compose(FAST + ["trainer.compile=sometimes"]))
