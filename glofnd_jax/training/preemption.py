"""A preemption notice (SIGTERM) turned into a checkpoint at the next step boundary and exit 0.

Clusters announce the end of a job with SIGTERM: SLURM at preemption or ``--signal=TERM@secs``
before the time limit, Kubernetes/GKE before evicting a pod, GCE and Cloud TPU VMs (spot
preemption, maintenance) at shutdown. The default action kills the process mid-step and loses
everything since the last periodic checkpoint. :class:`PreemptionGuard` instead records the
notice; the train loop asks :meth:`PreemptionGuard.should_stop` after every step, saves a
checkpoint at that step boundary and exits with status 0, and the next run resumes from it
exactly.

Two ways of hearing the notice, picked when the guard is entered:

* **One process** (``jax.distributed`` not started): a Python handler for SIGTERM sets a flag.
  The step at which the run stops is simply the next one to finish.
* **Several processes** (``jax.distributed`` started, the preemption service on, as by default):
  jax's own preemption notifier (XLA's, started by ``jax.distributed.initialize``) already
  listens for SIGTERM and spreads the notice to every process through the coordination
  service. All processes must stop at the *same* step, or the collective checkpoint save would
  hang: each calls ``multihost_utils.reached_preemption_sync_point(step)`` every step (the
  mechanism behind orbax's and maxtext's preemption checkpoints), and the processes agree on the
  first step after every one of them has heard the notice. No Python handler is installed
  there: it would replace jax's, and the notice would not spread.
"""

from __future__ import annotations

import signal
import threading
from typing import Sequence

import jax


def _sync_service_available() -> bool:
  """True when ``jax.distributed`` runs with its preemption service (several processes)."""
  if not jax.distributed.is_initialized():
    return False
  return bool(jax.config.jax_enable_preemption_service)


class PreemptionGuard:
  """Context manager: while active, a preemption notice makes :meth:`should_stop` true.

  Usage::

    with PreemptionGuard() as guard:
      for step in range(first, last):
        state = train_step(state, ...)
        if guard.should_stop(step + 1):   # same step numbering on every process
          save(step + 1, state)
          break

  Args:
    signals: signals that mean "stop soon" in the single-process case (default SIGTERM; add
      ``signal.SIGUSR1`` for clusters configured to send that). With several processes only
      SIGTERM is heard, by jax's notifier.

  Attributes:
    mode: ``"signal"`` (Python handler), ``"sync"`` (jax preemption sync), or ``"off"`` (not in
      the main thread: Python only delivers signals there, so nothing is installed).
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,)):
    self._signals = tuple(signals)
    self._previous: dict[int, object] = {}
    self._received: int | None = None
    self.mode = "off"

  def install(self) -> "PreemptionGuard":
    """Start listening (see the class docstring for the two modes)."""
    if _sync_service_available():
      self.mode = "sync"
    elif threading.current_thread() is threading.main_thread():
      self.mode = "signal"
      for signum in self._signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def uninstall(self) -> None:
    """Put the previous signal handlers back (a later SIGTERM acts as before)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def __enter__(self) -> "PreemptionGuard":
    return self.install()

  def __exit__(self, *exc_info) -> None:
    self.uninstall()

  def _handle(self, signum: int, frame) -> None:
    del frame  # only a flag is set here; the loop acts on it at the next step boundary
    self._received = signum

  def request_stop(self) -> None:
    """Ask for a stop as if a signal had arrived (single process; for tools and tests)."""
    self._received = signal.SIGTERM

  @property
  def reason(self) -> str:
    """What asked for the stop, for the log."""
    if self._received is not None:
      return signal.Signals(self._received).name
    return "preemption notice" if self.mode == "sync" else "nothing"

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after ``step``; call it after every step with its number.

    In ``"sync"`` mode this takes part in the processes' agreement on the step and must be
    called at every step by every process, with the same numbers.
    """
    if self.mode == "sync":
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self._received is not None
