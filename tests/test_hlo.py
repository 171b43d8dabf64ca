"""The compiled train step moves no N-sized array between devices and builds no B x C matrix.

A worker subprocess (8 fake CPU devices) compiles the unimodal (SogCLR + GloFND) and bimodal
(FastCLIP v3 + GloFND) steps under every non-finite policy (``off``, ``stop``, ``skip``) with
N = 100_003 (padded to 100_008, 12_501 rows per device) and a global batch of 64, the same steps
with the attract and reweight treatments (and SimCLR's), and a deliberately bad unimodal variant
that reads lambda replicated. Here we
parse the HLO text: every collective's result and operand shapes (operands are resolved by
name) must be far smaller than one device's slice of the per-sample state.
"""

import json
import math
import re

import numpy as np
import pytest

import scaling_subprocess
import scaling_worker

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute", "collective-broadcast")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s+=\s+(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_SHAPE = re.compile(r"\b[a-z][a-z0-9]*\[([0-9,]*)\]")


def parse_instructions(hlo: str) -> list[dict]:
  """``name``, ``opcode``, result ``shapes`` (list of dim tuples) and ``operands`` per line."""
  found = []
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, rest = match.groups()
    opcode = _OPCODE.search(" " + rest)
    if not opcode:
      continue
    shape_text = (" " + rest)[:opcode.start()]
    args_text = (" " + rest)[opcode.end():].split(")", 1)[0]
    found.append({
        "name": name, "opcode": opcode.group(1), "line": line.strip(),
        "shapes": [tuple(int(d) for d in dims.split(",") if d)
                   for dims in _SHAPE.findall(shape_text)],
        "operands": re.findall(r"%([\w.\-]+)", args_text)})
  return found


