#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: make .venv if missing and install trainlab into it.
# Usage: source scripts/setup_env.sh [extras]   (extras: "test")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
    echo "trainlab: creating .venv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
# The exact torch builds the project's machines hold locally (pip takes them from disk; other
# versions would download gigabytes).
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored: it is neither" >&2)
extras=${1:-}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" 2> >(grep -v "is ignored: it is neither" >&2)
