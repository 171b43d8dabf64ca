"""Image-caption webdataset shards, read by random access under an explicit index contract.

A shard is an uncompressed tar file whose members are grouped into samples by name, as
webdataset does: ``dir/000123.jpg``, ``dir/000123.txt`` and ``dir/000123.json`` form the sample
``dir/000123`` (everything before the first dot of the file name). A sample holds

* one image: ``.jpg``, ``.jpeg``, ``.png`` or ``.webp`` (anything Pillow opens);
* a caption: a ``.txt`` member, or else the ``caption_field`` of its ``.json``;
* its **key**: the integer ``key_field`` of its ``.json`` (``"key"`` by default);
* optionally a class label: the integer ``label_field`` of its ``.json`` (zero-shot and
  false-negative evaluation use it when every sample has one).

**Index contract.** A sample's key is its global dataset index: GloFND's thresholds and
FastCLIP's ``u`` live in ``(data_size,)`` arrays addressed by it, with ``data_size = max key + 1``.
Keys must be unique non-negative integers below ``2**31 - 1``. Keys missing from the shards
(downloads that failed) are *holes*: their rows exist and are never read or written.
:func:`validate_shards` checks a shard set against the contract; :func:`rekey_shards` writes
copies of shards whose samples lack keys (``glofnd-jax validate-shards`` / ``rekey-shards``).

**Reading.** :class:`WebDatasetPairSource` indexes every shard once (member offsets and sizes,
keys and labels; cached in ``index_dir``) and then serves ``source[i]`` by reading the two
members with ``os.pread``: random access, so the grain pipeline of
:mod:`glofnd_jax.data.pairs` shuffles it, splits it across processes (each process reads only
its own rows of every global batch) and checkpoints its position exactly like any other source.
Compressed shards (``.tar.gz``) cannot be read by offset and are rejected with a clear error.
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

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MAX_KEY = 2**31 - 2  # keys index int32 arrays of length max key + 1
MISSING = np.iinfo(np.int64).min  # a sample whose json has no key (or no json)
_INDEX_VERSION = 2
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

  def __len__(self) -> int:
    return len(self.names)


def _int_field(obj: dict, field: str, absent: int = MISSING) -> tuple[int, str | None]:
  """``(value, problem)``: ``absent`` and no problem when absent; a problem when not an integer."""
  if not field or field not in obj:
    return absent, None
  value = obj[field]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
      return int(value), None
    return absent, f"json field {field!r} is {value!r}, not an integer"
  return int(value), None


def _open_tar(path: str) -> tarfile.TarFile:
  try:
    return tarfile.open(path, mode="r:")
  except tarfile.ReadError as error:
    raise ValueError(f"shard {path} is not an uncompressed tar file ({error}); random access needs "
                     "plain .tar shards: decompress .tar.gz shards first (gunzip).") from error


def index_shard(path: str, *, key_field: str = "key", caption_field: str = "caption",
                label_field: str = "label") -> ShardIndex:
  """Reads one shard's member table and every sample's json (not the images)."""
  samples: dict[str, dict[str, Any]] = {}
  with _open_tar(path) as tar:
    for member in tar:
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
    out["keys"][i], key_problem = _int_field(obj, key_field)
    out["labels"][i], label_problem = _int_field(obj, label_field, absent=-1)
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
  return ShardIndex(shard=path, names=names, problems=problems, **out)


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
  np.savez(tmp, problems=problems, **arrays)
  os.replace(tmp, cache)


def _load_index(cache: pathlib.Path, path: str) -> ShardIndex | None:
  try:
    with np.load(cache, allow_pickle=False) as data:
      arrays = {name: data[name] for name in data.files}
  except (OSError, ValueError, KeyError):
    return None
  problems = [tuple(p.split("\t", 1)) for p in arrays.pop("problems").tolist()]
  return ShardIndex(shard=path, problems=problems, **arrays)


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


# ----------------------------------------------------------------------------- the source


def _describe_locations(locations: Sequence[tuple[str, str]], limit: int = 3) -> str:
  shown = ", ".join(f"{shard} sample {name!r}" for shard, name in locations[:limit])
  more = len(locations) - limit
  return shown + (f" and {more} more" if more > 0 else "")


class WebDatasetPairSource:
  """Random-access image-caption source over webdataset shards (see the module docstring).

  ``source[i]`` is ``{'image': encoded bytes, 'caption': str, 'label': int, 'key': int}`` for the
  ``i``-th sample in shard order (position ``i`` is *not* the key: ``keys[i]`` is).

  Attributes:
    shards: the shard paths.
    keys: ``(M,)`` int64 key of every position; unique.
    labels: ``(M,)`` int64 labels (-1 when a sample has none).
    data_size: ``max key + 1``: the length of the per-sample state arrays.
    has_labels: every sample has a label >= 0.
    problems: ``[(shard, sample name, reason)]`` of samples left out because their structure is
      unusable (counted as bad samples; see :mod:`glofnd_jax.data.pairs` for the policy).
  """

  def __init__(self, shards: str | Sequence[str], *, key_field: str = "key",
               caption_field: str = "caption", label_field: str = "label",
               index_dir: str | os.PathLike | None = None, workers: int = 4):
    self.shards = expand_shards(shards)
    self.key_field, self.caption_field = key_field, caption_field
    indexes = index_shards(self.shards, key_field=key_field, caption_field=caption_field,
                           label_field=label_field, index_dir=index_dir, workers=workers)
    self.problems = []
    parts = []
    for shard_id, index in enumerate(indexes):
      unusable = {name for name, _ in index.problems}
      self.problems.extend((index.shard, name, reason) for name, reason in index.problems)
      usable = np.array([name not in unusable for name in index.names.tolist()], bool)
      missing_key = usable & (index.keys == MISSING)
      if missing_key.any():
        names = index.names[missing_key].tolist()
        raise ValueError(
            f"{int(missing_key.sum())} sample(s) of shard {index.shard} have no integer json field "
            f"{key_field!r} (first: {names[0]!r}). Every sample needs its global index: write "
            f"keyed copies with `glofnd-jax rekey-shards`, or set data.key_field.")
      parts.append((shard_id, index, usable))
    self._shard_id = np.concatenate([np.full(int(u.sum()), s, np.int32) for s, _, u in parts])
    take = lambda field: np.concatenate([getattr(i, field)[u] for _, i, u in parts])
    self.keys = take("keys")
    self.labels = take("labels")
    self._names = take("names")
    self._image = np.stack([take("image_offset"), take("image_size")], axis=1)
    self._text = np.stack([take("text_offset"), take("text_size")], axis=1)
    self._text_is_json = take("text_is_json")
    if len(self.keys) == 0:
      raise ValueError(f"no usable sample in {len(self.shards)} shard(s) "
                       f"({len(self.problems)} unusable, e.g. {self.problems[:1]}).")
    check_keys(self.keys, lambda i: (self.shards[self._shard_id[i]], str(self._names[i])))
    self.data_size = int(self.keys.max()) + 1
    self.has_labels = bool((self.labels >= 0).all())
    self._files: dict[int, int] = {}
    self._lock = threading.Lock()

  # grain may copy sources into worker processes: file descriptors do not travel.
  def __getstate__(self):
    state = dict(self.__dict__)
    state["_files"], state["_lock"] = {}, None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.keys)

  def _fd(self, shard_id: int) -> int:
    fd = self._files.get(shard_id)
    if fd is None:
      with self._lock:
        fd = self._files.get(shard_id)
        if fd is None:
          fd = os.open(self.shards[shard_id], os.O_RDONLY)
          self._files[shard_id] = fd
    return fd

  def _read(self, position: int, offset_size: np.ndarray) -> bytes:
    offset, size = (int(v) for v in offset_size)
    data = os.pread(self._fd(int(self._shard_id[position])), size, offset)
    if len(data) != size:
      raise OSError(f"short read from {self.describe(position)}: the shard changed after it was "
                    "indexed; delete the index cache (data.index_dir) and retry.")
    return data

  def read_caption(self, position: int) -> str:
    """The caption of ``position`` (stripped; may be empty)."""
    data = self._read(position, self._text[position])
    if self._text_is_json[position]:
      caption = json.loads(data).get(self.caption_field, "")
      return caption.strip() if isinstance(caption, str) else ""
    return data.decode("utf-8", errors="replace").strip()

  def read_image(self, position: int) -> bytes:
    """The encoded image file of ``position``."""
    return self._read(position, self._image[position])

  def __getitem__(self, position: int) -> dict[str, Any]:
    position = int(position)
    return {"image": self.read_image(position), "caption": self.read_caption(position),
            "label": int(self.labels[position]), "key": int(self.keys[position])}

  def describe(self, position: int) -> str:
    """``"shard PATH key K (sample NAME)"``: where a sample lives, for error messages."""
    return (f"shard {self.shards[self._shard_id[position]]} key {int(self.keys[position])} "
            f"(sample {str(self._names[position])!r})")

  def fingerprint(self) -> str:
    """Identifies the shard set's contents (paths, sizes, mtimes) for caches."""
    parts = [[os.path.abspath(p), os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in self.shards]
    identity = json.dumps([parts, self.key_field, self.caption_field])
    return hashlib.sha1(identity.encode()).hexdigest()

  def close(self) -> None:
    with self._lock:
      for fd in self._files.values():
        os.close(fd)
      self._files.clear()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass  # interpreter shutdown

  def __repr__(self) -> str:
    return (f"WebDatasetPairSource({len(self.shards)} shards, {len(self)} samples, "
            f"data_size={self.data_size})")


def check_keys(keys: np.ndarray, locate) -> None:
  """Raises a clear error unless ``keys`` are unique integers in ``[0, MAX_KEY]``.

  Args:
    keys: ``(M,)`` int64 keys.
    locate: ``position -> (shard or file, sample name)`` for the messages.
  """
  bad = np.flatnonzero((keys < 0) | (keys > MAX_KEY))
  if len(bad):
    i = int(bad[0])
    shard, name = locate(i)
    raise ValueError(f"{len(bad)} key(s) are out of range [0, {MAX_KEY}], e.g. key {int(keys[i])} "
                     f"of {shard} sample {name!r}. Keys are global indices: rewrite them with "
                     "`glofnd-jax rekey-shards --all`.")
  order = np.argsort(keys, kind="stable")
  sorted_keys = keys[order]
  dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
  if len(dup):
    key = int(sorted_keys[dup[0]])
    where = [locate(int(i)) for i in order[sorted_keys == key]]
    num_keys = len(np.unique(sorted_keys[dup]))
    raise ValueError(f"{num_keys} key(s) occur more than once, e.g. key {key} in "
                     f"{_describe_locations(where)}. Keys must be unique: rewrite them with "
                     "`glofnd-jax rekey-shards --all`.")


# ----------------------------------------------------------------------------- validation


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
    ``bad_images``, ``empty_captions`` (with ``verify_images``): each ``{"count", "examples"}``
    with examples ``"shard ... sample ... key ..."``; ``per_shard`` sample counts; and ``ok``:
    False when a key is missing, duplicated or out of range (training would refuse the set).
  """
  paths = expand_shards(shards)
  indexes = index_shards(paths, key_field=key_field, caption_field=caption_field,
                         label_field=label_field, index_dir=None, workers=workers)
  report: dict[str, Any] = {"num_shards": len(paths), "per_shard": {}}
  issues = {name: {"count": 0, "examples": []} for name in
            ("missing_key", "duplicate_keys", "out_of_range", "unusable", "bad_images",
             "empty_captions")}

  def add(kind: str, text: str) -> None:
    issues[kind]["count"] += 1
    if len(issues[kind]["examples"]) < limit:
      issues[kind]["examples"].append(text)

  all_keys, where = [], []
  for index in indexes:
    report["per_shard"][index.shard] = len(index)
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
    from glofnd_jax.data import pairs  # pylint: disable=g-import-not-at-top
    try:
      source = WebDatasetPairSource(paths, key_field=key_field, caption_field=caption_field,
                                    label_field=label_field, workers=workers)
    except ValueError as error:
      report["verify_error"] = str(error)
    else:
      screened = pairs.screen_samples(source, on_bad_sample="skip", verify_images=True,
                                      workers=workers, limit=limit)
      for kind in ("bad_images", "empty_captions"):
        issues[kind] = screened.report[kind]
      source.close()
  report.update(issues)
  report["ok"] = not (issues["missing_key"]["count"] or issues["duplicate_keys"]["count"]
                      or issues["out_of_range"]["count"])
  return report


def format_validation(report: dict[str, Any]) -> str:
  """A human-readable summary of :func:`validate_shards`' report."""
  lines = [f"{report['num_shards']} shard(s), {report['num_samples']} sample(s), data_size "
           f"{report['data_size']} (max key + 1), {report['num_holes']} hole(s)"
           + (f", first missing key ranges {report['hole_ranges']}" if report["num_holes"] else "")]
  for kind in ("missing_key", "duplicate_keys", "out_of_range", "unusable", "bad_images",
               "empty_captions"):
    entry = report.get(kind, {"count": 0})
    if entry["count"]:
      lines.append(f"{kind}: {entry['count']}")
      lines.extend(f"  {example}" for example in entry["examples"])
  if "verify_error" in report:
    lines.append(f"image check not run: {report['verify_error']}")
  lines.append("OK: the shards satisfy the index contract." if report["ok"] else
               "NOT OK: fix the keys with `glofnd-jax rekey-shards` (add --all to renumber).")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- writing


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
  # Fixed metadata: the same samples always give byte-identical shards.
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = size, 0, 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  return info


class ShardWriter:
  """Writes samples to one tar shard, atomically (a temporary file renamed on ``close``)."""

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
  with _open_tar(path) as tar:
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
    ValueError: when ``out_dir`` holds an input shard (no in-place rewrite), or when keeping the
      existing keys would leave duplicates (use ``renumber_all``).
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
  existing = []
  if not renumber_all:
    for index in index_shards(paths, key_field=key_field, caption_field="", label_field=""):
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
        key, problem = _int_field(obj, key_field)
        if renumber_all or not 0 <= key <= MAX_KEY or problem:
          obj[key_field] = next_key
          keys.append(next_key)
          next_key += 1
          rekeyed += 1
        members = dict(members)
        members["json"] = json.dumps(obj, sort_keys=True).encode()
        writer.write(name, members)
        total += 1
  return {"num_samples": total, "num_rekeyed": rekeyed, "first_new_key": first_new,
          "data_size": (max(keys) + 1) if keys else 0, "shards": [str(p) for p in out_paths]}


# ----------------------------------------------------------------------------- commands


def validate_main(argv: Sequence[str] | None = None) -> int:
  """``glofnd-jax validate-shards PATTERN``: exit status 1 when the index contract is broken."""
  from glofnd_jax import arguments  # pylint: disable=g-import-not-at-top

  parser = arguments.ArgumentParser(
      prog="glofnd-jax validate-shards",
      description="Check webdataset shards against the index contract (unique integer keys, in "
                  "range) and report holes, unusable samples and (--verify-images) bad images "
                  "and empty captions, each with its shard and key.")
  parser.add_argument("shards", help="shard pattern: 'data/{00000..00009}.tar', 'data/*.tar'")
  parser.add_argument("--key-field", default="key")
  parser.add_argument("--caption-field", default="caption")
  parser.add_argument("--label-field", default="label")
  parser.add_argument("--data-size", type=int, default=None, help="keys must be below this")
  parser.add_argument("--verify-images", action="store_true", help="decode every image (slow)")
  parser.add_argument("--workers", type=int, default=4)
  parser.add_argument("--json", default=None, help="also write the full report to this file")
  args = parser.parse_args(argv)
  try:
    report = validate_shards(args.shards, key_field=args.key_field,
                             caption_field=args.caption_field, label_field=args.label_field,
                             data_size=args.data_size, verify_images=args.verify_images,
                             workers=args.workers)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}")
    return 2
  print(format_validation(report))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
  return 0 if report["ok"] else 1


