#!/usr/bin/env bash
# Install trainlab with its test extras into .venv (made if missing), lint it with ruff, and run the whole
# test suite, slow end-to-end tests included. Extra arguments go to pytest (e.g. -m "not slow", -k resume).
set -euo pipefail
TRAINLAB_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# Lint first: it takes a second and names the line.
.venv/bin/ruff check trainlab tests scripts
exec .venv/bin/python -m pytest -q "$@"
