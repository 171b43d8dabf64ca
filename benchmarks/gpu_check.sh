#!/usr/bin/env bash
# One unattended run on a machine with one GPU (under 9 minutes): ResNet-50 224x224, batch 256,
# bfloat16, images/s with and without GloFND (interleaved), and the N = 1e8 per-sample state.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke  # here: the same Python entry at tiny sizes on CPU
#
# Python (benchmarks/device_python.sh): the project's .venv if its jax sees a GPU; otherwise the
# first python3 on the machine whose jax sees a GPU (on the lent GPU machines, the image's own),
# with PYTHONPATH set to the repository: the check needs only jax, flax, optax and numpy, so
# nothing is installed.
# Limits: GPU_CHECK_TIMEOUT (default 540 s) for the Python run, then it is killed; the JSON it
# wrote phase by phase is kept. Output: benchmarks/results/gpu_check.json (cpu smoke:
# gpu_check_cpu_smoke.json), also copied to $OUT when that is set, and a GPU_CHECK_SUMMARY line.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
LIMIT=${GPU_CHECK_TIMEOUT:-540}
CPU_SMOKE=0
for arg in "$@"; do [ "$arg" = "--cpu-smoke" ] && CPU_SMOKE=1; done
RESULT=benchmarks/results/gpu_check.json
[ "$CPU_SMOKE" = 1 ] && RESULT=benchmarks/results/gpu_check_cpu_smoke.json
for arg in "$@"; do case "$arg" in --out=*) RESULT=${arg#--out=} ;; esac; done

say() { echo "[gpu_check.sh] $*"; }
# shellcheck source=benchmarks/device_python.sh
. benchmarks/device_python.sh

say "start $(date -u +%FT%TZ) in $REPO"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || true
else
  say "nvidia-smi not found"
fi

export PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
choose_python "$CPU_SMOKE"
if [ -z "$PY" ]; then
  say "no python with jax, flax and optax$([ "$CPU_SMOKE" = 0 ] && echo ' that sees a GPU') was found"
  mkdir -p "$(dirname "$RESULT")"
  echo '{"benchmark": "gpu_check", "ok": false, "errors": {"environment": "no python whose jax sees a GPU"}}' > "$RESULT"
  [ -n "${OUT:-}" ] && cp "$RESULT" "$OUT/" 2>/dev/null
  exit 2
fi
say "python: $PY ($("$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1))"

timeout --signal=TERM --kill-after=30 "$LIMIT" "$PY" benchmarks/gpu_check.py "$@"
STATUS=$?
[ "$STATUS" = 124 ] && say "timed out after ${LIMIT}s; the phases finished before are in $RESULT"
if [ -f "$RESULT" ]; then
  say "result file: $RESULT"
  [ -n "${OUT:-}" ] && cp "$RESULT" "$OUT/" 2>/dev/null
else
  say "no result file was written"
fi
say "end $(date -u +%FT%TZ), exit status $STATUS"
exit "$STATUS"
