"""End-of-run evaluation of a trained unimodal model (``glofnd-jax eval`` and after training).

With the frozen encoder on un-augmented images (:func:`glofnd_jax.augment.eval_view`):
weighted kNN and linear probes (label fractions, C chosen on the validation split) on backbone
features; false-negative precision/recall of the learned thresholds ``s_ij > lambda_i`` and the
error of lambda against the exact dataset-wide (1 - alpha) quantile, both on projection
features (the space lambda lives in) of the training split; and the detector's precision/recall
during the last training epoch (any mode). Nothing is selected on the test split. Writes
``results.json``, prints the table, and (GloFND modes) draws ``false_negatives.png``: a few
training anchors beside their most similar flagged and kept negatives, from the same projection
features and thresholds (:mod:`~glofnd_jax.evaluation.fn_examples`). Records that do not decode
follow ``data.on_bad_sample`` as in training (:mod:`~glofnd_jax.data.bad_records`): with
``'skip'`` their stand-ins are embedded and ``meta.train_bad_samples`` / ``eval_bad_samples``
list them.
"""

from __future__ import annotations

import numpy as np

from glofnd_jax import augment as augment_lib
from glofnd_jax import data
from glofnd_jax import evaluation as ev
from glofnd_jax.data import bad_records
from glofnd_jax.data.pipeline import decode_stage
from glofnd_jax.evaluation.features import state_variables
from glofnd_jax.evaluation.fn_examples import select_examples
from glofnd_jax.models.encoder import Encoder
from glofnd_jax.training.plots import FALSE_NEGATIVES_PLOT, draw_false_negatives


def _policy(config) -> str:
  return config.data.get("on_bad_sample", "fail")  # workdirs saved before the key: fail


def bad_record_log(run, source, split: str) -> bad_records.BadRecordLog:
  """The log of ``split``'s records replaced by stand-ins in an evaluation pass."""
  d = run.config.data
  stage = decode_stage(image_size=d.image_size, channels=d.channels)
  return bad_records.BadRecordLog(source, split, stage.decode)


def run_features(run, state, source, log: bad_records.BadRecordLog | None = None):
  """Backbone features, projections, labels of every record of ``source`` (source order);
  ``log`` notes the records replaced by stand-ins (``data.on_bad_sample='skip'``)."""
  c = run.config

  def embed(variables, images):
    views = augment_lib.eval_view(images, run.augment)
    return run.model.apply(variables, views, train=False, method=Encoder.features_and_projections)

  iterator = data.make_iterator(source, global_batch_size=c.eval.batch_size, shuffle=False,
                                drop_remainder=False, num_epochs=1, image_size=c.data.image_size,
                                channels=c.data.channels, on_bad_sample=_policy(c),
                                process_index=0, process_count=1)
  (feats, projs), fields = ev.extract_features(
      embed, state_variables(state), iterator, inputs=("image",),
      carry=("label", "index", bad_records.FLAG))
  if log is not None:
    log.note(fields)
  order = np.argsort(fields["index"])
  return feats[order], projs[order], fields["label"][order]


def _transfer_spec(spec: str) -> tuple[str, str, str]:
  parts = spec.rsplit(":", 2)
  if len(parts) != 3 or not all(parts):
    raise ValueError(f"config.eval.transfer entry {spec!r} must read 'name:train_split:test_split'"
                     ", e.g. 'tfds:cifar100:train:test'.")
  return parts[0], parts[1], parts[2]


def _open(run, name: str, split: str):
  d = run.config.data
  return data.get_source(name, split, data_dir=d.data_dir or None, workdir=run.workdir)


def draw_examples(run, projections, labels, lam):
  """``false_negatives.png`` of the run from the evaluation's training-split projections and
  thresholds; returns its path (None when no anchor has a flagged negative)."""
  c = run.config
  pairs = select_examples(projections, lam, labels, seed=c.seed)
  decode = decode_stage(image_size=c.data.image_size, channels=c.data.channels,
                        on_bad_sample=_policy(c))

  def image(index):  # as the model saw it, before augmentation (a stand-in if it is one)
    return decode({**run.source[index], "index": index})["image"]

  return draw_false_negatives(run.workdir / FALSE_NEGATIVES_PLOT, pairs, image, image,
                              title=f"false negatives, {c.data.name} {c.data.train_split}")


def evaluate_run(run, state) -> dict:
  """Evaluate ``state`` of ``run`` (a :class:`~glofnd_jax.training.unimodal.UnimodalRun`); write and
  print results."""
  c = run.config
  # Training's log: a record it already named is not named again.
  train_log = getattr(run, "bad_records", None) or bad_record_log(run, run.source,
                                                                  c.data.train_split)
  train_h, train_z, train_y = run_features(run, state, run.source, train_log)
  test_source = run.open_split(c.data.test_split)
  eval_logs = [bad_record_log(run, test_source, c.data.test_split)]
  test_h, _, test_y = run_features(run, state, test_source, eval_logs[-1])
  val = {}
  if c.data.val_split:
    val_source = run.open_split(c.data.val_split)
    eval_logs.append(bad_record_log(run, val_source, c.data.val_split))
    val_h, _, val_y = run_features(run, state, val_source, eval_logs[-1])
    val = {"val_features": val_h, "val_labels": val_y}
  else:
    val = {"val_fraction": c.eval.val_fraction}

  knn = ev.knn_classify(train_h, train_y, test_h, test_y, k=c.eval.knn_k,
                        temperature=c.eval.knn_temperature)
  probe = ev.linear_probe_fractions(train_h, train_y, test_h, test_y,
                                    fractions=tuple(c.eval.probe_fractions), seed=c.seed, **val)
  transfer = {}
  for spec in c.eval.transfer:
    name, train_split, test_split = _transfer_spec(spec)
    x_train, _, y_train = run_features(run, state, _open(run, name, train_split))
    x_test, _, y_test = run_features(run, state, _open(run, name, test_split))
    transfer[name] = ev.transfer(x_train, y_train, x_test, y_test,
                                 val_fraction=c.eval.val_fraction, seed=c.seed)
  false_negatives, lam_error = None, None
  if c.glofnd.mode in ("glofnd", "glofnd_shared"):
    lam = ev.per_sample_lambda(state.per_sample.thresholds[0].lam, run.num_samples)
    anchors = None
    if run.num_samples > c.eval.max_quantile_samples:
      rng = np.random.default_rng(c.seed)
      anchors = np.sort(rng.choice(run.num_samples, c.eval.max_quantile_samples, replace=False))
    false_negatives = ev.false_negative_precision_recall(train_z, train_y, lam, anchors=anchors)
    if c.eval.quantile and anchors is None:
      exact = ev.dataset_quantile(train_z, c.glofnd.alpha)
      lam_error = ev.lambda_error(lam, exact)
  results = ev.build_results(
      knn=knn, linear_probe=probe, transfer=transfer or None, false_negatives=false_negatives,
      lambda_error=lam_error,
      meta={"config": c.to_dict(), "num_train": int(len(train_y)), "num_test": int(len(test_y)),
            "train_bad_samples": train_log.section(),
            "eval_bad_samples": bad_records.merged_section(eval_logs),
            "train_detector_last_epoch": ev.last_epoch_detector(
                run.workdir, run.steps_per_epoch, sides=run.detector_sides)})
  ev.write_and_print(results, run.workdir)
  if false_negatives is not None:
    draw_examples(run, train_z, train_y, lam)
  return results
