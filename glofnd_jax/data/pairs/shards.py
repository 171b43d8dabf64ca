"""The webdataset tar shard format: shard lists, one shard's index, and writing and reading samples.

A shard is an uncompressed tar file whose members are grouped into samples by name, as
webdataset does: ``dir/000123.jpg``, ``dir/000123.txt`` and ``dir/000123.json`` form the sample
``dir/000123`` (everything before the first dot of the file name). A sample holds

* one image: ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` (anything Pillow opens);
* a caption: a ``.txt`` member, or else the ``caption_field`` of its ``.json``;
* its **key** (see :mod:`~glofnd_jax.data.pairs.contract`): the integer ``key_field`` of its
  ``.json`` (``"key"`` by default);
* optionally a class label: the integer ``label_field`` of its ``.json`` (zero-shot and
  false-negative evaluation use it when every sample has one).

:func:`index_shards` records where every sample's members lie (cached per shard), which is what
:class:`~glofnd_jax.data.pairs.webdataset.WebDatasetPairSource` reads by offset;
:class:`ShardWriter` and :func:`iterate_samples` write and stream whole samples.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import hashlib
import io
import json
import os
import pathlib
import re
import tarfile
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from glofnd_jax.data.pairs import integrity

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MISSING = np.iinfo(np.int64).min  # a sample whose json has no key (or no json)
_INDEX_VERSION = 3  # 3: damage
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


# ----------------------------------------------------------------------------- shard lists


def _expand_braces(pattern: str) -> list[str]:
  match = _BRACES.search(pattern)
  if match is None:
    return [pattern]
  first, last = match.group(1), match.group(2)
  width = len(first)
  head, tail = pattern[:match.start()], pattern[match.end():]
  out = []
  for number in range(int(first), int(last) + 1):
    out.extend(_expand_braces(f"{head}{number:0{width}d}{tail}"))
  return out


def expand_shards(shards: str | Sequence[str]) -> list[str]:
  """The shard paths a config names, in a fixed order.

  Args:
    shards: a path, a brace range (``"cc3m/{00000..00331}.tar"``, the webdataset notation), a
      glob (``"cc3m/*.tar"``, sorted), several of these separated by ``::``, or a list of them.

  Returns:
    The paths, duplicates removed, in the order given (a glob's matches sorted).

  Raises:
    FileNotFoundError: naming the first path or pattern that matches no file.
  """
  patterns = [shards] if isinstance(shards, str) else list(shards)
  patterns = [p for item in patterns for p in str(item).split("::") if p]
  if not patterns:
    raise ValueError("no shards given: set the shard pattern, e.g. 'data/{00000..00009}.tar'.")
  paths: list[str] = []
  for pattern in patterns:
    for expanded in _expand_braces(pattern):
      if any(c in expanded for c in "*?["):
        matches = sorted(glob.glob(expanded))
        if not matches:
          raise FileNotFoundError(f"shard pattern {expanded!r} matches no file.")
        paths.extend(matches)
      else:
        if not os.path.isfile(expanded):
          raise FileNotFoundError(f"shard {expanded!r} does not exist (from {pattern!r}).")
        paths.append(expanded)
  return list(dict.fromkeys(paths))


def split_name(member_name: str) -> tuple[str, str]:
  """``'dir/000123.seg.jpg' -> ('dir/000123', 'seg.jpg')``: webdataset's sample name, extension."""
  directory, _, base = member_name.rpartition("/")
  stem, dot, ext = base.partition(".")
  prefix = f"{directory}/" if directory else ""
  return prefix + stem, (ext.lower() if dot else "")


# ----------------------------------------------------------------------------- one shard's index


@dataclasses.dataclass
class ShardIndex:
  """Where each sample of one shard lives, and what its json says.

  All arrays have one entry per sample (in tar order); offsets are byte offsets into the shard.

  Attributes:
    shard: the shard's path.
    names: ``(S,)`` sample names (webdataset ``__key__``).
    keys: ``(S,)`` int64 keys; :data:`MISSING` where the json lacks the key field.
    labels: ``(S,)`` int64 labels; -1 where absent.
    image_offset, image_size: the image member (-1 when the sample has none).
    text_offset, text_size: the caption member: the ``.txt`` if any, else the ``.json``.
    text_is_json: ``(S,)`` bool, the caption is the json's ``caption_field``.
    problems: ``(sample name, reason)`` for samples that cannot be used as they are (no image,
      no caption member, unreadable json, a key that is not an integer, ...).
    damage: ``""`` for an intact shard; else one line naming the shard, the byte offset, what
      is wrong and the last good sample and key (:mod:`~glofnd_jax.data.pairs.integrity`). The
      arrays then hold only the intact samples before the damage.
  """

  shard: str
  names: np.ndarray
  keys: np.ndarray
  labels: np.ndarray
  image_offset: np.ndarray
  image_size: np.ndarray
  text_offset: np.ndarray
  text_size: np.ndarray
  text_is_json: np.ndarray
  problems: list[tuple[str, str]]
  damage: str = ""

  def __len__(self) -> int:
    return len(self.names)


def int_field(obj: dict, field: str, absent: int = MISSING) -> tuple[int, str | None]:
  """``(value, problem)``: ``absent`` and no problem when absent; a problem when not an integer."""
  if not field or field not in obj:
    return absent, None
  value = obj[field]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
      return int(value), None
    return absent, f"json field {field!r} is {value!r}, not an integer"
  return int(value), None


def open_tar(path: str) -> tarfile.TarFile:
  try:
    return tarfile.open(path, mode="r:")
  except tarfile.ReadError as error:
    raise ValueError(f"shard {path} is not an uncompressed tar file ({error}); random access needs "
                     "plain .tar shards: decompress .tar.gz shards first (gunzip).") from error


def index_shard(path: str, *, key_field: str = "key", caption_field: str = "caption",
                label_field: str = "label") -> ShardIndex:
  """Reads one shard's member table and every sample's json (not the images), and checks that
  the shard is complete (:mod:`~glofnd_jax.data.pairs.integrity`)."""
  samples: dict[str, dict[str, Any]] = {}
  file_size, damage, cut_sample = os.path.getsize(path), None, None
  with open_tar(path) as tar:
    try:
      for member in _members_until_damage(tar, file_size):
        if isinstance(member, tuple):
          damage, cut_sample = member[:2], member[2]
          break
        if not member.isfile():
          continue
        name, ext = split_name(member.name)
        sample = samples.setdefault(name, {})
        if ext in IMAGE_EXTENSIONS:
          sample.setdefault("image", (member.offset_data, member.size))
        elif ext == "txt":
          sample["txt"] = (member.offset_data, member.size)
        elif ext == "json":
          sample["json"] = (member.offset_data, member.size)
          sample["json_bytes"] = tar.extractfile(member).read()
    except tarfile.ReadError as error:
      damage = (tar.offset, f"the member header at byte {tar.offset} is unreadable ({error})")
    if damage is None:
      damage = integrity.end_of_archive_damage(path, tar.offset, file_size)
  if damage is not None and samples:
    # The sample at the damage is incomplete (its member is cut) or may be (cut after it).
    samples.pop(cut_sample if cut_sample is not None else next(reversed(samples)), None)
  count = len(samples)
  out = dict(keys=np.full(count, MISSING, np.int64), labels=np.full(count, -1, np.int64),
             image_offset=np.full(count, -1, np.int64), image_size=np.full(count, -1, np.int64),
             text_offset=np.full(count, -1, np.int64), text_size=np.full(count, -1, np.int64),
             text_is_json=np.zeros(count, bool))
  problems = []
  for i, (name, sample) in enumerate(samples.items()):
    obj = {}
    if "json_bytes" in sample:
      try:
        obj = json.loads(sample["json_bytes"])
        if not isinstance(obj, dict):
          raise ValueError("not a JSON object")
      except ValueError as error:
        problems.append((name, f"unreadable json ({error})"))
        obj = {}
    out["keys"][i], key_problem = int_field(obj, key_field)
    out["labels"][i], label_problem = int_field(obj, label_field, absent=-1)
    for problem in (key_problem, label_problem):
      if problem:
        problems.append((name, problem))
    if "image" in sample:
      out["image_offset"][i], out["image_size"][i] = sample["image"]
    else:
      problems.append((name, f"no image member ({', '.join(IMAGE_EXTENSIONS)})"))
    if "txt" in sample:
      out["text_offset"][i], out["text_size"][i] = sample["txt"]
    elif caption_field and caption_field in obj:
      out["text_offset"][i], out["text_size"][i] = sample["json"]
      out["text_is_json"][i] = True
    else:
      problems.append((name, f"no caption (.txt member or json field {caption_field!r})"))
  names = np.array(list(samples), dtype=str) if count else np.zeros(0, "<U1")
  offset, reason = damage if damage is not None else (None, integrity.manifest_damage(
      path, count, file_size))
  described = "" if reason is None else damage_line(path, offset, reason, names, out["keys"])
  return ShardIndex(shard=path, names=names, problems=problems, damage=described, **out)


def damage_line(shard: str, offset: int | None, reason: str, names: np.ndarray,
                keys: np.ndarray) -> str:
  """:func:`~glofnd_jax.data.pairs.integrity.describe_damage` with the shard's last intact
  sample (of ``names`` / ``keys``, in tar order) as the last good one."""
  last_key = int(keys[-1]) if len(keys) and keys[-1] != MISSING else None
  return integrity.describe_damage(shard, offset, reason, str(names[-1]) if len(names) else None,
                                   last_key)


def _members_until_damage(tar: tarfile.TarFile, file_size: int):
  """The members of ``tar`` in order; ends with ``(offset, reason, sample name)`` at a member
  cut short."""
  for member in tar:
    cut = integrity.cut_member(member, file_size)
    if cut is not None:
      yield (*cut, split_name(member.name)[0])
      return
    yield member


def _index_cache_path(index_dir: pathlib.Path, path: str, settings: tuple) -> pathlib.Path:
  stat = os.stat(path)
  identity = json.dumps([_INDEX_VERSION, os.path.abspath(path), stat.st_size, stat.st_mtime_ns,
                         *settings])
  return index_dir / f"{hashlib.sha1(identity.encode()).hexdigest()}.npz"


def _save_index(index: ShardIndex, cache: pathlib.Path) -> None:
  cache.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f.name: getattr(index, f.name) for f in dataclasses.fields(index)
            if isinstance(getattr(index, f.name), np.ndarray)}
  problems = np.array([f"{n}\t{r}" for n, r in index.problems], dtype=str)
  tmp = cache.with_name(cache.name + f".tmp{os.getpid()}_{threading.get_ident()}.npz")
  np.savez(tmp, problems=problems, damage=np.array(index.damage), **arrays)
  os.replace(tmp, cache)


