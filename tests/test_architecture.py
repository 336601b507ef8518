"""The package's shape: imports point one way through the layers, no import cycles, small modules,
every package installed. Read from the source (every import statement, also inside functions),
so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "iceburg_mlx"

# The layer of each top-level unit of iceburg_mlx (a module or a subpackage); a unit may import
# its own layer and those below. cli/ is installed as iceburg_mlx.cli.
LAYERS = {
    0: {"iceburg_mlx", "errors", "atomic", "hashing", "paths", "_platform", "hardware", "listen"},
    1: {"models"},
    2: {"adapters"},
    3: {"templates", "data", "sampling", "penalties"},
    4: {"train", "eval", "generation", "chat", "diagnostics"},
    5: {"serve", "export", "review", "datagen"},
    6: {"cli"},
}
LAYER = {unit: layer for layer, units in LAYERS.items() for unit in units}
MAX_LINES = 450


def _sources(root: Path = ROOT) -> dict[str, Path]:
    """module name -> file, for iceburg_mlx/**.py and cli/*.py (as iceburg_mlx.cli.*)."""
    out = {}
    for base, prefix in ((root / PKG, PKG), (root / "cli", f"{PKG}.cli")):
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


def _imports(name: str, file: Path, modules: set[str]) -> set[str]:
    """The iceburg_mlx modules `name` imports anywhere in its file."""
    tree = ast.parse(file.read_text(encoding="utf-8"))
    is_pkg = file.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:   # `import iceburg_mlx.x.y` of a non-module attribute
                t = t.rpartition(".")[0]
            if t.startswith(PKG) and t != name:
                found.add(t)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    src = _sources(root)
    return {m: _imports(m, f, set(src)) for m, f in src.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def problems(root: Path = ROOT) -> list[str]:
    """Every breach of the shape: module cycles, unit cycles, imports up the layers, unplaced units."""
    g = graph(root)
    out = [f"import cycle: {' <-> '.join(c)}" for c in _cycles(g)]
    units: dict[str, set[str]] = {}
    for m, targets in g.items():
        if unit(m) not in LAYER:
            out.append(f"{m}: its unit '{unit(m)}' has no layer in tests/test_architecture.py")
            continue
        for t in targets:
            a, b = unit(m), unit(t)
            if a == b or b not in LAYER:
                continue
            units.setdefault(a, set()).add(b)
            if LAYER[b] > LAYER[a]:
                out.append(f"{m} -> {t}: {a} (layer {LAYER[a]}) imports {b} (layer {LAYER[b]}) above it")
    out += [f"cycle between units: {' <-> '.join(c)}" for c in _cycles(units)]
    return out


def test_imports_point_one_way_and_never_cycle():
    assert problems() == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    pkg = tmp_path / PKG
    for d in ("models", "train", "adapters"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (tmp_path / "cli").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "loader.py").write_text("def f():\n    from iceburg_mlx.train import run\n")
    (pkg / "train" / "run.py").write_text("from iceburg_mlx.models.loader import f\n")
    (pkg / "adapters" / "a.py").write_text("from . import b\n")
    (pkg / "adapters" / "b.py").write_text("from iceburg_mlx.adapters.a import x\n")
    found = problems(tmp_path)
    assert any("import cycle" in p and "iceburg_mlx.models.loader" in p for p in found)
    assert any("iceburg_mlx.models.loader -> iceburg_mlx.train.run" in p and "above it" in p for p in found)
    assert any("import cycle: iceburg_mlx.adapters.a <-> iceburg_mlx.adapters.b" in p for p in found)


def test_no_library_module_passes_the_size_limit():
    big = [f"{f.relative_to(ROOT)} ({n} lines)" for f in (ROOT / PKG).rglob("*.py")
           if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert big == []


def test_every_package_is_installed():
    listed = set(re.findall(r'"(iceburg_mlx(?:\.[a-z_]+)*)"', (ROOT / "pyproject.toml").read_text()))
    packages = {PKG + "".join(f".{p}" for p in d.relative_to(ROOT / PKG).parts)
                for d in [ROOT / PKG, *(ROOT / PKG).rglob("*")] if (d / "__init__.py").is_file()}
    assert packages - listed == set(), "add them to pyproject.toml's [tool.setuptools] packages"


@pytest.mark.parametrize("name", sorted(m for m in _sources() if not m.endswith("__main__")))
def test_every_module_imports(name):
    import importlib

    importlib.import_module(name)
