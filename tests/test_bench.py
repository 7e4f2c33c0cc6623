"""The benchmark scripts still run and print their RATIO line (timings are never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
@pytest.mark.parametrize("script, args, ratios", [
    ("bench_defaults.py", ["--steps", "1", "--batch-size", "16", "--per-class", "4", "--rounds", "1"],
     ["defaults_vs_textbook", "defaults_vs_best_bare"]),
    ("bench_overhead.py", ["--steps", "1", "--batch-size", "16", "--eval-batches", "1", "--rounds", "1"],
     ["train_overhead", "eval_overhead"]),
    ("bench_data.py", ["--batches", "1", "--steps", "1", "--per-class", "4", "--batch-size", "16", "--rounds", "1",
                       "--archive-rounds", "1", "--archive-per-class", "2"],
     ["delivery_vs_imagefolder", "train_vs_fixed_batch", "archive_vs_folder"]),
    ("bench_gpu.py", ["--device", "cpu", "--images", "48", "--val-images", "16", "--classes", "4", "--steps", "1",
                      "--batch-sizes", "16", "--workers", "0", "--image-size", "16"],
     ["small_stem_b16_vs_textbook", "small_stem_b16_vs_fixed_batch", "standard_stem_b16_vs_textbook",
      "standard_stem_b16_vs_fixed_batch"]),
    ("bench_sweep.py", ["--train-size", "32", "--image-size", "16", "--model", "small_cnn", "--jobs", "2"],
     ["parallel_vs_sequential", "parallel2_vs_sequential"]),
    ("bench_devices.py", ["--steps", "1", "--batch-size", "16", "--per-class", "4", "--rounds", "1"], ["ddp2_vs_1"]),
    ("bench_search.py", ["--trials", "3", "--epochs", "1", "--base", "+debug=fast"],
     ["async_vs_batched", "pruned_vs_batched"]),
])
def test_bench_script_prints_ratios(script, args, ratios, capsys, monkeypatch):
    # In this process, as `python scripts/<script>` runs it (its __main__ block, scripts/ first on sys.path): a
    # fresh interpreter would cost seconds of imports a script. What a script changes globally (torch's threads,
    # loggers' levels: bench_gpu quiets trainlab's) is put back.
    import logging
    import runpy

    import torch

    monkeypatch.setattr(sys, "argv", [script, *args])
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    threads = torch.get_num_threads()
    loggers = {name: (lg.level, lg.disabled, lg.propagate) for name, lg in logging.Logger.manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    try:
        runpy.run_path(str(REPO / "scripts" / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        for name, lg in logging.Logger.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.level, lg.disabled, lg.propagate = loggers.get(name, (logging.NOTSET, False, True))
        logging.Logger.manager._clear_cache()  # (levels are cached per logger)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("RATIO ")]
    found = dict(pair.split("=") for ln in lines for pair in ln.split()[1:])
    assert sorted(found) == sorted(ratios), out[-2000:]
    assert all(re.fullmatch(r"\d+\.\d{3}", v) and float(v) > 0 for v in found.values())
    if script == "bench_sweep.py":  # the CPU default, said
        assert re.search(r"the default on this CPU: \d+ at once \(\d+ cores, one job per 8", out), out


def test_gpu_check_skips_the_gpu_parts_cleanly_without_a_gpu(tmp_path):
    import json
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine this is the real check (scripts/gpu_check.sh)")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA GPU visible to torch: skipped the cuda tests, bench_gpu and DDP" in result.stdout
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["gpus"] == 0 and record["skipped"] == ["cuda tests", "bench_gpu", "ddp"]
    assert record["tests"]["exit"] is None and record["ddp"] is None
    assert record["search"]["exit"] == 0 and record["search"]["placed"] == {"0": "cpu, in this process",
                                                                           "1": "cpu, in this process"}
