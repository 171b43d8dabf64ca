"""Helpers every benchmark script shares: fake CPU devices, machine description, spread statistics,
JSON, tables.

Benchmarks are run as scripts (``python benchmarks/NAME.py``), so this module is imported as
``common`` from the ``benchmarks/`` folder that Python puts first on ``sys.path``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import platform
import statistics
from typing import Iterable, Sequence

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def fake_cpu_devices(count: int) -> None:
  """Makes the CPU backend show ``count`` devices (replacing any count set in ``XLA_FLAGS``).

  Call it before jax is imported: the flag is read when the backend starts.
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith(DEVICE_COUNT_FLAG)]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={count}"])


def machine() -> dict:
  """What the numbers were measured on (device kind, cores, load at start, versions)."""
  import jax
  try:
    load = os.getloadavg()
  except OSError:  # not available on every platform
    load = None
  return {"device": jax.devices()[0].device_kind, "platform_name": jax.devices()[0].platform,
          "device_count": jax.device_count(), "cpu_cores": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "load_average_at_start": load}


def spread(values: Sequence[float]) -> dict:
  """Median, quartiles, min and max of ``values`` (the quartiles by linear interpolation)."""
  values = sorted(float(v) for v in values)
  if not values:
    raise ValueError("spread of no values")

  def quantile(q: float) -> float:
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)

  return {"median": statistics.median(values), "q1": quantile(0.25), "q3": quantile(0.75),
          "min": values[0], "max": values[-1], "n": len(values)}


def write_json(report: dict, out: pathlib.Path) -> pathlib.Path:
  """Writes ``report`` (strict JSON: NaN and infinities are errors) and returns the path."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  temporary = out.with_name(out.name + ".tmp")
  temporary.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
  os.replace(temporary, out)
  return out


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  """A GitHub markdown table; cells are printed with ``str``."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def output_path(out: pathlib.Path | None, name: str, quick: bool) -> pathlib.Path:
  """``--out`` if given, else ``results/NAME.json`` (``NAME_quick.json`` in quick mode)."""
  if out is not None:
    return pathlib.Path(out)
  return RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")