def _load_index(cache: pathlib.Path, path: str) -> ShardIndex | None:
  try:
    with np.load(cache, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
  except (OSError, ValueError, KeyError):
    return None
  problems = [tuple(p.split("\t", 1)) for p in arrays.pop("problems").tolist()]
  return ShardIndex(shard=path, problems=problems, damage=str(arrays.pop("damage")), **arrays)


def index_shards(shards: Sequence[str], *, key_field: str = "key", caption_field: str = "caption",
                 label_field: str = "label", index_dir: str | os.PathLike | None = None,
                 workers: int = 4) -> list[ShardIndex]:
  """:func:`index_shard` of every shard (threads), cached in ``index_dir`` when given.

  A cached index is reused while the shard's path, size and modification time and the field
  names are unchanged.
  """
  settings = (key_field, caption_field, label_field)
  cache_dir = None if index_dir is None else pathlib.Path(index_dir)

  def one(path: str) -> ShardIndex:
    cache = None if cache_dir is None else _index_cache_path(cache_dir, path, settings)
    if cache is not None and cache.exists():
      loaded = _load_index(cache, path)
      if loaded is not None:
        return loaded
    index = index_shard(path, key_field=key_field, caption_field=caption_field,
                        label_field=label_field)
    if cache is not None:
      _save_index(index, cache)
    return index

  if workers <= 1 or len(shards) <= 1:
    return [one(path) for path in shards]
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(one, shards))



