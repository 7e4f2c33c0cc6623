#!/usr/bin/env bash
# Install trainlab into .venv (made if missing) and train ResNet-18 on real images offline:
# scikit-learn's handwritten digits, written once in the Tiny-ImageNet layout. About 1.5 minutes on a 2-core CPU.
# Extra arguments are config overrides, e.g. scripts/demo.sh trainer.epochs=3
set -euo pipefail
TRAINLAB_EXTRAS=
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
run_dir="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/trainlab train +experiment=quickstart hydra.run.dir="$run_dir" "$@"
echo
# The quickstart's promise: 0.98 val top-1 (target.value), and how soon (summary.json's time_to_target).
.venv/bin/python scripts/demo_verdict.py "$run_dir"
echo "trainlab demo: the full record of the run is in $run_dir"
echo "  metrics.csv, summary.json, plots/*.png, confusion/*.csv, checkpoints/, tensorboard/"
echo "  curves:  .venv/bin/tensorboard --logdir $run_dir/tensorboard"
