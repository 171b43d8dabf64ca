#!/usr/bin/env python3
"""Run N processes of one command on this machine, as a multi-host job would (the test harness).

Each process gets a local ``jax.distributed`` coordinator (a free port on localhost) through
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, which
``glofnd_jax.distributed.initialize()`` reads, and, with ``--devices_per_process K``, K fake
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=K``, ``JAX_PLATFORMS=cpu``).
So 2 processes x 4 devices exercise exactly the code paths of 2 hosts x 4 accelerators: the
global mesh, per-process data loading, collective checkpoints, preemption agreement.

  python launch/local.py -n 2 -d 2 -- glofnd-jax train --config configs/digits_sogclr_glofnd.py \\
      --workdir /tmp/run --config.epochs=1
  python launch/local.py -n 2 -d 4 -- -m my_package.my_module --flag=value
  python launch/local.py -n 2 -d 4 -- python my_script.py

* Output: every line of every process is printed with a ``[p<id>]`` prefix as it comes.
* Failure: when a process exits with an error, the others are stopped (SIGTERM, then SIGKILL
  after ``--grace`` seconds: peers of a dead process usually hang in a collective) and the
  launcher exits with the failed process's status.
* Signals: SIGTERM or SIGINT to the launcher is passed on to every process as SIGTERM (what a
  cluster does at preemption), so a training run saves a checkpoint and exits 0.

``glofnd-jax`` as the command runs ``<this python> -m glofnd_jax.cli``; a command starting with
``-m`` runs ``<this python> -m ...``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port on localhost that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def resolve_command(command: Sequence[str]) -> list[str]:
  """``glofnd-jax ...`` and ``-m module ...`` run under this launcher's Python."""
  command = list(command)
  if not command:
    raise SystemExit("error: give the command to run after --, e.g. -- glofnd-jax train ...")
  if command[0] == "glofnd-jax":
    return [sys.executable, "-m", "glofnd_jax.cli", *command[1:]]
  if command[0] == "-m":
    return [sys.executable, *command]
  return command


def process_env(base: dict, process_id: int, num_processes: int, port: int,
                devices_per_process: int | None) -> dict:
  """The environment of process ``process_id``: coordinator, its id, fake devices."""
  env = dict(base)
  env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
  if devices_per_process is not None:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={devices_per_process}"])
    env["JAX_PLATFORMS"] = "cpu"
  return env


class Job:
  """The N processes: start, stream their output, stop them together."""

  def __init__(self, command: list[str], num_processes: int, devices_per_process: int | None,
               port: int, grace: float):
    self.grace = grace
    self._print_lock = threading.Lock()
    self.processes: list[subprocess.Popen] = []
    self._readers: list[threading.Thread] = []
    for process_id in range(num_processes):
      env = process_env(os.environ, process_id, num_processes, port, devices_per_process)
      # A new session: a Ctrl-C at the terminal reaches only the launcher, which then stops
      # every process the same way (SIGTERM) instead of each seeing a KeyboardInterrupt.
      process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
      self.processes.append(process)
      reader = threading.Thread(target=self._stream, args=(process_id, process), daemon=True)
      reader.start()
      self._readers.append(reader)

  def _stream(self, process_id: int, process: subprocess.Popen) -> None:
    prefix = f"[p{process_id}] ".encode()
    for line in iter(process.stdout.readline, b""):
      with self._print_lock:
        sys.stdout.buffer.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        sys.stdout.buffer.flush()

  def signal_all(self, signum: int) -> None:
    for process in self.processes:
      if process.poll() is None:
        try:
          os.kill(process.pid, signum)
        except ProcessLookupError:
          pass

  def stop_all(self) -> None:
    """SIGTERM every process still running; SIGKILL those left after the grace period."""
    self.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + self.grace
    while time.monotonic() < deadline and any(p.poll() is None for p in self.processes):
      time.sleep(0.1)
    self.signal_all(signal.SIGKILL)
    for process in self.processes:
      process.wait()

  def wait(self) -> int:
    """Wait for every process; the first failure stops the rest. Returns the exit status."""
    status = 0
    try:
      while True:
        codes = [p.poll() for p in self.processes]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
          process_id, code = failed[0]
          self.say(f"process {process_id} exited with status {code}; stopping the others.")
          self.stop_all()
          status = code if code > 0 else 128 - code  # killed by signal s: 128 + s, as a shell
          break
        if all(c == 0 for c in codes):
          break
        time.sleep(0.1)
    finally:
      for reader in self._readers:
        reader.join(timeout=5)
    return status

  def say(self, text: str) -> None:
    with self._print_lock:
      print(f"[launch] {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s [-n N] [-d K] [--port P] [--grace S] -- COMMAND [ARGS...]")
  parser.add_argument("-n", "--num_processes", type=int, default=2, help="processes to start")
  parser.add_argument("-d", "--devices_per_process", type=int, default=None,
                      help="fake CPU devices per process (unset: the machine's own devices)")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping the others")
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  args = parser.parse_args(argv[:split])
  if args.num_processes < 1:
    parser.error(f"--num_processes={args.num_processes} must be >= 1.")
  if args.devices_per_process is not None and args.devices_per_process < 1:
    parser.error(f"--devices_per_process={args.devices_per_process} must be >= 1.")
  command = resolve_command(argv[split + 1:])
  port = args.port or free_port()

  job = Job(command, args.num_processes, args.devices_per_process, port, args.grace)

  def forward(signum, frame):
    del frame
    job.say(f"got {signal.Signals(signum).name}; passing SIGTERM to every process.")
    job.signal_all(signal.SIGTERM)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  return job.wait()


if __name__ == "__main__":
  sys.exit(main())
