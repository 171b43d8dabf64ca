# Sourced by the device scripts (gpu_check.sh, gpu_treatment_study.sh): which Python runs them.
#
# choose_python CPU_SMOKE sets PY: with CPU_SMOKE=1 the first of the project's .venv and python3
# that has jax, flax and optax (and JAX_PLATFORMS=cpu); otherwise the project's .venv if its jax
# sees a GPU, else the first python on the machine whose jax does (on the lent GPU machines the
# image's own, which cannot install anything). PY stays empty when none qualifies.

sees_gpu() { timeout 120 "$1" -c "import jax, flax, optax; assert jax.devices()[0].platform == 'gpu'" >/dev/null 2>&1; }
has_jax() { timeout 120 "$1" -c "import jax, flax, optax" >/dev/null 2>&1; }

choose_python() {
  local candidate
  PY=""
  if [ "$1" = 1 ]; then
    for candidate in "$REPO/.venv/bin/python" python3; do
      if has_jax "$candidate"; then PY=$candidate; break; fi
    done
    export JAX_PLATFORMS=cpu
  elif [ -x "$REPO/.venv/bin/python" ] && sees_gpu "$REPO/.venv/bin/python"; then
    PY="$REPO/.venv/bin/python"
  else
    for candidate in python3 python /opt/torch/.venv/bin/python3; do
      if command -v "$candidate" >/dev/null 2>&1 && sees_gpu "$candidate"; then
        PY=$(command -v "$candidate"); break
      fi
    done
  fi
}
