"""The runs of a study: a store of finished runs, and running the rest N at a time.

A run is a name (its work dir under the study's cache) and the keyword arguments of
``quality_study.make_config`` (plain JSON, so a child process rebuilds exactly the same config).

The store is a folder of ``<run name>.json`` files, each ``{"run", "config", "results"}``: the
run's full config dict (its fingerprint) and its ``results.json``, nothing large. It is small
enough to commit, so a study stopped on one machine continues on another. A run is taken, in
order, from the store (same config), from a finished work dir in the cache (then copied into the
store: a cache made before the store existed is imported without retraining), or trained.

With ``jobs > 1`` each run trains in its own Python process (JAX's state is per process), its
output in ``<work dir>/study_run.log``; ``python study_runs.py WORKDIR`` is that child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys
import time

from glofnd_jax.evaluation import read_results
from glofnd_jax.training import loop

REQUEST_FILE = "study_run.json"  # the child's make_config arguments, in its work dir
LOG_FILE = "study_run.log"
EXIT_TIME_LIMIT = 3  # the study stopped at --time-limit; the finished runs are in the store


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  settings: dict  # quality_study.make_config's keyword arguments
  config: object  # the ml_collections.ConfigDict they make

  def fingerprint(self) -> dict:
    return json.loads(self.config.to_json_best_effort())


def flatten(tree: dict, prefix: str = "") -> dict:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: config fields by their dotted names."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def differing_fields(stored: dict, wanted: dict, ignore=()) -> list[str]:
  """The config fields (dotted) where ``stored`` and ``wanted`` differ, except ``ignore``'s."""
  a, b = flatten(stored), flatten(wanted)
  missing = object()
  return [f"{k} (stored {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r})"
          for k in sorted(a.keys() | b.keys())
          if k not in ignore and a.get(k, missing) != b.get(k, missing)]


def mismatch_fix(differences: list[str]) -> str:
  if all("stored '<absent>'" in d for d in differences):  # fields added to the config since
    names = " ".join(f"--ignore-field {d.split()[0]}" for d in differences)
    return (f"; or, if the code that made it lacked only these fields and their defaults keep "
            f"its behaviour, pass {names}")
  return ""


class Store:
  """Finished runs' results keyed by run name, each checked against its config."""

  def __init__(self, directory: pathlib.Path):
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)

  def path(self, name: str) -> pathlib.Path:
    return self.directory / f"{name}.json"

  def get(self, name: str, fingerprint: dict, ignore=()) -> dict | None:
    """The stored results of run ``name``, None if absent; a stored run of another config is an
    error naming the fields that differ (``ignore``: fields left out of the comparison)."""
    path = self.path(name)
    if not path.exists():
      return None
    entry = json.loads(path.read_text())
    differences = differing_fields(entry["config"], fingerprint, ignore)
    if differences:
      raise SystemExit(f"store entry {path} holds run {name} of another config "
                       f"({'; '.join(differences)}): delete that entry to recompute the run, or "
                       f"use another --store{mismatch_fix(differences)}.")
    return entry["results"]

  def put(self, name: str, fingerprint: dict, results: dict, **notes) -> None:
    path = self.path(name)
    tmp = path.with_name(path.name + ".tmp")  # written whole or not at all: a kill leaves none
    entry = {"run": name, "config": fingerprint, "results": results, **notes}
    tmp.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)

  def names(self) -> list[str]:
    return sorted(p.stem for p in self.directory.glob("*.json"))


def finished_in_cache(workdir: pathlib.Path, fingerprint: dict, ignore=()) -> dict | None:
  """``results.json`` of a finished run in ``workdir``, None if it has not finished."""
  results_file = workdir / "results.json"
  if not results_file.exists():
    return None
  written = json.loads((workdir / loop.CONFIG_FILE).read_text())
  differences = differing_fields(written, fingerprint, ignore)
  if differences:
    raise SystemExit(f"{workdir} holds a finished run of another config (its config.json "
                     f"differs: {'; '.join(differences)}): use another --cache, or delete that "
                     f"run to recompute it{mismatch_fix(differences)}.")
  return read_results(results_file)


def import_from_cache(run: Run, cache: pathlib.Path, store: Store, ignore) -> dict | None:
  """A run finished in the cache but not stored (e.g. before the store existed) is stored."""
  workdir = cache / run.name
  results = finished_in_cache(workdir, run.fingerprint(), ignore)
  if results is not None:
    written = json.loads((workdir / loop.CONFIG_FILE).read_text())
    ignored = [d for d in differing_fields(written, run.fingerprint()) if d.split()[0] in ignore]
    store.put(run.name, run.fingerprint(), results,
              **({"imported_ignoring": ignored} if ignored else {}))
  return results


