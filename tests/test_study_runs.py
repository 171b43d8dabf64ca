"""The study store (``benchmarks/study_runs.py``): reuse, config checks, import from a cache.

No training: every run here is already finished (in the store or in a cache work dir), and
``deadline=0`` makes ``results_of`` stop with the time-limit exit instead of training one. The
one child process started is a run that fails at once.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import quality_study  # benchmarks/ is on the path (pyproject: pytest pythonpath)
import study_runs

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_sogclr_glofnd.py"


def make_run(arm: str = "glofnd", seed: int = 0, alpha: float = 0.05) -> study_runs.Run:
  return quality_study.make_run(f"{arm}_seed{seed}", config_path=CONFIG, arm=arm, seed=seed,
                                alpha=alpha, start=1, epochs=2, on_validation=False)


def fake_results(knn: float) -> dict:
  return {"knn": {"top1": knn}, "linear_probe": {}}


def test_same_config_is_reused(tmp_path):
  store, run = study_runs.Store(tmp_path / "store"), make_run()
  assert store.get(run.name, run.fingerprint()) is None
  store.put(run.name, run.fingerprint(), fake_results(0.5))
  assert store.get(run.name, make_run().fingerprint()) == fake_results(0.5)
  assert store.names() == [run.name]


def test_another_config_is_an_error_naming_the_field(tmp_path):
  store, run = study_runs.Store(tmp_path), make_run(alpha=0.05)
  store.put(run.name, run.fingerprint(), fake_results(0.5))
  other = make_run(alpha=0.1)
  with pytest.raises(SystemExit, match=r"glofnd\.alpha \(stored 0\.05, now 0\.1\).*delete that "
                                       r"entry.*another --store"):
    store.get(other.name, other.fingerprint())
  assert store.get(other.name, other.fingerprint(), ignore=("glofnd.alpha",)) is not None


def test_results_come_in_the_runs_order_without_training(tmp_path):
  store = study_runs.Store(tmp_path / "store")
  runs = [make_run(arm, seed) for seed in (0, 1) for arm in ("none", "glofnd")]
  for k, run in enumerate(reversed(runs)):  # stored in another order than asked
    store.put(run.name, run.fingerprint(), fake_results(k / 10))
  got = study_runs.results_of(runs, cache=tmp_path / "cache", store=store, jobs=2,
                              log=lambda line: None, deadline=0.0)
  assert list(got) == [run.name for run in runs]
  assert [r["knn"]["top1"] for r in got.values()] == [0.3, 0.2, 0.1, 0.0]


def test_a_finished_cache_run_is_imported_and_a_new_field_named(tmp_path):
  run = make_run()
  workdir = tmp_path / "cache" / run.name
  workdir.mkdir(parents=True)
  older = run.fingerprint()
  del older["glofnd"]["treatment"]  # as if made before that field existed
  (workdir / "config.json").write_text(json.dumps(older))
  (workdir / "results.json").write_text(json.dumps(fake_results(0.7)))
  store = study_runs.Store(tmp_path / "store")
  with pytest.raises(SystemExit, match=r"glofnd\.treatment \(stored '<absent>', now 'remove'\)"
                                       r".*--ignore-field glofnd\.treatment"):
    study_runs.results_of([run], cache=tmp_path / "cache", store=store, log=lambda line: None)
  got = study_runs.results_of([run], cache=tmp_path / "cache", store=store,
                              log=lambda line: None, ignore=("glofnd.treatment",))
  assert got == {run.name: fake_results(0.7)}
  entry = json.loads(store.path(run.name).read_text())
  assert entry["config"] == run.fingerprint() and entry["imported_ignoring"]
  assert store.get(run.name, run.fingerprint()) == fake_results(0.7)  # later: no flag needed


def test_a_failed_child_names_the_run_and_its_log(tmp_path):
  good = make_run()
  broken = study_runs.Run("broken_seed0", {**good.settings, "config_path": str(tmp_path / "no.py")},
                          good.config)
  store = study_runs.Store(tmp_path / "store")
  with pytest.raises(SystemExit, match=r"run broken_seed0 failed \(exit status 1, no "
                                       r"results.json\): see .*broken_seed0/study_run.log"):
    study_runs.results_of([broken], cache=tmp_path / "cache", store=store, jobs=2,
                          log=lambda line: None)
  assert "no.py" in (tmp_path / "cache" / "broken_seed0" / study_runs.LOG_FILE).read_text()
  assert store.names() == []
