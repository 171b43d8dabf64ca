#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice with gcloud: create (or reuse) it, install this checkout on
# every worker, start `glofnd-jax train` on every worker, follow worker 0's log, delete.
#
#   launch/tpu_pod.sh --zone us-central2-b --accelerator v4-32 --workdir /mnt/shared/run1 \
#       --config configs/imagenet100_sogclr_glofnd.py -- --config.data.data_dir=/mnt/shared/tfds
#   launch/tpu_pod.sh --zone us-central2-b logs        # one step: create|install|train|logs|delete
#   launch/tpu_pod.sh --dry-run --zone us-central2-b   # print the gcloud commands, run nothing
#
# Every option has an environment variable (in brackets); flags win. Arguments after `--` go to
# `glofnd-jax train`. Steps, in order: create install train logs [delete]; without a step name
# all of them run, delete only with --delete-after. Rerunning the same command after a spot
# preemption recreates the VM and resumes from the latest checkpoint in --workdir.
#
#   --name NAME          [TPU_NAME]             TPU VM name (default glofnd-$USER)
#   --zone ZONE          [TPU_ZONE]             required, e.g. us-central2-b
#   --project PROJECT    [TPU_PROJECT]          default: gcloud's configured project
#   --accelerator TYPE   [TPU_ACCELERATOR]      default v4-8 (one host); v4-32 is 4 hosts
#   --version VERSION    [TPU_RUNTIME_VERSION]  default tpu-ubuntu2204-base
#   --spot               [TPU_SPOT=1]           spot capacity (preemptible; rerun to resume)
#   --python PYTHON      [TPU_PYTHON]           Python >= 3.11 on the workers (default python3.11,
#                                               installed with apt if missing)
#   --remote-dir DIR     [TPU_REMOTE_DIR]       checkout location under ~ (default glofnd-jax)
#   --config FILE        [TRAIN_CONFIG]         default configs/imagenet100_sogclr_glofnd.py
#   --workdir DIR        [TRAIN_WORKDIR]        required for train/logs: a directory every worker
#                                               sees and that outlives the VM (Filestore/NFS or a
#                                               gcsfuse mount), see docs/RUNNING_AT_SCALE.md
#   --delete-after       [TPU_DELETE_AFTER=1]   delete the VM after the run (all steps only)
#   --dry-run            [DRY_RUN=1]            print every gcloud command instead of running it
set -euo pipefail

TPU_NAME=${TPU_NAME:-glofnd-${USER:-user}}
TPU_ZONE=${TPU_ZONE:-}
TPU_PROJECT=${TPU_PROJECT:-}
TPU_ACCELERATOR=${TPU_ACCELERATOR:-v4-8}
TPU_RUNTIME_VERSION=${TPU_RUNTIME_VERSION:-tpu-ubuntu2204-base}
TPU_SPOT=${TPU_SPOT:-0}
TPU_PYTHON=${TPU_PYTHON:-python3.11}
TPU_REMOTE_DIR=${TPU_REMOTE_DIR:-glofnd-jax}
TRAIN_CONFIG=${TRAIN_CONFIG:-configs/imagenet100_sogclr_glofnd.py}
TRAIN_WORKDIR=${TRAIN_WORKDIR:-}
TPU_DELETE_AFTER=${TPU_DELETE_AFTER:-0}
DRY_RUN=${DRY_RUN:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG=glofnd-train.log        # on every worker, under ~
STATUS=glofnd-train.status  # exit status of the train command, written when it ends

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

steps=()
train_args=()
while (($#)); do
  case "$1" in
    --name) TPU_NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) TPU_ZONE=${2:?--zone needs a value}; shift 2 ;;
    --project) TPU_PROJECT=${2:?--project needs a value}; shift 2 ;;
    --accelerator) TPU_ACCELERATOR=${2:?--accelerator needs a value}; shift 2 ;;
    --version) TPU_RUNTIME_VERSION=${2:?--version needs a value}; shift 2 ;;
    --spot) TPU_SPOT=1; shift ;;
    --python) TPU_PYTHON=${2:?--python needs a value}; shift 2 ;;
    --remote-dir) TPU_REMOTE_DIR=${2:?--remote-dir needs a value}; shift 2 ;;
    --config) TRAIN_CONFIG=${2:?--config needs a value}; shift 2 ;;
    --workdir) TRAIN_WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --delete-after) TPU_DELETE_AFTER=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; train_args=("$@"); break ;;
    create|install|train|logs|delete) steps+=("$1"); shift ;;
    *) die "unknown argument '$1' (see --help; arguments for glofnd-jax train go after --)" ;;
  esac
