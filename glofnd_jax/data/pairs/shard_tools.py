"""Tools over a whole shard set: check it against the index contract, and re-key it.

:func:`validate_shards` reports every violation of the contract of
:mod:`~glofnd_jax.data.pairs.contract` (missing, duplicate, out-of-range keys) with its shard and
sample, plus damaged shards (cut short, unreadable, not matching their manifest: each named with
the byte offset and the last good key), holes, unusable samples and, on request, bad images and
empty captions. :func:`rekey_shards` writes copies of shards in which every sample has a key; it
refuses damaged shards (it would silently drop the samples past the damage). They back the
commands ``glofnd-jax validate-shards`` (:func:`validate_main`) and ``glofnd-jax rekey-shards``
(:func:`rekey_main`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from glofnd_jax import arguments
from glofnd_jax.data.pairs.contract import MAX_KEY
from glofnd_jax.data.pairs.screening import screen_samples
from glofnd_jax.data.pairs.shards import (MISSING, ShardWriter, expand_shards, index_shards,
                                          int_field, iterate_samples)
from glofnd_jax.data.pairs.webdataset import WebDatasetPairSource


ISSUE_KINDS = ("damaged_shards", "missing_key", "duplicate_keys", "out_of_range", "unusable",
               "bad_images", "empty_captions")


def _hole_ranges(keys: np.ndarray, limit: int = 5) -> tuple[int, list[list[int]]]:
  """Number of missing keys below ``max(keys)`` and the first ``limit`` ``[start, end]`` runs."""
  present = np.unique(keys)
  if len(present) == 0:
    return 0, []
  missing = int(present[-1]) + 1 - len(present)
  runs = []
  previous = -1
  for key in present.tolist():
    if key > previous + 1 and len(runs) < limit:
      runs.append([previous + 1, key - 1])
    previous = key
  return missing, runs


def validate_shards(shards: str | Sequence[str], *, key_field: str = "key",
                    caption_field: str = "caption", label_field: str = "label",
                    data_size: int | None = None, verify_images: bool = False,
                    workers: int = 4, limit: int = 10) -> dict[str, Any]:
  """Checks a shard set against the index contract; reports every violation with its location.

  Args:
    shards: as :func:`expand_shards`.
    key_field, caption_field, label_field: the json fields.
    data_size: if given, keys must also be below it.
    verify_images: decode every image (slow: a full pass) and read every caption.
    workers: threads.
    limit: examples listed per kind of problem.

  Returns:
    A JSON-ready dict: ``num_shards``, ``num_samples``, ``data_size`` (max key + 1),
    ``num_holes`` and ``hole_ranges`` (first runs of missing keys), ``missing_key``,
    ``duplicate_keys``, ``out_of_range``, ``unusable`` (no image/caption, bad json),
    ``bad_images``, ``empty_captions`` (with ``verify_images``), ``damaged_shards``: each
    ``{"count", "examples"}`` with examples ``"shard ... sample ... key ..."``; ``per_shard``
    sample counts (the intact ones); and ``ok``: False when a shard is damaged or a key is
    missing, duplicated or out of range (training would refuse the set).
  """
  paths = expand_shards(shards)
  indexes = index_shards(paths, key_field=key_field, caption_field=caption_field,
                         label_field=label_field, index_dir=None, workers=workers)
  report: dict[str, Any] = {"num_shards": len(paths), "per_shard": {}}
  issues = {name: {"count": 0, "examples": []} for name in ISSUE_KINDS}

  def add(kind: str, text: str) -> None:
    issues[kind]["count"] += 1
    if len(issues[kind]["examples"]) < limit:
      issues[kind]["examples"].append(text)

  all_keys, where = [], []
  for index in indexes:
    report["per_shard"][index.shard] = len(index)
    if index.damage:
      add("damaged_shards", index.damage)
    for name, reason in index.problems:
      add("unusable", f"shard {index.shard} sample {name!r}: {reason}")
    for name, key in zip(index.names.tolist(), index.keys.tolist()):
      if key == MISSING:
        add("missing_key", f"shard {index.shard} sample {name!r}")
        continue
      limit_key = MAX_KEY if data_size is None else min(MAX_KEY, data_size - 1)
      if not 0 <= key <= limit_key:
        add("out_of_range", f"shard {index.shard} sample {name!r} key {key} outside "
            f"[0, {limit_key}]")
        continue
      all_keys.append(key)
      where.append((index.shard, name))
  keys = np.asarray(all_keys, np.int64)
  if len(keys):
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    for d in np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]).tolist():
      shard, name = where[int(order[d + 1])]
      first_shard, first_name = where[int(order[d])]
      add("duplicate_keys", f"key {int(sorted_keys[d])}: shard {shard} sample {name!r} repeats "
          f"shard {first_shard} sample {first_name!r}")
  report["num_samples"] = int(sum(len(i) for i in indexes))
  report["data_size"] = int(keys.max()) + 1 if len(keys) else 0
  report["num_holes"], report["hole_ranges"] = _hole_ranges(keys)

  if verify_images:
    try:
      source = WebDatasetPairSource(paths, key_field=key_field, caption_field=caption_field,
                                    label_field=label_field, workers=workers,
                                    on_damaged_shard="skip")
    except ValueError as error:
      report["verify_error"] = str(error)
    else:
      screened = screen_samples(source, on_bad_sample="skip", verify_images=True,
                                workers=workers, limit=limit)
      for kind in ("bad_images", "empty_captions"):
        issues[kind] = screened.report[kind]
      source.close()
  report.update(issues)
  report["ok"] = not (issues["missing_key"]["count"] or issues["duplicate_keys"]["count"]
                      or issues["out_of_range"]["count"] or issues["damaged_shards"]["count"])
  return report


def format_validation(report: dict[str, Any]) -> str:
  """A human-readable summary of :func:`validate_shards`' report."""
  lines = [f"{report['num_shards']} shard(s), {report['num_samples']} sample(s), data_size "
           f"{report['data_size']} (max key + 1), {report['num_holes']} hole(s)"
           + (f", first missing key ranges {report['hole_ranges']}" if report["num_holes"] else "")]
  for kind in ISSUE_KINDS:
    entry = report.get(kind, {"count": 0})
    if entry["count"]:
      lines.append(f"{kind}: {entry['count']}")
      lines.extend(f"  {example}" for example in entry["examples"])
  if "verify_error" in report:
    lines.append(f"image check not run: {report['verify_error']}")
  if report["ok"]:
    lines.append("OK: the shards satisfy the index contract.")
  elif report.get("damaged_shards", {"count": 0})["count"]:
    lines.append("NOT OK: damaged shard(s): copy them again from their source (rekey-shards "
                 "refuses them; training fails on them unless data.on_damaged_shard='skip').")
  else:
    lines.append("NOT OK: fix the keys with `glofnd-jax rekey-shards` (add --all to renumber).")
  return "\n".join(lines)