def train_here(run: Run, workdir: pathlib.Path, log) -> dict:
  start = time.time()
  with contextlib.redirect_stdout(io.StringIO()) as captured:
    loop.train_and_evaluate(run.config, workdir)
  (workdir / "train_stdout.txt").write_text(captured.getvalue())
  results = read_results(workdir / "results.json")  # as a child's: what the file holds
  log(f"  {run.name}: {time.time() - start:.0f} s, kNN {results['knn']['top1']:.4f}")
  return results


def child_env(jobs: int) -> dict:
  """Each child may take ~0.9/jobs of a GPU's memory, allocated as needed (these variables only
  matter to a GPU backend)."""
  return dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
              XLA_PYTHON_CLIENT_MEM_FRACTION=f"{0.9 / jobs:.3f}", PYTHONUNBUFFERED="1")


def start_child(run: Run, workdir: pathlib.Path, env: dict) -> subprocess.Popen:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / REQUEST_FILE).write_text(json.dumps(run.settings, indent=1) + "\n")
  with (workdir / LOG_FILE).open("w") as log_file:
    return subprocess.Popen([sys.executable, str(pathlib.Path(__file__).resolve()), str(workdir)],
                            stdout=log_file, stderr=subprocess.STDOUT, env=env)


def collect_child(run: Run, workdir: pathlib.Path, returncode: int) -> dict:
  results = finished_in_cache(workdir, run.fingerprint()) if returncode == 0 else None
  if results is None:
    raise SystemExit(f"run {run.name} failed (exit status {returncode}, no results.json): "
                     f"see {workdir / LOG_FILE}")
  return results


def train_in_children(runs: list[Run], cache: pathlib.Path, store: Store, jobs: int, log,
                      deadline: float | None) -> None:
  """Train ``runs`` ``jobs`` at a time, each finished one going into the store at once."""
  env, pending, running = child_env(jobs), list(runs), {}
  try:
    while pending or running:
      if deadline is not None and time.time() > deadline:
        stop_at_time_limit(len(pending) + len(running), log)
      while pending and len(running) < jobs:
        run = pending.pop(0)
        running[run.name] = (run, start_child(run, cache / run.name, env), time.time())
      for name, (run, process, started) in list(running.items()):
        if process.poll() is not None:
          del running[name]
          results = collect_child(run, cache / name, process.returncode)
          store.put(name, run.fingerprint(), results)
          log(f"  {name}: {time.time() - started:.0f} s, kNN {results['knn']['top1']:.4f}")
      time.sleep(0.5)
  finally:  # a failure or the time limit: no child outlives the study
    for _, process, _ in running.values():
      process.terminate()  # the run's preemption guard may save a checkpoint first
    for _, process, _ in running.values():
      try:
        process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_at_time_limit(unfinished: int, log) -> None:
  log(f"time limit reached: {unfinished} run(s) of this phase not finished; the finished runs "
      "are in the store: run the same command again (with the same --store) to continue.")
  raise SystemExit(EXIT_TIME_LIMIT)


def results_of(runs: list[Run], *, cache: pathlib.Path, store: Store, jobs: int = 1, log=print,
               deadline: float | None = None, ignore=()) -> dict:
  """``{run name: results}`` of ``runs``, in their order: stored, found in the cache, or trained
  (``deadline``: a ``time.time()`` after which no run starts and running ones are stopped;
  ``ignore``: config fields a stored or cached run may lack)."""
  found = {}
  for run in runs:
    results = store.get(run.name, run.fingerprint(), ignore)
    if results is None:
      results = import_from_cache(run, cache, store, ignore)
    if results is not None:
      found[run.name] = results
  todo = [run for run in runs if run.name not in found]
  log(f"{len(found)} of {len(runs)} runs of this phase done before; {len(todo)} to train")
  if jobs > 1:
    train_in_children(todo, cache, store, jobs, log, deadline)
  for run in todo:
    if jobs == 1:
      if deadline is not None and time.time() > deadline:
        stop_at_time_limit(len(todo) - todo.index(run), log)
      store.put(run.name, run.fingerprint(), train_here(run, cache / run.name, log))
    found[run.name] = store.get(run.name, run.fingerprint())
  return {run.name: found[run.name] for run in runs}


def child_main(workdir: pathlib.Path) -> None:
  """Train and evaluate the run whose request is in ``workdir`` (the parent reads the results)."""
  import quality_study  # here, not at the top: quality_study imports this module
  settings = json.loads((workdir / REQUEST_FILE).read_text())
  loop.train_and_evaluate(quality_study.make_config(**settings), workdir)


if __name__ == "__main__":
  child_main(pathlib.Path(sys.argv[1]))
