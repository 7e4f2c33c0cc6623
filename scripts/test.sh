#!/usr/bin/env bash
# Install trainlab with its test extras into .venv (made if missing), lint it with ruff, and run the whole
# test suite, slow end-to-end tests included, in two processes. Extra arguments go to pytest (e.g. -m "not slow",
# -k resume).
set -euo pipefail
TRAINLAB_EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# Hydra's Optuna sweeper, which trainlab's search is tested against (its search-space syntax, a resumed study) and
# benchmarked against: it pins optuna<3, trainlab's search needs 4+, and it runs on 4+ as far as trainlab uses it.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps hydra-optuna-sweeper 2> >(grep -v "is ignored: it is neither" >&2)
# The test that draws Chinese class names compares real glyphs, so CI installs a small CJK font (Debian's
# fonts-wqy-zenhei, ~10 MB) when none is there; elsewhere that one test is skipped, saying why.
if [ "${CI:-}" = true ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && ! { command -v fc-list >/dev/null && fc-list :lang=zh | grep -q .; }; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-zenhei; } >/dev/null 2>&1 \
        || echo "trainlab: could not install fonts-wqy-zenhei: the CJK font test will be skipped" >&2
fi
# Lint first: it takes a second and names the line.
.venv/bin/ruff check trainlab tests scripts
# Two test processes (TRAINLAB_TEST_WORKERS=0: one): many tests wait on subprocesses, imports and signals rather
# than compute, so even 2 cores finish the whole suite ~25% sooner (19 -> 14.5 minutes). loadscope keeps a
# module's tests together, so its expensive module-scoped fixtures (a trained run, a sweep) are built once.
workers=${TRAINLAB_TEST_WORKERS:-2}
if [ "$workers" != 0 ]; then
    set -- -n "$workers" --dist loadscope "$@"
    # Each test process (and each run it starts) would take every core for torch's threads: with two of them
    # the cores are oversubscribed, and the suite measured 14.3 minutes instead of 11.5. The cores are shared.
    cores=$(nproc)
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / workers > 0 ? cores / workers : 1 ))}
fi
exec .venv/bin/python -m pytest -q "$@"