def rekey_shards(shards: str | Sequence[str], out_dir: str | os.PathLike, *,
                 key_field: str = "key", renumber_all: bool = False,
                 start: int | None = None) -> dict[str, Any]:
  """Writes copies of ``shards`` into ``out_dir`` in which every sample has a key.

  Samples are visited in shard order, then tar order. With ``renumber_all=False`` samples that
  already have an integer key keep it and the others get new keys counting up from ``start``
  (default: one past the largest existing key, so no key repeats); with ``renumber_all`` every
  sample is renumbered ``start, start + 1, ...`` (default 0): contiguous, no holes. A sample with
  only a ``.txt`` caption gains a ``.json`` holding just the key. The inputs are never modified.

  Returns:
    ``{"num_samples", "num_rekeyed", "first_new_key", "data_size", "shards": [out paths]}``.

  Raises:
    ValueError: when ``out_dir`` holds an input shard (no in-place rewrite), when an input shard
      is damaged (every one is named: the samples past the damage would be lost), or when
      keeping the existing keys would leave duplicates (use ``renumber_all``).
  """
  paths = expand_shards(shards)
  out_dir = pathlib.Path(out_dir)
  out_paths = [out_dir / pathlib.Path(p).name for p in paths]
  if len(set(out_paths)) != len(out_paths):
    raise ValueError("two input shards share a file name; rekey them into separate directories.")
  inputs = {os.path.abspath(p) for p in paths}
  for out in out_paths:
    if os.path.abspath(out) in inputs:
      raise ValueError(f"{out} is an input shard: choose an out_dir other than the shards' own "
                       "directory (the inputs are never overwritten).")
  indexes = index_shards(paths, key_field=key_field, caption_field="", label_field="")
  damaged = [index.damage for index in indexes if index.damage]
  if damaged:
    raise ValueError(f"{len(damaged)} input shard(s) are damaged, and re-keying would drop the "
                     f"samples past the damage: {'; '.join(damaged)}. Copy them again from their "
                     "source first.")
  existing = []
  if not renumber_all:
    for index in indexes:
      existing.extend(int(k) for k in index.keys if 0 <= k <= MAX_KEY)
    if len(existing) != len(set(existing)):
      raise ValueError("the shards already contain duplicate keys; renumber every sample with "
                       "renumber_all=True (--all).")
  if start is not None and existing and start <= max(existing):
    raise ValueError(f"start={start} would repeat existing keys (the largest is {max(existing)}); "
                     "leave start unset, or renumber every sample with renumber_all=True (--all).")
  next_key = start if start is not None else (max(existing) + 1 if existing else 0)
  first_new, rekeyed, total, keys = next_key, 0, 0, list(existing)
  for path, out in zip(paths, out_paths):
    with ShardWriter(out) as writer:
      for name, members in iterate_samples(path):
        obj = {}
        if "json" in members:
          try:
            obj = json.loads(members["json"])
          except ValueError:
            obj = {}
        key, problem = int_field(obj, key_field)
        if renumber_all or not 0 <= key <= MAX_KEY or problem:
          obj[key_field] = next_key
          keys.append(next_key)
          next_key += 1
          rekeyed += 1
        members = dict(members)
        members["json"] = json.dumps(obj, sort_keys=True).encode()
        writer.write(name, members)
        total += 1
  expected = sum(len(index) for index in indexes)
  if total != expected:  # never drop a sample silently
    raise ValueError(f"re-keying wrote {total} samples but the inputs' index has {expected}; the "
                     f"inputs changed while being read: run it again.")
  return {"num_samples": total, "num_rekeyed": rekeyed, "first_new_key": first_new,
          "data_size": (max(keys) + 1) if keys else 0, "shards": [str(p) for p in out_paths]}


