"""robustgan's modules import each other only downwards through the layers of
docs/ARCHITECTURE.md, and never in a cycle. Every import counts, also the ones inside
functions, so a cycle cannot hide behind a late import."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "robustgan"

# Layer of each module (the longest matching prefix decides); a module may import only
# modules of its own layer or below. The same table is in docs/ARCHITECTURE.md.
LAYERS = {
    "robustgan.errors": 0, "robustgan.checks": 0, "robustgan.parallel": 0,
    "robustgan.classifier": 0, "robustgan.checkpoint": 0, "robustgan.optim": 0,
    "robustgan.data": 0, "robustgan.models": 0,
    "robustgan.attacks": 1, "robustgan.game": 1,
    "robustgan.nets": 2, "robustgan.evaluate.columns": 2,
    "robustgan.methods": 3,
    "robustgan.config": 4, "robustgan.recipes": 4,
    "robustgan.runs": 5, "robustgan.evaluate": 5, "robustgan.report": 5,
    "robustgan.train": 6,
    "robustgan.table": 7, "robustgan.studies": 7,
    "robustgan.main": 8,
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: pathlib.Path) -> set[str]:
    """The robustgan modules `path` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("robustgan")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robustgan"):
            assert node.level == 0, f"{path}: relative import"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if is_module(sub) else node.module)
    return found


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def layer(name: str) -> int:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    assert matches, f"{name} has no layer: add it to LAYERS here and in docs/ARCHITECTURE.md"
    return LAYERS[max(matches, key=len)]


@pytest.mark.parametrize("name", sorted(set(GRAPH) - {"robustgan"}))
def test_imports_go_down_the_layers(name):
    upward = sorted(dep for dep in GRAPH[name] - {"robustgan"} if layer(dep) > layer(name))
    assert not upward, f"{name} (layer {layer(name)}) imports higher layers: {upward}"


def test_no_import_cycles():
    state, cycles = {}, []

    def visit(name, stack):
        state[name] = "open"
        for dep in sorted(GRAPH.get(name, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from robustgan.train import train\n")
    assert imports(module) == {"robustgan.train"}
