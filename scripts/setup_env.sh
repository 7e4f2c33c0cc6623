#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make .venv if missing and install trainlab into it.
# Usage: TRAINLAB_EXTRAS=test; source scripts/setup_env.sh   (a variable, not an argument: a sourced
# file sees its caller's arguments, which are config overrides for demo.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    echo "trainlab: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
# torch's CUDA build fills about 6.5 GB of .venv: say so up front rather than let pip stop half-way with
# "No space left on device" (a half-installed torch then fails to import).
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
    need_gb=7
    free_gb=$(df -Pk .venv | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "trainlab: installing torch into $PWD/.venv needs about $need_gb GB free and that disk has $free_gb GB; free some space (or clone elsewhere) and run this again" >&2
        exit 1
    fi
fi
# The exact torch builds the project's machines hold locally (pip takes them from disk; other
# versions would download gigabytes).
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored: it is neither" >&2)
extras=${TRAINLAB_EXTRAS:-}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" 2> >(grep -v "is ignored: it is neither" >&2)
