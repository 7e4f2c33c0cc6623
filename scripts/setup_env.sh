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
# The exact torch builds the project's machines hold locally (pip takes them from disk; other
# versions would download gigabytes).
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2> >(grep -v "is ignored: it is neither" >&2)
extras=${TRAINLAB_EXTRAS:-}
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" 2> >(grep -v "is ignored: it is neither" >&2)
