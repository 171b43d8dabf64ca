#!/usr/bin/env bash
# The treatment study (benchmarks/treatment_study.py) on a lent GPU machine, for a bounded time:
# J runs at a time on the one GPU, each finished run kept in the committed store
# (benchmarks/results/study_runs/<study>/), so the next session continues where this one stopped.
#
#   bash benchmarks/gpu_treatment_study.sh --fetch-wheels           # here, once: .whl/ (see below)
#   bash benchmarks/gpu_treatment_study.sh [--studies glyphs] [--jobs 8]   # on the GPU machine
#   bash benchmarks/gpu_treatment_study.sh --studies digits         # a quicker full study there
#   bash benchmarks/gpu_treatment_study.sh --cpu-smoke [--out-dir=D]  # here: the digits quick
#       study with --jobs 2 into a temp store (what tests/test_benchmarks_quick.py runs)
#
# Python: STUDY_PYTHON if set; else, as gpu_check.sh, the project's .venv if its jax sees a GPU,
# else the first python3 on the machine whose jax does, with PYTHONPATH set to the repository. The GPU image lacks a few
# of the training stack's packages and cannot download: --fetch-wheels (here, with pip) puts them
# in .whl/ (git-ignored); carry .whl to the device and this script installs them into /tmp/site.
# Time: STUDY_TIME_LIMIT (default 420 s) for the study, which then stops its runs and exits
# (status 3); a run not finished by then is simply not in the store. Give the device call about
# 90 s more than that (start-up, the package install, the copy back).
# Output (to $OUT when set): study_runs.tar.gz (every study's store; unpack it into
# benchmarks/results/study_runs/ and commit), treatment_study.log, and the report JSON + plot of
# each study that finished. Last lines: STUDY_PROGRESS <study>: K of N runs in <store>.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
LIMIT=${STUDY_TIME_LIMIT:-420}
STUDIES=glyphs
JOBS=8
CPU_SMOKE=0
OUT_DIR=""
# The versions the project's environment is tested with; the GPU image has their dependencies.
WHEELS="grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker==1.6.0
        tensorboardX==2.6.5 importlib_resources==7.1.0"
NEEDED="jax, flax, optax, orbax.checkpoint, grain, array_record, ml_collections, sklearn, scipy, matplotlib, tensorboardX, cv2"

say() { echo "[gpu_treatment_study.sh] $*"; }
# shellcheck source=benchmarks/device_python.sh
. benchmarks/device_python.sh

fetch_wheels() {
  local pip_python=python3
  [ -x "$REPO/.venv/bin/python" ] && pip_python="$REPO/.venv/bin/python"
  # shellcheck disable=SC2086  # WHEELS is a list of words
  "$pip_python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
}

while [ $# -gt 0 ]; do
  case "$1" in
    --studies) STUDIES=$2; shift 2 ;;
    --studies=*) STUDIES=${1#--studies=}; shift ;;
    --jobs) JOBS=$2; shift 2 ;;
    --jobs=*) JOBS=${1#--jobs=}; shift ;;
    --out-dir=*) OUT_DIR=${1#--out-dir=}; shift ;;
    --cpu-smoke) CPU_SMOKE=1; shift ;;
    --fetch-wheels) fetch_wheels; exit $? ;;
    *) say "unknown argument '$1': see the top of $0 for the usage"; exit 2 ;;
  esac
done

say "start $(date -u +%FT%TZ) in $REPO"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ "$CPU_SMOKE" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "installing the carried wheels into /tmp/site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { say "installing .whl/*.whl failed"; exit 2; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

if [ -n "${STUDY_PYTHON:-}" ]; then
  PY=$STUDY_PYTHON
  [ "$CPU_SMOKE" = 1 ] && export JAX_PLATFORMS=cpu
else
  [ "$CPU_SMOKE" = 0 ] && command -v nvidia-smi >/dev/null 2>&1 &&
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  choose_python "$CPU_SMOKE"
fi
if [ -z "$PY" ]; then say "no python whose jax sees a GPU (--cpu-smoke: with jax) was found"; exit 2; fi
if ! MISSING=$("$PY" -c "import $NEEDED" 2>&1); then
  say "python $PY lacks a package: ${MISSING##*$'\n'}"
  say "run 'bash benchmarks/gpu_treatment_study.sh --fetch-wheels' where pip works, and carry .whl"
  exit 2
fi
say "python: $PY ($("$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1))"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ARGS=(--studies "$STUDIES" --out-dir "${OUT_DIR:-$WORK/results}")
STORE_ROOT=benchmarks/results/study_runs
if [ "$CPU_SMOKE" = 1 ]; then
  STORE_ROOT=$WORK/study_runs
  ARGS=(--quick --studies digits --out-dir "${OUT_DIR:-$WORK/results}" --store-dir "$STORE_ROOT")
  JOBS=2
fi
mkdir -p "${OUT_DIR:-$WORK/results}" "$STORE_ROOT"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}  # shared by the runs

# The study stops itself at LIMIT; timeout is the backstop (it ends the runs' process group too).
timeout --signal=TERM --kill-after=30 $((LIMIT + 60)) \
  "$PY" benchmarks/treatment_study.py "${ARGS[@]}" --jobs "$JOBS" --time-limit "$LIMIT" \
  2>&1 | tee "$WORK/treatment_study.log"
STATUS=${PIPESTATUS[0]}
case "$STATUS" in
  0) say "every study finished" ;;
  3) say "stopped at the time limit (${LIMIT}s): run this again to continue" ;;
  *) say "the study failed (exit status $STATUS): see the log above" ;;
esac
"$PY" benchmarks/treatment_study.py "${ARGS[@]}" --progress | sed 's/^/STUDY_PROGRESS /'

if [ -n "${OUT:-}" ]; then
  tar -czf "$OUT/study_runs.tar.gz" -C "$STORE_ROOT" .
  cp "$WORK/treatment_study.log" "$OUT/"
  [ -z "$OUT_DIR" ] && cp "$WORK"/results/treatment_study_* "$OUT/" 2>/dev/null
  say "copied the store (study_runs.tar.gz), the log and the finished reports to \$OUT"
fi
say "end $(date -u +%FT%TZ), exit status $STATUS"
exit "$STATUS"