done

[[ -n "$TPU_ZONE" ]] || die "--zone (TPU_ZONE) is required, e.g. --zone us-central2-b"
delete_at_exit=0
if ((${#steps[@]} == 0)); then
  steps=(create install train logs)
  [[ "$TPU_DELETE_AFTER" == 1 ]] && delete_at_exit=1
fi
for step in "${steps[@]}"; do
  if [[ "$step" == train || "$step" == logs ]]; then
    [[ -n "$TRAIN_WORKDIR" ]] || die "--workdir (TRAIN_WORKDIR) is required to $step: a \
directory every worker sees and that outlives the VM"
  fi
done

location=(--zone="$TPU_ZONE")
[[ -n "$TPU_PROJECT" ]] && location+=(--project="$TPU_PROJECT")

# Every gcloud call goes through here: printed (shell-quoted, so it can be pasted), then run.
gc() {
  printf '+ gcloud'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" != 1 ]]; then gcloud "$@"; fi
}

# The remote command, each argument quoted for the workers' shell.
quoted() { printf '%q ' "$@"; }

step_create() {
  local describe=(compute tpus tpu-vm describe "$TPU_NAME" "${location[@]}" --format='value(state)')
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# dry run: the next command checks whether $TPU_NAME exists; creating it is shown"
    gc "${describe[@]}"
  elif gcloud "${describe[@]}" >/dev/null 2>&1; then
    echo "reusing TPU VM $TPU_NAME in $TPU_ZONE"
    return
  fi
  local extra=()
  [[ "$TPU_SPOT" == 1 ]] && extra+=(--spot)
  gc compute tpus tpu-vm create "$TPU_NAME" "${location[@]}" \
    --accelerator-type="$TPU_ACCELERATOR" --version="$TPU_RUNTIME_VERSION" "${extra[@]}"
}

step_install() {
  # The checkout as it is here (tracked and untracked files, no .venv/.git/workdir), so the
  # workers run exactly this code.
  local archive
  archive=$(mktemp -t glofnd-src.XXXXXX.tgz)
  trap 'rm -f "$archive"' RETURN
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "# dry run: would pack $REPO into $archive"
  else
    tar -czf "$archive" -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./workdir \
      --exclude='*/__pycache__' .
  fi
  gc compute tpus tpu-vm scp "$archive" "$TPU_NAME":glofnd-src.tgz --worker=all "${location[@]}"
  local py=$TPU_PYTHON dir=$TPU_REMOTE_DIR
  local remote="set -e
command -v $py >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $py $py-venv; }
rm -rf ~/$dir && mkdir -p ~/$dir && tar -xzf ~/glofnd-src.tgz -C ~/$dir
cd ~/$dir && $py -m venv .venv && .venv/bin/pip install -q -U pip
.venv/bin/pip install -q -e . 'jax[tpu]'"
  gc compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${location[@]}" --command="$remote"
}

step_train() {
  # Detached (the ssh session may drop), on every worker at once: jax.distributed.initialize()
  # finds the other workers from the TPU metadata. The exit status lands in ~/$STATUS.
  local train
  train=$(quoted .venv/bin/glofnd-jax train --config="$TRAIN_CONFIG" --workdir="$TRAIN_WORKDIR" \
    "${train_args[@]}")
  local remote="cd ~/$TPU_REMOTE_DIR && rm -f ~/$STATUS && mkdir -p $(quoted "$TRAIN_WORKDIR") &&
nohup bash -c $(quoted "$train > ~/$LOG 2>&1; echo \$? > ~/$STATUS") >/dev/null 2>&1 </dev/null &"
  gc compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${location[@]}" --command="$remote"
}

step_logs() {
  # Worker 0's log until its run ends; this script then exits with the run's status.
  local remote="tail -n +1 -F ~/$LOG & tail_pid=\$!
while [ ! -f ~/$STATUS ]; do sleep 15; done; sleep 2; kill \$tail_pid
exit \$(cat ~/$STATUS)"
  gc compute tpus tpu-vm ssh "$TPU_NAME" --worker=0 "${location[@]}" --command="$remote"
}

step_delete() {
  gc compute tpus tpu-vm delete "$TPU_NAME" "${location[@]}" --quiet
}

if ((delete_at_exit)); then
  # Also after a failed step: --delete-after means no VM is left running (and billed).
  trap 'status=$?; echo "== delete: $TPU_NAME"; step_delete || true; exit $status' EXIT
fi
for step in "${steps[@]}"; do
  echo "== $step: $TPU_NAME ($TPU_ACCELERATOR, $TPU_ZONE)"
  "step_$step"
done
