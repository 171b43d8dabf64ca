"""A byte-level BPE tokenizer for captions (Hugging Face ``tokenizers``), loaded from a local file.

CLIP's text conventions: lower-cased text, a start token and an end token around the caption,
zero padding to a fixed context length (77), truncation keeping the end token, and the text
feature read at the end token, found as the **largest id** of the sequence (CLIP's
``text.argmax(-1)``). :func:`train_tokenizer` therefore appends the start and end tokens after
the learned vocabulary, so the end token has the largest id and padding (id 0) the smallest.
Any tokenizer file with that property works, e.g. CLIP's own ``tokenizer.json``
(``sot_token='<|startoftext|>'``, ``eot_token='<|endoftext|>'``).

Train one on a caption set::

  glofnd-jax train-tokenizer --captions captions.txt --out tokenizer.json [--vocab_size 49408]
  glofnd-jax train-tokenizer --shards '/data/cc3m/{00000..00331}.tar' --out tokenizer.json
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

import numpy as np

from glofnd_jax import arguments

PAD_TOKEN = "<pad>"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
DEFAULT_CONTEXT_LENGTH = 77
CLIP_VOCAB_SIZE = 49408


class ClipTokenizer:
  """Captions -> int32 token ids ``(context_length,)``: ``[SOT, ..., EOT, 0, ...]``.

  Attributes:
    path: the tokenizer file.
    context_length: L, the length of every encoded caption.
    vocab_size: number of ids (the text embedding's rows).
    sot_id, eot_id: the start and end token ids (``eot_id == vocab_size - 1``).
  """

  def __init__(self, path: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH, *,
               sot_token: str = SOT_TOKEN, eot_token: str = EOT_TOKEN):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(
          f"tokenizer file {self.path} does not exist. Train one on your captions with "
          f"`glofnd-jax train-tokenizer --captions CAPTIONS.txt --out {self.path}` (or --shards "
          "PATTERN), or point tokenizer.path at an existing tokenizer.json.")
    if context_length < 3:
      raise ValueError(f"tokenizer.context_length={context_length} must be >= 3 (start, one "
                       "token, end).")
    self.context_length = int(context_length)
    self._tokenizer = Tokenizer.from_file(str(self.path))
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    self.sot_id = self._tokenizer.token_to_id(sot_token)
    self.eot_id = self._tokenizer.token_to_id(eot_token)
    if self.sot_id is None or self.eot_id is None:
      raise ValueError(f"{self.path} has no {sot_token!r} / {eot_token!r} token; set "
                       "tokenizer.sot_token / eot_token to the file's start and end tokens.")
    if self.eot_id != self.vocab_size - 1:
      raise ValueError(f"in {self.path} the end token {eot_token!r} has id {self.eot_id}, not the "
                       f"largest ({self.vocab_size - 1}): the text tower pools at the largest id "
                       "(CLIP's argmax). Train the tokenizer with train_tokenizer.")

  def encode(self, text: str) -> list[int]:
    """The BPE ids of ``text`` without start/end tokens or padding."""
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def __call__(self, text: str) -> np.ndarray:
    """One caption -> int32 ``(context_length,)``; long captions are cut, keeping the end token."""
    ids = [self.sot_id] + self.encode(text)[:self.context_length - 2] + [self.eot_id]
    out = np.zeros(self.context_length, np.int32)
    out[:len(ids)] = ids
    return out

  def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
    """Captions -> int32 ``(n, context_length)``."""
    return np.stack([self(t) for t in texts]) if texts else np.zeros(
        (0, self.context_length), np.int32)

  def decode(self, ids: Sequence[int]) -> str:
    """Token ids (start/end/padding dropped) back to text."""
    ids = [int(i) for i in ids if int(i) not in (0, self.sot_id, self.eot_id)]
    return self._tokenizer.decode(ids).strip()

  def __repr__(self) -> str:
    return (f"ClipTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})")


def train_tokenizer(captions: Iterable[str], out_path: str | os.PathLike, *,
                    vocab_size: int = CLIP_VOCAB_SIZE, min_frequency: int = 2) -> pathlib.Path:
  """Trains a lower-casing byte-level BPE on ``captions`` and saves it as a tokenizer.json.

  Args:
    captions: the caption strings.
    out_path: where to write the file (atomically; parent directories created).
    vocab_size: at most this many ids in all (CLIP: 49408); a small caption set stops earlier.
    min_frequency: a merge needs at least this many occurrences.

  Returns:
    ``out_path``; ids: 0 = padding, then the 256 byte symbols and the merges, then the start and
    end tokens (the end token's id is the largest).
  """
  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  if vocab_size < 260:
    raise ValueError(f"vocab_size={vocab_size} must be >= 260 (256 byte symbols and 3 special "
                     "tokens).")
  tokenizer = Tokenizer(models.BPE())
  tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, min_frequency=min_frequency,
                                special_tokens=[PAD_TOKEN], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator((c for c in captions if c and c.strip()), trainer)
  # Added after training: they get the two largest ids, the end token the very last.
  tokenizer.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
  out_path = pathlib.Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_path.with_name(out_path.name + f".tmp{os.getpid()}")
  tokenizer.save(str(tmp))
  os.replace(tmp, out_path)
  return out_path


def captions_from_shards(shards, caption_field: str = "caption") -> Iterable[str]:
  """Every caption (``.txt`` member, else the json's ``caption_field``) of webdataset shards."""
  import json  # pylint: disable=g-import-not-at-top

  from glofnd_jax.data.pairs import shards as shard_format  # pylint: disable=g-import-not-at-top

  for path in shard_format.expand_shards(shards):
    for _, members in shard_format.iterate_samples(path):
      if "txt" in members:
        yield members["txt"].decode("utf-8", errors="replace")
      elif "json" in members:
        try:
          text = json.loads(members["json"]).get(caption_field, "")
        except (ValueError, AttributeError):
          continue
        if isinstance(text, str):
          yield text


def main(argv: Sequence[str] | None = None) -> int:
  """``glofnd-jax train-tokenizer``."""
  parser = arguments.ArgumentParser(prog="glofnd-jax train-tokenizer",
                                   description="Train a byte-level BPE caption tokenizer.")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--captions", help="a text file with one caption per line")
  source.add_argument("--shards", help="webdataset shards, e.g. 'data/{00000..00009}.tar'")
  parser.add_argument("--caption-field", default="caption", help="json caption field (shards)")
  parser.add_argument("--out", required=True, help="the tokenizer.json to write")
  parser.add_argument("--vocab-size", type=int, default=CLIP_VOCAB_SIZE)
  parser.add_argument("--min-frequency", type=int, default=2)
  args = parser.parse_args(argv)
  if args.captions:
    path = pathlib.Path(args.captions)
    if not path.is_file():
      parser.error(f"--captions {path} does not exist")
    captions = path.read_text(encoding="utf-8").splitlines()
  else:
    captions = captions_from_shards(args.shards, args.caption_field)
  out = train_tokenizer(captions, args.out, vocab_size=args.vocab_size,
                        min_frequency=args.min_frequency)
  tokenizer = ClipTokenizer(out)
  print(f"wrote {out}: {tokenizer.vocab_size} ids (start {tokenizer.sot_id}, end "
        f"{tokenizer.eot_id})")
  return 0
