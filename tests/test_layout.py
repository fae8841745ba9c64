"""The package's dependency rule, checked on the source: core imports nothing above it, the four
consumers (training, eval, serving, export) build on core and never on each other, no module imports
another's private names, and no two modules import each other at load time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lm2vec"
ALLOWED = {  # package (or top-level module) -> the lm2vec packages it may import
    "io": set(),
    "core": {"io"},
    "data": {"io"},
    "training": {"core", "data", "io"},
    "eval": {"core", "data", "io"},
    "serving": {"core", "io"},
    "export": {"core", "io"},
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every `import lm2vec...` / `from lm2vec... import` in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("lm2vec"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("lm2vec")]
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_uses_absolute_imports_of_lm2vec():
    relative = [name for name, path in modules().items()
                if any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(ast.parse(path.read_text())))]
    assert relative == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_module_imports_only_what_its_layer_may(module):
    own = layer(module)
    if own not in ALLOWED:
        return  # lm2vec/__init__.py, cli.py, cli_errors.py wire everything together
    for target, names in imports(modules()[module]):
        other = layer(target)
        if target == "lm2vec":  # `from lm2vec import __version__`
            assert names == ["__version__"], (module, names)
            continue
        assert other == own or other in ALLOWED[own], f"{module} imports {target}: {own}/ may import {ALLOWED[own]}"


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_private_names_imported_across_modules(module):
    private = [(target, n) for target, names in imports(modules()[module]) for n in names
               if n.startswith("_") and n != "__version__" and target != module]
    assert private == [], f"{module} imports private names {private}"


def test_no_import_cycles_at_load_time():
    table = modules()
    graph = {m: {t for t, names in imports(p, top_level_only=True) for t in
                 [t] + [f"{t}.{n}" for n in names if f"{t}.{n}" in table] if t in table and t != m}
             for m, p in table.items()}
    graph = {m: {t for t in deps if not m.startswith(t + ".") and t != "lm2vec"} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_is_over_400_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_every_module_opens_with_a_docstring():
    missing = [m for m, p in modules().items() if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert missing == []
