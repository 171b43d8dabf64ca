"""The launchers: launch/local.py (N local processes), launch/tpu_pod.sh and launch/slurm.sbatch
(their commands, run against fake gcloud / srun / scontrol on PATH)."""

import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from glofnd_jax import distributed

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH_LOCAL = REPO / "launch" / "local.py"
TPU_POD = REPO / "launch" / "tpu_pod.sh"
SLURM = REPO / "launch" / "slurm.sbatch"


def _launch(env: dict, *args, **kwargs) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(LAUNCH_LOCAL), *map(str, args)],
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)


def test_local_launcher_sets_up_each_process_and_stops_all_on_a_failure(train_cli):
  # Process 1 fails at once; process 0 would run for a minute unless the launcher stops it.
  script = textwrap.dedent("""
      import os, sys, time
      pid = int(os.environ["JAX_PROCESS_ID"])
      print("env", pid, os.environ["JAX_NUM_PROCESSES"], os.environ["JAX_COORDINATOR_ADDRESS"],
            os.environ["XLA_FLAGS"], os.environ["JAX_PLATFORMS"], flush=True)
      if pid == 1:
        time.sleep(2)  # process 0 is up and has printed by then
        sys.exit(3)
      time.sleep(60)
  """)
  start = time.monotonic()
  process = _launch(train_cli.env(), "-n", 2, "-d", 3, "--grace", 1, "--", "python", "-c", script)
  output, _ = process.communicate(timeout=60)
  assert process.returncode == 3, output
  assert time.monotonic() - start < 30, "the healthy process was not stopped"
  lines = output.splitlines()
  env_0 = next(line for line in lines if line.startswith("[p0] env 0"))
  env_1 = next(line for line in lines if line.startswith("[p1] env 1"))
  for line in (env_0, env_1):
    assert " 2 localhost:" in line and "--xla_force_host_platform_device_count=3" in line
    assert line.endswith(" cpu")
  assert env_0.split()[4] == env_1.split()[4]  # one coordinator address for both
  assert "[launch] process 1 exited with status 3; stopping the others." in output


def test_process_variables_are_read_and_checked():
  env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
  assert distributed.processes_from_env(env) == {"num_processes": 4, "process_id": 3}
  assert distributed.processes_from_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) == {}  # jax detects
  for bad, message in [
      ({"JAX_NUM_PROCESSES": "4"}, "JAX_PROCESS_ID is not set but JAX_NUM_PROCESSES is"),
      ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
       "JAX_NUM_PROCESSES='two' is not an integer; set it to the process count"),
      ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
       "JAX_PROCESS_ID=2 must lie in [0, JAX_NUM_PROCESSES=2)"),
      ({"JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES=0 must be >= 1")]:
    with pytest.raises(ValueError) as raised:
      distributed.processes_from_env(bad)
    assert message in str(raised.value)


def test_local_launcher_rejects_a_missing_command(train_cli):
  process = _launch(train_cli.env(), "-n", 2)
  output, _ = process.communicate(timeout=60)
  assert process.returncode != 0 and "give the command to run after --" in output


@pytest.mark.slow
def test_two_processes_train_and_stop_together_on_sigterm(tmp_path, train_cli):
  """2 processes x 2 fake devices train the tiny config (global mesh, per-process data,
  collective checkpoints); SIGTERM to the launcher reaches both, they agree on one step through
  jax's preemption sync, save it together and exit 0. (Resuming exactly from such a checkpoint
  is tested in one process in test_preemption.py; the resumed state is the same arrays.)"""
  workdir = tmp_path / "run"
  launcher = _launch(train_cli.env(), "-n", 2, "-d", 2, "--", "glofnd-jax", "train",
                     f"--config={train_cli.recipe}", f"--workdir={workdir}",
                     *train_cli.flags, "--config.epochs=25", "--noevaluate")
  deadline = time.monotonic() + 240
  while not (workdir / "checkpoints" / "3").exists():  # compiled, trained 3 steps, saved
    assert launcher.poll() is None, launcher.communicate()[0]
    assert time.monotonic() < deadline, "no checkpoint in time"
    time.sleep(0.1)
  launcher.send_signal(signal.SIGTERM)
  output, _ = launcher.communicate(timeout=240)
  assert launcher.returncode == 0, output[-5000:]
  assert "[launch] got SIGTERM; passing SIGTERM to every process." in output
  stops = {line[:4]: int(line.split("stopped at step ")[1].split(" ")[0])
           for line in output.splitlines() if "stopped at step" in line}
  assert set(stops) == {"[p0]", "[p1]"}, output[-5000:]
  stopped_at = stops["[p0]"]
  assert stops["[p1]"] == stopped_at and 3 <= stopped_at < 100
  assert "on 4 device(s)" in output
  status = json.loads((workdir / "status.json").read_text())
  assert status == {"status": "preempted", "step": stopped_at, "total_steps": 100}
  step, arrays = train_cli.read_state(workdir)
  assert step == stopped_at and int(arrays["step"]) == stopped_at


