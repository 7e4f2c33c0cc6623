#!/usr/bin/env bash
# Install trainlab with its test extras into .venv (made if missing) and run the whole test suite,
# slow end-to-end tests included. Extra arguments go to pytest (e.g. -m "not slow", -k resume).
set -euo pipefail
TRAINLAB_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec .venv/bin/python -m pytest -q "$@"
