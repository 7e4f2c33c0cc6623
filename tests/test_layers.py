"""The package's shape, as the README's "How it is built" draws it: layers whose imports point down only, no import
cycle, commands that never import each other. (Sizes of modules and functions are left to judgment, not counted:
a cap on parameters once made functions pack tuples only to unpack them.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trainlab"
# Bottom to top. The components are the modules conf/ groups build (`_target_: trainlab.models.resnet`, ...): their
# paths are stored in every checkpoint's config, so they stay at the top of the package.
LAYERS = ["core", "components", "analysis", "record", "engine", "commands", "cli"]
COMPONENTS = ("data", "models", "optim", "augment", "metrics", "loggers")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every trainlab module and the trainlab modules it imports (at the top or inside functions)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainlab"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("trainlab")]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__", "conf"):
        return None  # the package itself (its version) and `python -m trainlab`
    return "components" if parts[1] in COMPONENTS else parts[1]


def test_every_module_sits_in_a_layer():
    unplaced = [m for m in _imports() if _layer(m) is not None and _layer(m) not in LAYERS]
    assert not unplaced, f"modules outside the layers {LAYERS}: {unplaced}"


def test_imports_point_down_only():
    upward = [f"{m} -> {t}" for m, targets in _imports().items() for t in targets
              if _layer(m) and _layer(t) and LAYERS.index(_layer(t)) > LAYERS.index(_layer(m))]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(sorted(upward))


def test_commands_never_import_each_other():
    sideways = [f"{m} -> {t}" for m, targets in _imports().items() for t in targets
                if _layer(m) == _layer(t) == "commands" and t != "trainlab.commands"]
    assert not sideways, "a command imports another (move what they share down a layer):\n" + "\n".join(sideways)


def test_the_import_graph_has_no_cycle():
    graph, state, cycle = _imports(), {}, []

    def visit(module: str, stack: list[str]) -> bool:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle.extend(stack[stack.index(target):] + [module, target] if target in stack else [module, target])
                return True
            if target not in state and visit(target, stack + [module]):
                return True
        state[module] = "done"
        return False

    assert not any(visit(m, []) for m in sorted(graph) if m not in state), " -> ".join(cycle)


@pytest.mark.parametrize("broken", ["cycle", "sideways"])
def test_the_checks_see_what_they_look_for(tmp_path, monkeypatch, broken):
    """The graph reader on a package made to break each rule (so the tests above can fail)."""
    package = tmp_path / "trainlab"
    (package / "commands").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "commands" / "__init__.py").write_text("")
    (package / "commands" / "a.py").write_text("from trainlab.commands import b\n")
    (package / "commands" / "b.py").write_text("import trainlab.commands.a\n" if broken == "cycle" else "")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    graph = _imports()
    assert graph["trainlab.commands.a"] == {"trainlab.commands.b"}
    if broken == "cycle":
        with pytest.raises(AssertionError, match="trainlab.commands.a -> trainlab.commands.b"):
            test_the_import_graph_has_no_cycle()
    else:
        with pytest.raises(AssertionError, match="a command imports another"):
            test_commands_never_import_each_other()