def rekey_main(argv: Sequence[str] | None = None) -> int:
  """``glofnd-jax rekey-shards PATTERN OUT_DIR [--all]``."""
  from glofnd_jax import arguments  # pylint: disable=g-import-not-at-top

  parser = arguments.ArgumentParser(
      prog="glofnd-jax rekey-shards",
      description="Write copies of webdataset shards in which every sample's json has an "
                  "integer key (its global index). Samples lacking one get new keys after the "
                  "largest existing key; --all renumbers every sample 0, 1, ... (no holes).")
  parser.add_argument("shards", help="shard pattern, e.g. 'raw/{00000..00009}.tar'")
  parser.add_argument("out_dir", help="directory for the rewritten shards (not the inputs')")
  parser.add_argument("--key-field", default="key")
  parser.add_argument("--all", action="store_true", help="renumber every sample")
  parser.add_argument("--start", type=int, default=None, help="first new key")
  args = parser.parse_args(argv)
  try:
    summary = rekey_shards(args.shards, args.out_dir, key_field=args.key_field,
                           renumber_all=args.all, start=args.start)
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}")
    return 2
  print(f"wrote {len(summary['shards'])} shard(s) to {args.out_dir}: {summary['num_samples']} "
        f"samples, {summary['num_rekeyed']} given new keys (from {summary['first_new_key']}), "
        f"data_size {summary['data_size']}")
  return 0
