#!/usr/bin/env bash
# Soak test of engram-server on the default model on the CPU (issue 23):
# tools/soak.py starts build/engram-server on models/engram-lexicon, runs
# CLIENTS concurrent streaming clients (random lengths, random disconnects,
# resets and cancellations) for SECONDS, samples RSS, descriptors, KV blocks
# in use and the metrics every few seconds, and fails on any 5xx but the
# queue-full 503, on a leak trend, or on KV blocks not back to zero.
#   bench/soak.sh [SECONDS [CLIENTS]] [-- soak.py options]
#   defaults: 1800 s, 64 clients (the benchmark; scripts/test runs a short one)
# BUILD_DIR picks the build (default build); extra soak.py options after --,
# e.g. --json OUT. Exit status: soak.py's (0 pass, 1 fail).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-1800}
clients=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
py=.venv/bin/python
[ -x "$py" ] || py=python3
exec "$py" tools/soak.py --server "${BUILD_DIR:-build}/engram-server" --model models/engram-lexicon \
  --duration "$seconds" --clients "$clients" --server-arg=--threads --server-arg=2 "$@"
