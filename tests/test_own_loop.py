"""The own-loop examples of docs/YOUR_OWN_LOOP.md run on 8 devices as written.

Each runs in a fresh Python on 8 fake CPU devices (the count is fixed before jax is imported):
it trains with the per-sample state sharded over all 8, saves with orbax and restores onto a
4-device mesh. Both start at once, so the two imports and compilations overlap.
"""

import ast
import json
import pathlib
import re
import subprocess
import sys

import scaling_subprocess

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
NAMES = ("own_loop_nnx", "own_loop_linen")


def test_own_loop_examples_mask_shard_and_restore_onto_4_devices(tmp_path):
  processes = {}
  for name in NAMES:
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--steps", "6",
               "--checkpoint-dir", str(tmp_path / name), "--report", str(tmp_path / f"{name}.json")]
    processes[name] = subprocess.Popen(command, env=scaling_subprocess.worker_env(8),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  for name, process in processes.items():
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, f"{name} failed:\n{output[-3000:]}"
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert (report["devices"], report["state_devices"], report["restore_devices"]) == (8, 8, 4)
    kept = report["kept_fraction"]
    assert len(kept) == 6 and all(0.5 < k < 1.0 for k in kept), (name, kept)  # masking engaged
    assert report["restored_max_abs_difference"] == 0.0, name
    assert (tmp_path / name / "step_6").is_dir()


def test_the_modules_the_guide_uses_are_package_attributes_and_stay_light():
  """``gj.sharding``, ``gj.thresholds``, ... resolve; importing them pulls in no stack module."""
  code = ("import sys, types, glofnd_jax as gj\n"
          "names = 'sharding thresholds detection losses objectives per_sample treatments siglip "
          "similarity'.split()\n"
          "assert all(isinstance(getattr(gj, n), types.ModuleType) for n in names)\n"
          "print(sorted(m for m in sys.modules if m.startswith('glofnd_jax.')))\n")
  output = subprocess.run([sys.executable, "-c", code], env=scaling_subprocess.worker_env(1),
                          capture_output=True, text=True, timeout=120, check=True).stdout
  loaded = ast.literal_eval(output)
  assert "glofnd_jax.sharding" in loaded
  assert not [m for m in loaded if m.split(".")[1] in ("training", "data", "models", "evaluation",
                                                      "config", "cli", "augment")], loaded


def test_the_guide_shows_the_examples_as_they_are():
  """Every line of the guide's python excerpts (but the stack-Checkpointer one) is in an example."""
  guide = (EXAMPLES.parent / "docs" / "YOUR_OWN_LOOP.md").read_text()
  sources = {line.split("  #")[0].strip() for name in NAMES
             for line in (EXAMPLES / f"{name}.py").read_text().splitlines()}
  blocks = [block for block in re.findall(r"```python\n(.*?)```", guide, re.S)
            if "training.checkpoint" not in block]
  assert len(blocks) >= 5
  stale = [line for block in blocks for line in block.splitlines()
           if line.split("  #")[0].strip() and line.split("  #")[0].strip() not in sources]
  assert not stale, stale