def root_opcodes(hlo: str) -> dict:
  """Computation name -> opcode of its ROOT instruction."""
  roots, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%([\w.\-]+) \(", line)
    if header:
      current = header.group(1)
    elif current and line.lstrip().startswith("ROOT "):
      inst = parse_instructions(line)
      if inst:
        roots[current] = inst[0]["opcode"]
  return roots


def collective_shapes(hlo: str):
  """Yield ``(instruction line, shape)`` for every result and operand shape of a collective."""
  instructions = parse_instructions(hlo)
  shapes_by_name = {i["name"]: i["shapes"] for i in instructions}
  for inst in instructions:
    base = inst["opcode"].removesuffix("-start").removesuffix("-done")
    if base not in COLLECTIVES:
      continue
    for shape in inst["shapes"]:
      yield inst["line"], shape
    for operand in inst["operands"]:
      for shape in shapes_by_name.get(operand, []):
        yield inst["line"], shape


def n_sized_collectives(hlo: str, meta: dict) -> list[str]:
  """Collectives that move a per-sample-sized array: a dimension equal to N, N_pad or
  N_pad / D, or as many elements as one device's slice (legitimate ones are O(batch))."""
  shard = meta["padded"] // meta["devices"]
  forbidden = {meta["num_samples"], meta["padded"], shard}
  bad = []
  for line, shape in collective_shapes(hlo):
    if forbidden.intersection(shape) or math.prod(shape) >= shard:
      bad.append(f"{shape}: {line[:200]}")
  return bad


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  out = tmp_path_factory.mktemp("hlo")
  scaling_subprocess.run("hlo", out, devices=8, timeout=240)
  meta = json.loads((out / "meta.json").read_text())
  names = ("bad",) + PROGRAMS
  texts = {name: (out / f"{name}.hlo").read_text() for name in names}
  return texts, meta


KINDS = ("unimodal", "bimodal")
POLICIES = ("off", "stop", "skip")
STEPS = [f"{kind}_{policy}" for kind in KINDS for policy in POLICIES]
PROGRAMS = tuple(STEPS) + tuple(scaling_worker.HLO_TREATMENT_PROGRAMS)


@pytest.mark.parametrize("kind", PROGRAMS)
def test_no_collective_moves_per_sample_arrays(compiled, kind):
  texts, meta = compiled
  hlo = texts[kind]
  shard = meta["padded"] // meta["devices"]
  # We are looking at the right program: per-device slices of the state are its parameters...
  assert re.search(rf"f32\[{shard}\]\{{0\}} parameter\(", hlo), "no per-sample parameter found"
  # ... and it does communicate (index / feature all-gathers, gradient all-reduces).
  assert len(list(collective_shapes(hlo))) > 5
  bad = n_sized_collectives(hlo, meta)
  assert not bad, "collectives move per-sample arrays:\n" + "\n".join(bad)


def test_checker_catches_an_all_gathered_lambda(compiled):
  """The same check on a step that reads lambda replicated must fail (guards the checker)."""
  texts, meta = compiled
  bad = n_sized_collectives(texts["bad"], meta)
  assert any(str(meta["padded"]) in line for line in bad), bad


def per_sample_copies(hlo: str, rows: int) -> list[str]:
  """Entry instructions producing a ``(rows,)``-sized value other than parameters, in-place
  scatters (their output aliases the donated input) and tuple plumbing."""
  entry = hlo[hlo.index("\nENTRY "):]
  computations = root_opcodes(hlo)
  offenders = []
  for inst in parse_instructions(entry):
    if not any(rows in shape for shape in inst["shapes"]):
      continue
    if inst["opcode"] in ("parameter", "tuple", "get-tuple-element", "bitcast"):
      continue
    called = re.search(r"calls=%([\w.\-]+)", inst["line"])
    if inst["opcode"] == "fusion" and called and computations.get(called.group(1)) == "scatter":
      continue
    offenders.append(inst["line"][:200])
  return offenders


@pytest.mark.parametrize("kind", PROGRAMS)
def test_per_sample_state_updated_in_place(compiled, kind):
  """No instruction copies a per-device state slice: only parameters, the in-place scatters
  (their output aliases the donated input) and tuple plumbing have its shape."""
  texts, meta = compiled
  hlo = texts[kind]
  offenders = per_sample_copies(hlo, meta["padded"] // meta["devices"])
  assert not offenders, "O(N) work on the per-sample state:\n" + "\n".join(offenders)
  assert "input_output_alias" in hlo.split("\n", 1)[0], "train state is not donated"


@pytest.mark.parametrize("kind", PROGRAMS)
def test_each_device_builds_only_its_anchor_rows(compiled, kind):
  """No array on a device spans all B anchors by all B (or 2B) candidates: similarities and
  negative masks are split by anchor rows (B / D of them per device)."""
  texts, meta = compiled
  batch = meta["global_batch"]
  full = []
  for inst in parse_instructions(texts[kind]):
    for shape in inst["shapes"]:
      if sum(d in (batch, 2 * batch) for d in shape) >= 2:
        full.append(f"{shape}: {inst['line'][:160]}")
  assert not full, "full B x C arrays on a device:\n" + "\n".join(full[:10])
  rows_per_device = batch // meta["devices"]
  local_rows = [s for i in parse_instructions(texts[kind]) for s in i["shapes"]
                if len(s) >= 2 and s[-2] == rows_per_device and s[-1] in (batch, 2 * batch)]
  assert local_rows, "no (B / D, C) similarity rows found: is the step partitioned?"


def test_parser_reads_tuple_shapes_and_operands():
  hlo = ("  %a = f32[12501]{0} parameter(0)\n"
         "  %b = (f32[64]{0}, s32[64]{0}) all-reduce(%a, %c), channel_id=1\n"
         "  ROOT %d = f32[8,16]{1,0} all-gather(%e), dimensions={0}\n")
  shapes = sorted(s for _, s in collective_shapes(hlo))
  assert shapes == [(8, 16), (64,), (64,), (12501,)]
  meta = {"num_samples": 100_003, "padded": 100_008, "devices": 8}
  assert len(n_sized_collectives(hlo, meta)) == 1
  np.testing.assert_equal(parse_instructions(hlo)[1]["operands"], ["a", "c"])
