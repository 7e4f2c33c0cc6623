#!/usr/bin/env bash
# The GPU proof in one call of under 8 minutes, for a GPU machine that reaches no package registry:
#   1. installs trainlab from carried wheels (pip --no-deps; the machine's Python has torch and the rest),
#   2. runs the cuda tests (train -> resume -> evaluate at bf16-mixed and 16-mixed, the NaN stop under fp16, the
#      resident-data path),
#   3. runs scripts/bench_gpu.py at full Tiny-ImageNet scale within a time budget,
#   4. with two or more GPUs, a two-process DDP job over them (nccl),
#   5. a search (hydra/sweeper=search on hydra/launcher=parallel, one trial per GPU at once): where each trial ran,
# and writes what it measured into $OUT (gpu_check.json, and each step's log). On a machine without a GPU it skips
# steps 2-4 and says so, and runs step 5 on the CPU to check the plumbing (exit 0).
#
# Here (with network):  .venv/bin/pip download --no-deps -d wheels hydra-core omegaconf antlr4-python3-runtime==4.9.3 torchinfo \
#                           optuna colorlog tqdm
# Device (run tool):    carry ["wheels"], timeout_s=540:  bash scripts/gpu_check.sh
# Budgets (seconds) may be set: GPU_CHECK_TESTS=240 GPU_CHECK_BENCH=200 GPU_CHECK_DDP=90 GPU_CHECK_SEARCH=90.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python}
if [ -d wheels ] && ls wheels/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-deps wheels/*.whl > "$OUT/install.log" 2>&1 || { echo "gpu_check: installing the wheels failed (see $OUT/install.log)"; exit 1; }
fi
if ! "$PY" -c "import trainlab" 2> /dev/null; then
    "$PY" -m pip install -q --no-deps -e . >> "$OUT/install.log" 2>&1 || { echo "gpu_check: installing trainlab failed (see $OUT/install.log)"; exit 1; }
fi
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
declare -A rc
if [ "$gpus" -eq 0 ]; then
    echo "gpu_check: no CUDA GPU visible to torch: skipped the cuda tests, bench_gpu and DDP (nothing to prove here)"
else
    echo "gpu_check: $gpus GPU(s); cuda tests (at most ${GPU_CHECK_TESTS:-240} s)"
    timeout "${GPU_CHECK_TESTS:-240}" "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_device_path.py \
        > "$OUT/pytest.log" 2>&1; rc[tests]=$?
    tail -1 "$OUT/pytest.log"
    echo "gpu_check: bench_gpu (at most ${GPU_CHECK_BENCH:-200} s)"
    (cd scripts && timeout "${GPU_CHECK_BENCH:-200}" "$PY" bench_gpu.py) > "$OUT/bench_gpu.log" 2>&1; rc[bench]=$?
    grep "^RATIO" "$OUT/bench_gpu.log"
    if [ "$gpus" -ge 2 ]; then
        echo "gpu_check: two-process DDP (nccl, at most ${GPU_CHECK_DDP:-90} s)"
        timeout "${GPU_CHECK_DDP:-90}" "$PY" -m trainlab train +debug=fast device=cuda device.count=2 trainer.epochs=2 \
            "hydra.run.dir=$OUT/ddp" > "$OUT/ddp.log" 2>&1; rc[ddp]=$?
        tail -1 "$OUT/ddp.log"
    fi
fi
device=$([ "$gpus" -gt 0 ] && echo cuda || echo cpu)
trials=$(( gpus > 1 ? 2 * gpus : 2 ))
echo "gpu_check: a search of $trials trials on $device (at most ${GPU_CHECK_SEARCH:-90} s)"
timeout "${GPU_CHECK_SEARCH:-90}" "$PY" -m trainlab train -m +debug=fast device=$device hydra/sweeper=search \
    hydra/launcher=parallel "optimizer.lr=interval(0.01,0.1)" hydra.sweeper.n_trials=$trials hydra.sweeper.pruner=none \
    "hydra.sweep.dir=$OUT/search" > "$OUT/search.log" 2>&1; rc[search]=$?
tail -1 "$OUT/search.log"
RC_TESTS=${rc[tests]:-} RC_BENCH=${rc[bench]:-} RC_DDP=${rc[ddp]:-} RC_SEARCH=${rc[search]:-} GPUS=$gpus OUT=$OUT "$PY" - <<'PYEOF'
import json, os, re
from pathlib import Path

import torch

out, gpus = Path(os.environ["OUT"]), int(os.environ["GPUS"])
status = lambda key: None if os.environ[key] == "" else int(os.environ[key])  # noqa: E731
bench = (out / "bench_gpu.log").read_text() if (out / "bench_gpu.log").is_file() else ""
tests = (out / "pytest.log").read_text().strip().splitlines()[-1:] if (out / "pytest.log").is_file() else []
record = {
    "device": torch.cuda.get_device_name(0) if gpus else None, "gpus": gpus, "torch": torch.__version__,
    "skipped": [] if gpus else ["cuda tests", "bench_gpu", "ddp"], "reason": None if gpus else "no CUDA GPU visible",
    "tests": {"exit": status("RC_TESTS"), "summary": tests[0] if tests else None},
    "bench": {"exit": status("RC_BENCH"), "ratios": {k: float(v) for line in bench.splitlines()
                                                     if line.startswith("RATIO") for k, v in
                                                     re.findall(r"(\S+)=([-\d.]+)", line)},
              "lines": [ln for ln in bench.splitlines() if "images/s" in ln or "50 epochs" in ln]},
    "ddp": {"exit": status("RC_DDP")} if gpus >= 2 else None,
    # Where each trial ran, as the launcher said it: "GPU 1" (one of its own), or "cpu/cuda, in this process".
    "search": {"exit": status("RC_SEARCH"), "placed": dict(re.findall(
        r"trial (\d+) started: .* \[([^\]]+)\]", (out / "search.log").read_text() if (out / "search.log").is_file()
        else ""))},
}
(out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
print(f"gpu_check: wrote {out / 'gpu_check.json'}")
failed = [k for k in ("tests", "bench", "search") if record[k]["exit"] not in (None, 0)] + \
    (["ddp"] if record["ddp"] and record["ddp"]["exit"] != 0 else [])
raise SystemExit(f"gpu_check: failed: {', '.join(failed)} (logs in {out})" if failed else 0)
PYEOF