# ------------------------------------------------------------------------------- tpu_pod.sh

FAKE_GCLOUD = '''#!{python}
"""Stands in for gcloud: logs each call; `ssh --command` runs the command in a fake worker home
(except the install, which would need the network); describe succeeds if FAKE_TPU_EXISTS=1."""
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(args) + "\\n")
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
  sys.exit(0 if os.environ.get("FAKE_TPU_EXISTS") == "1" else 1)
if args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
  command = next(a for a in args if a.startswith("--command="))[len("--command="):]
  if "pip install" in command:
    sys.exit(0)
  home = os.environ["FAKE_WORKER_HOME"]
  sys.exit(subprocess.call(["bash", "-c", command], cwd=home, env=dict(os.environ, HOME=home)))
'''

# The worker's "glofnd-jax": prints its arguments, one per line, and exits with status 3.
FAKE_TRAIN = '''#!/usr/bin/env bash
printf 'arg:%s\\n' "$@"
exit 3
'''


def _executable(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_gcloud(tmp_path):
  bin_dir, home = tmp_path / "bin", tmp_path / "worker_home"
  _executable(bin_dir / "gcloud", FAKE_GCLOUD.format(python=sys.executable))
  _executable(home / "glofnd-jax" / ".venv" / "bin" / "glofnd-jax", FAKE_TRAIN)
  log = tmp_path / "gcloud_calls.jsonl"
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             FAKE_GCLOUD_LOG=str(log), FAKE_WORKER_HOME=str(home))
  for name in list(env):
    if name.startswith(("TPU_", "TRAIN_")) or name == "DRY_RUN":
      del env[name]

  def calls():
    if not log.exists():
      return []
    return [json.loads(line) for line in log.read_text().splitlines()]

  return env, calls, home


def _tpu_pod(env, *args) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(TPU_POD), *args], env=env, capture_output=True, text=True,
                        timeout=120)


def test_tpu_pod_dry_run_prints_every_gcloud_command_and_runs_none(fake_gcloud):
  env, calls, _ = fake_gcloud
  result = _tpu_pod(env, "--dry-run", "--zone", "us-central2-b", "--name", "pod1",
                    "--accelerator", "v4-32", "--spot", "--workdir", "/mnt/shared/run1",
                    "--delete-after", "--", "--config.epochs=2")
  assert result.returncode == 0, result.stderr
  assert calls() == []  # nothing ran
  printed = [line for line in result.stdout.splitlines() if line.startswith("+ gcloud ")]
  verbs = [line.split()[5] for line in printed]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh", "delete"]
  assert ("--zone=us-central2-b --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"
          in printed[1])
  assert all("--worker=all" in printed[i] for i in (2, 3, 4)) and "--worker=0" in printed[5]
  assert "pip install" in printed[3] and "--config.epochs=2" in printed[4]
  assert "--workdir=/mnt/shared/run1" in printed[4]


def test_tpu_pod_runs_train_on_every_worker_and_returns_its_status(fake_gcloud):
  env, calls, home = fake_gcloud
  result = _tpu_pod(env, "--zone", "z1", "--name", "pod1", "--workdir", str(home / "run dir"),
                    "--delete-after", "--", "--config.data.data_dir=/data/with space",
                    "--config.epochs=2")
  # The run's exit status (3) comes back through `logs`; the VM is deleted anyway.
  assert result.returncode == 3, result.stdout + result.stderr
  verbs = [c[3] for c in calls()]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh", "delete"]
  # The arguments reached the worker's command intact (spaces and all), via nohup and bash -c.
  assert (f"arg:train\narg:--config=configs/imagenet100_sogclr_glofnd.py\n"
          f"arg:--workdir={home / 'run dir'}\narg:--config.data.data_dir=/data/with space\n"
          f"arg:--config.epochs=2\n") in result.stdout
  assert (home / "run dir").is_dir()


def test_tpu_pod_reuses_an_existing_vm_and_needs_a_zone(fake_gcloud):
  env, calls, home = fake_gcloud
  result = _tpu_pod(dict(env, FAKE_TPU_EXISTS="1"), "--zone", "z1", "create")
  assert result.returncode == 0 and "reusing TPU VM" in result.stdout
  assert [c[3] for c in calls()] == ["describe"]
  result = _tpu_pod(env, "train")
  assert result.returncode == 2 and "--zone (TPU_ZONE) is required" in result.stderr
  result = _tpu_pod(env, "--zone", "z1", "train")
  assert result.returncode == 2 and "--workdir (TRAIN_WORKDIR) is required" in result.stderr