# ----------------------------------------------------------------------------- commands


def _parser(command: str, description: str, shards_help: str) -> argparse.ArgumentParser:
  """What both commands take: a shard pattern and the json key field."""
  parser = arguments.ArgumentParser(prog=f"glofnd-jax {command}", description=description)
  parser.add_argument("shards", help=shards_help)
  parser.add_argument("--key-field", default="key")
  return parser


def _attempt(run: Callable[[], Any]) -> tuple[Any, int]:
  """``(run(), 0)``, or ``(None, 2)`` after printing the one-line error of a bad shard set."""
  try:
    return run(), 0
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}")
    return None, 2


def validate_main(argv: Sequence[str] | None = None) -> int:
  """``glofnd-jax validate-shards PATTERN``: exit status 1 when a shard is damaged or the index
  contract is broken."""
  parser = _parser(
      "validate-shards",
      "Check webdataset shards for damage (cut short, unreadable, not matching their manifest) "
      "and against the index contract (unique integer keys, in range), and report holes, "
      "unusable samples and (--verify-images) bad images and empty captions, each with its shard "
      "and key.",
      "shard pattern: 'data/{00000..00009}.tar', 'data/*.tar'")
  parser.add_argument("--caption-field", default="caption")
  parser.add_argument("--label-field", default="label")
  parser.add_argument("--data-size", type=int, default=None, help="keys must be below this")
  parser.add_argument("--verify-images", action="store_true", help="decode every image (slow)")
  parser.add_argument("--workers", type=int, default=4)
  parser.add_argument("--json", default=None, help="also write the full report to this file")
  args = parser.parse_args(argv)
  report, failed = _attempt(lambda: validate_shards(
      args.shards, key_field=args.key_field, caption_field=args.caption_field,
      label_field=args.label_field, data_size=args.data_size, verify_images=args.verify_images,
      workers=args.workers))
  if failed:
    return failed
  print(format_validation(report))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
  return 0 if report["ok"] else 1


def rekey_main(argv: Sequence[str] | None = None) -> int:
  """``glofnd-jax rekey-shards PATTERN OUT_DIR [--all]``."""
  parser = _parser(
      "rekey-shards",
      "Write copies of webdataset shards in which every sample's json has an integer key (its "
      "global index). Samples lacking one get new keys after the largest existing key; --all "
      "renumbers every sample 0, 1, ... (no holes).",
      "shard pattern, e.g. 'raw/{00000..00009}.tar'")
  parser.add_argument("out_dir", help="directory for the rewritten shards (not the inputs')")
  parser.add_argument("--all", action="store_true", help="renumber every sample")
  parser.add_argument("--start", type=int, default=None, help="first new key")
  args = parser.parse_args(argv)
  summary, failed = _attempt(lambda: rekey_shards(
      args.shards, args.out_dir, key_field=args.key_field, renumber_all=args.all,
      start=args.start))
  if failed:
    return failed
  print(f"wrote {len(summary['shards'])} shard(s) to {args.out_dir}: {summary['num_samples']} "
        f"samples, {summary['num_rekeyed']} given new keys (from {summary['first_new_key']}), "
        f"data_size {summary['data_size']}")
  return 0
