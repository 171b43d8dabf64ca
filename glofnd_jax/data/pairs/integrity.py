"""Damaged shards: a tar cut short or unreadable, and the manifest that says how many samples it had.

Python's ``tarfile`` stops reading at the first header it cannot parse *without an error*, so a
shard cut by a failed copy or a full disk reads as a shorter, valid-looking shard. This module
finds the damage while the shard is indexed (:func:`~glofnd_jax.data.pairs.shards.index_shard`):

* a member whose data runs past the end of the file (cut mid-member);
* a file that ends without the tar end-of-archive marker (cut between members) or with a
  partial or unparsable header (an unreadable member);
* a shard whose sample count or size differs from its **manifest**, ``<shard>.manifest.json``
  (``{"samples": S, "bytes": B}``), written next to every shard by
  :class:`~glofnd_jax.data.pairs.shards.ShardWriter` (``rekey-shards`` and the digits captions
  use it): a set that lost samples, even as whole well-formed members, is noticed at start;
* for shards without a manifest, a run's first start records every shard's sample count in its
  index directory (:func:`check_counts_record`); a later start (a resume) on a shard with fewer
  samples is told so.

What a damaged shard means for training is ``data.on_damaged_shard``: ``"fail"`` (default) or
``"skip"`` (train on its intact samples, reported at start and in ``results.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tarfile
from typing import Sequence

DAMAGED_SHARD_POLICIES = ("fail", "skip")
MANIFEST_SUFFIX = ".manifest.json"
_BLOCK = tarfile.BLOCKSIZE


def manifest_path(shard: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(f"{shard}{MANIFEST_SUFFIX}")


def write_manifest(shard: str | os.PathLike, num_samples: int) -> None:
  """Record ``shard``'s sample count and size next to it (atomically)."""
  path = manifest_path(shard)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps({"samples": int(num_samples),
                             "bytes": os.path.getsize(shard)}) + "\n")
  os.replace(tmp, path)


def cut_member(member: tarfile.TarInfo, file_size: int) -> tuple[int, str] | None:
  """``(offset, reason)`` when ``member``'s data runs past the end of the file."""
  end = member.offset_data + member.size
  if end <= file_size:
    return None
  return member.offset, (f"member {member.name!r} is cut: its data needs bytes up to {end}, the "
                         f"file ends at {file_size}")


def end_of_archive_damage(path: str, offset: int, file_size: int) -> tuple[int, str] | None:
  """``(offset, reason)`` unless the tar read stopped at ``offset`` on the end-of-archive marker
  (a zero block), as it does in an intact file."""
  with open(path, "rb") as f:
    f.seek(offset)
    block = f.read(_BLOCK)
  if len(block) == _BLOCK and not block.strip(b"\0"):
    return None
  if not block:
    return offset, (f"the file ends at byte {file_size} after a complete member, without the tar "
                    "end-of-archive marker: it was cut between members")
  if len(block) < _BLOCK:
    return offset, f"the member header at byte {offset} is cut (the file ends at {file_size})"
  return offset, f"the member header at byte {offset} is unreadable (not a tar header)"


def manifest_damage(path: str, num_samples: int, file_size: int) -> str | None:
  """Why ``path`` does not match its manifest (``None``: it does, or it has none)."""
  manifest = manifest_path(path)
  if not manifest.exists():
    return None
  try:
    expected = json.loads(manifest.read_text())
    samples, size = int(expected["samples"]), int(expected["bytes"])
  except (ValueError, KeyError, TypeError) as error:
    return f"its manifest {manifest} is unreadable ({error})"
  if samples == num_samples and size == file_size:
    return None
  return (f"it has {num_samples} intact sample(s) and {file_size} bytes, but its manifest "
          f"{manifest} (written with it) says {samples} sample(s) and {size} bytes; if the shard "
          "was rewritten on purpose, delete the manifest")


def describe_damage(path: str, offset: int | None, reason: str, last_good: str | None,
                    last_key: int | None) -> str:
  """One line: the shard, the byte offset, what is wrong, the last good sample and its key."""
  where = f" at byte {offset}" if offset is not None else ""
  if last_good is None:
    after = "no intact sample before it"
  else:
    key = "no key" if last_key is None else f"key {last_key}"
    after = f"last good sample {last_good!r} ({key})"
  return f"shard {path} is damaged{where}: {reason}; {after}"


def check_counts_record(index_dir: str | os.PathLike, shards: Sequence[str],
                        counts: Sequence[int]) -> dict[str, str]:
  """``{shard: reason}`` for shards with fewer samples than when this shard set was first indexed
  in ``index_dir``; records the counts (the largest seen) for the next start."""
  identity = json.dumps([os.path.abspath(p) for p in shards])
  name = f"shard_counts_{hashlib.sha1(identity.encode()).hexdigest()}.json"
  record = pathlib.Path(index_dir) / name
  try:
    recorded = json.loads(record.read_text())
  except (OSError, ValueError):
    recorded = {}
  lost = {shard: (f"it has {count} intact sample(s), {recorded[shard]} when this shard set was "
                  f"first indexed ({record}): it lost samples since; if they were changed on purpose, "
                  "delete that record")
          for shard, count in zip(shards, counts)
          if isinstance(recorded.get(shard), int) and count < recorded[shard]}
  now = {shard: max(int(count), int(recorded.get(shard, 0) or 0))
         for shard, count in zip(shards, counts)}
  if now != recorded:
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f"{record.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(now, indent=0) + "\n")
    os.replace(tmp, record)
  return lost