# ----------------------------------------------------------------------------- writing


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
  # Fixed metadata: the same samples always give byte-identical shards.
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = size, 0, 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  return info


class ShardWriter:
  """Writes samples to one tar shard, atomically (a temporary file renamed on ``close``), and
  its manifest (:func:`~glofnd_jax.data.pairs.integrity.write_manifest`: the sample count and
  size that every later index checks)."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._tmp = self.path.with_name(self.path.name + ".tmp")
    self._tar = tarfile.open(self._tmp, mode="w", format=tarfile.GNU_FORMAT)
    self.count = 0

  def write(self, name: str, members: dict[str, bytes]) -> None:
    """Adds sample ``name`` with ``members`` ``{extension: bytes}`` (e.g. ``{'png': ...}``)."""
    for ext, data in members.items():
      self._tar.addfile(_tar_info(f"{name}.{ext}", len(data)), io.BytesIO(data))
    self.count += 1

  def close(self) -> None:
    self._tar.close()
    os.replace(self._tmp, self.path)
    integrity.write_manifest(self.path, self.count)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:
      self._tar.close()
      self._tmp.unlink(missing_ok=True)


def iterate_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
  """``(sample name, {extension: bytes})`` of every sample of one shard, in tar order."""
  current, members = None, {}
  with open_tar(path) as tar:
    for member in tar:
      if not member.isfile():
        continue
      name, ext = split_name(member.name)
      if name != current and current is not None:
        yield current, members
        members = {}
      current = name
      members[ext] = tar.extractfile(member).read()
  if current is not None:
    yield current, members