# ------------------------------------------------------------------------------ slurm.sbatch

# A fake srun: logs its command line; for `train` it writes status.json with $FAKE_STATUS (if
# set), may send SIGTERM to the batch shell ($FAKE_SHELL_SIGNAL: preemption / the time limit),
# then exits with $FAKE_RC or dies of signal $FAKE_DIES_OF (as srun does when a task did).
FAKE_SRUN = '''#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_SLURM_LOG"
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir=${arg#--workdir=} ;; esac
done
if [[ " $* " == *" train "* ]]; then
  if [[ -n "${FAKE_STATUS:-}" ]]; then
    printf '{"status": "%s", "step": 5, "total_steps": 10}\\n' "$FAKE_STATUS" > "$workdir/status.json"
  fi
  [[ -n "${FAKE_SHELL_SIGNAL:-}" ]] && kill -TERM "$PPID"
  [[ -n "${FAKE_DIES_OF:-}" ]] && kill -"$FAKE_DIES_OF" $$
  exit "${FAKE_RC:-0}"
fi
'''
FAKE_SCONTROL = '''#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
'''


def _run_slurm_script(tmp_path, **fake) -> tuple[subprocess.CompletedProcess, list[str]]:
  """Run launch/slurm.sbatch with the fake srun / scontrol first on PATH; ``fake`` sets the
  FAKE_* variables. Returns the result and the srun / scontrol calls, in order."""
  bin_dir = tmp_path / "bin"
  _executable(bin_dir / "srun", FAKE_SRUN)
  _executable(bin_dir / "scontrol", FAKE_SCONTROL)
  venv = tmp_path / "venv"
  _executable(venv / "bin" / "glofnd-jax", "#!/bin/sh\nexit 0\n")
  (venv / "bin" / "python").symlink_to(sys.executable)
  log = tmp_path / "slurm.log"
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", VENV=str(venv),
             CONFIG="configs/digits_sogclr_glofnd.py", WORKDIR=str(tmp_path / "run"),
             REPO=str(REPO), SLURM_JOB_ID="4242", FAKE_SLURM_LOG=str(log),
             **{f"FAKE_{k.upper()}": str(v) for k, v in fake.items()})
  result = subprocess.run(["bash", str(SLURM), "--config.epochs=3"], env=env,
                          capture_output=True, text=True, timeout=60)
  return result, log.read_text().splitlines()


@pytest.mark.parametrize("status", ["preempted", "finished"])
def test_slurm_script_requeues_until_the_run_is_finished(tmp_path, status):
  result, calls = _run_slurm_script(tmp_path, status=status)
  assert result.returncode == 0, result.stdout + result.stderr
  assert calls[0] == (f"srun --kill-on-bad-exit=1 {tmp_path}/venv/bin/glofnd-jax train "
                      f"--config=configs/digits_sogclr_glofnd.py --workdir={tmp_path / 'run'} "
                      "--noevaluate --config.epochs=3")
  if status == "preempted":
    assert calls[1:] == ["scontrol requeue 4242"]
  else:
    assert calls[1].startswith("srun --ntasks=1") and " eval " in calls[1]
    assert len(calls) == 2


# (what srun does, status.json after it) -> requeued? A status.json left by an earlier job says
# "preempted": only srun's exit status and the job's own signal tell a failure from a stop.
SLURM_OUTCOMES = {
    "task_killed_by_sigterm_before_saving": (dict(dies_of="TERM"), True),
    "shell_sigterm_then_tasks_sigkilled": (dict(shell_signal=1, rc=137), True),
    "shell_sigterm_then_saved_and_exit_0": (dict(shell_signal=1, status="preempted"), True),
    "python_error": (dict(rc=1), False),
    "out_of_memory_kill": (dict(rc=137), False),
    "segfault": (dict(dies_of="SEGV"), False),
}


@pytest.mark.parametrize("outcome", sorted(SLURM_OUTCOMES))
def test_slurm_script_requeues_on_signals_and_stops_on_failures(tmp_path, outcome):
  fake, requeued = SLURM_OUTCOMES[outcome]
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "status.json").write_text('{"status": "preempted", "step": 3}\n')
  result, calls = _run_slurm_script(tmp_path, **fake)
  output = result.stdout + result.stderr
  assert calls[0].startswith("srun --kill-on-bad-exit=1 ") and " train " in calls[0]
  if requeued:
    assert result.returncode == 0, output
    assert calls[1:] == ["scontrol requeue 4242"], output
  else:
    assert result.returncode != 0 and calls[1:] == [], output
    assert "training failed (exit status" in result.stderr and "not requeueing" in result.stderr


def test_slurm_script_names_missing_settings(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "WORKDIR")}
  result = subprocess.run(["bash", str(SLURM)], env=env, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode != 0 and "set CONFIG to a config file" in result.stderr
