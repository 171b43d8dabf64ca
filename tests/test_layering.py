"""The package's layers import downwards only, and no import cycle exists.

Layers, lowest first (a module may import its own layer and the ones below):

  0 core        similarity, per_sample, thresholds, detection, losses, objectives (+ what they
                build on): the functional API, nothing of the stack
  1 sharding    sharding, distributed, augment
  2 data/models data.*, models.*
  3 tools       evaluation.* and the training building blocks (step, nonfinite, optim,
                checkpoint, preemption, metrics, plots): no config, no task, no loop
  4 config      config.*, recipes.* (the config files installed with the package)
  5 tasks       training.task, training.unimodal, training.image_text, training.loop
  6 entry       cli, demo

Imports are read from the source (``ast``), including those inside functions, so a lazy
back-import counts too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "glofnd_jax"

TASK_MODULES = ("glofnd_jax.training.task", "glofnd_jax.training.unimodal",
                "glofnd_jax.training.image_text", "glofnd_jax.training.loop")


def layer(module: str) -> int:
  """The layer of a ``glofnd_jax`` module (see the module docstring)."""
  parts = module.split(".")
  top = parts[1] if len(parts) > 1 else ""
  if top in ("cli", "demo"):
    return 6
  if module in TASK_MODULES or module == "glofnd_jax.training":
    return 5
  if top in ("config", "recipes"):
    return 4
  if top in ("evaluation", "training"):
    return 3
  if top in ("data", "models"):
    return 2
  if top in ("sharding", "distributed", "augment"):
    return 1
  return 0


def module_name(path: pathlib.Path) -> str:
  relative = path.relative_to(PACKAGE.parent).with_suffix("")
  parts = list(relative.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def all_modules() -> set[str]:
  return {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The ``glofnd_jax`` modules ``path`` imports (``from pkg import mod`` resolves to ``mod``)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("glofnd_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("glofnd_jax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        found.add(candidate if candidate in modules else node.module)
  # a package's __init__ is not an import of its own submodules' layer
  return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
  modules = all_modules()
  return {module_name(p): imports_of(p, modules) - {module_name(p)}
          for p in PACKAGE.rglob("*.py")}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
  bad = []
  for module, targets in sorted(graph.items()):
    for target in sorted(targets):
      if target in ("glofnd_jax",) or target.endswith("__init__"):
        continue
      if layer(target) > layer(module):
        bad.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
  return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every elementary cycle found by depth-first search (one per back edge)."""
  found, state, stack = [], {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph.get(node, ())):
      if target == "glofnd_jax":
        continue  # the package index re-exports the core; importing it is not a cycle edge
      if state.get(target) == "open":
        found.append(stack[stack.index(target):] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return found


def test_every_module_has_a_layer_and_the_core_imports_nothing_of_the_stack():
  graph = import_graph()
  core = [m for m in graph if layer(m) == 0 and m != "glofnd_jax"]
  assert {"glofnd_jax.thresholds", "glofnd_jax.losses", "glofnd_jax.objectives"} <= set(core)
  for module in core:
    assert all(layer(t) == 0 for t in graph[module]), (module, graph[module])


def test_no_module_imports_a_higher_layer():
  assert layer_violations(import_graph()) == []


def test_no_import_cycle():
  assert cycles(import_graph()) == []


@pytest.mark.parametrize("back_import", [
    ("glofnd_jax.losses", "glofnd_jax.training.step"),        # core -> stack
    ("glofnd_jax.data.pipeline", "glofnd_jax.evaluation.knn"),  # data -> evaluation
    ("glofnd_jax.evaluation.knn", "glofnd_jax.training.loop"),  # evaluation -> loop
])
def test_a_back_import_is_caught(back_import):
  graph = import_graph()
  module, target = back_import
  graph[module] = graph[module] | {target}
  assert any(v.startswith(f"{module} ") for v in layer_violations(graph))


def test_a_cycle_is_caught():
  graph = import_graph()
  graph["glofnd_jax.data.records"] = graph["glofnd_jax.data.records"] | {"glofnd_jax.data.folder"}
  graph["glofnd_jax.data.folder"] = graph["glofnd_jax.data.folder"] | {"glofnd_jax.data.records"}
  assert cycles(graph)


def test_no_module_is_over_400_lines():
  long = {module_name(p): n for p in PACKAGE.rglob("*.py")
          if (n := len(p.read_text().splitlines())) > 400}
  assert long == {}

