"""Bad-sample screening: found once per source before training, then skipped or fatal.

A sample is bad when its caption is empty, its image does not decode (with ``verify_images``),
or it has no image or caption at all (a source's ``problems``). ``on_bad_sample='skip'`` leaves
them out and counts them (their keys become holes); ``'fail'`` raises an error naming the shard
and key. Screening happens before training because batches have a fixed size: a sample cannot be
dropped from a batch mid-run. Without ``verify_images`` an image that fails to decode during
training raises an error naming its shard and key (:mod:`glofnd_jax.data.pairs.pipeline`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
from typing import Any

import numpy as np

from glofnd_jax.data.decode import decode_image
from glofnd_jax.data.pairs.contract import PairSubset

BAD_SAMPLE_POLICIES = ("skip", "fail")


@dataclasses.dataclass
class Screened:
  """Result of :func:`screen_samples`.

  Attributes:
    source: the usable samples (a :class:`PairSubset`, or the input when all are usable).
    report: ``{"num_samples", "num_kept", "unusable", "empty_captions", "bad_images"}``; each of
      the last three ``{"count", "examples"}`` with examples naming shard and key.
  """

  source: Any
  report: dict


def _check_one(source, position: int, verify_images: bool) -> str | None:
  """Why sample ``position`` is bad (``'empty_captions'`` / ``'bad_images'``), or None."""
  try:
    caption = source.read_caption(position)
  except (ValueError, UnicodeDecodeError):
    caption = ""
  if not caption:
    return "empty_captions"
  if verify_images:
    try:
      decode_image(source.read_image(position))
    except Exception:  # pylint: disable=broad-except  (Pillow raises many kinds)
      return "bad_images"
  return None


def screen_samples(source, *, on_bad_sample: str = "skip", verify_images: bool = True,
                   workers: int = 4, limit: int = 10,
                   cache_dir: str | os.PathLike | None = None) -> Screened:
  """Finds bad samples (empty caption, undecodable image, unusable structure); skips or fails.

  Args:
    source: a pair source.
    on_bad_sample: ``'skip'``: leave bad samples out (their keys become holes) and count them;
      ``'fail'``: raise ``ValueError`` naming the first bad sample's shard and key.
    verify_images: decode every image (one full pass over the data; cached). Captions are always
      checked.
    workers: threads.
    limit: examples kept per kind in the report.
    cache_dir: where the result is cached, keyed by ``source.fingerprint()`` and the settings.

  Returns:
    :class:`Screened`.
  """
  if on_bad_sample not in BAD_SAMPLE_POLICIES:
    raise ValueError(f"data.on_bad_sample={on_bad_sample!r} is invalid: use 'skip' or 'fail'.")
  unusable = [f"shard {shard} sample {name!r}: {reason}"
              for shard, name, reason in getattr(source, "problems", [])]
  if unusable and on_bad_sample == "fail":
    raise ValueError(f"{len(unusable)} unusable sample(s), e.g. {unusable[0]} "
                     "(data.on_bad_sample='fail'; set it to 'skip' to leave them out).")
  cache = None
  if cache_dir is not None:
    name = hashlib.sha1(f"{source.fingerprint()}:{verify_images}".encode()).hexdigest()
    cache = pathlib.Path(cache_dir) / f"screen_{name}.npz"
  bad_positions, kinds = None, None
  if cache is not None and cache.exists():
    with np.load(cache) as data:
      bad_positions, kinds = data["positions"], data["kinds"].tolist()
  if bad_positions is None:
    check = lambda i: _check_one(source, i, verify_images)
    if workers > 1:
      with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        verdicts = list(pool.map(check, range(len(source))))
    else:
      verdicts = [check(i) for i in range(len(source))]
    bad_positions = np.asarray([i for i, v in enumerate(verdicts) if v], np.int64)
    kinds = [v for v in verdicts if v]
    if cache is not None:
      cache.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache.with_name(cache.name + f".tmp{os.getpid()}.npz")
      np.savez(tmp, positions=bad_positions, kinds=np.asarray(kinds, dtype=str))
      os.replace(tmp, cache)
  report = {"num_samples": len(source) + len(unusable),
            "unusable": {"count": len(unusable), "examples": unusable[:limit]}}
  for kind in ("empty_captions", "bad_images"):
    where = [int(p) for p, k in zip(bad_positions.tolist(), kinds) if k == kind]
    report[kind] = {"count": len(where), "examples": [source.describe(p) for p in where[:limit]]}
  if len(bad_positions) and on_bad_sample == "fail":
    first = int(bad_positions[0])
    what = "an empty caption" if kinds[0] == "empty_captions" else "an image that does not decode"
    raise ValueError(f"{source.describe(first)} has {what} ({len(bad_positions)} bad sample(s) "
                     "in all; data.on_bad_sample='fail'; set it to 'skip' to leave them out).")
  report["num_kept"] = len(source) - len(bad_positions)
  if report["num_kept"] == 0:
    raise ValueError(f"every sample is bad ({report}); check the data.")
  if len(bad_positions) == 0:
    return Screened(source, report)
  keep = np.ones(len(source), bool)
  keep[bad_positions] = False
  return Screened(PairSubset(source, np.flatnonzero(keep)), report)
