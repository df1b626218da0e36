"""The folder tree shows the pipeline, and each stage imports only shared modules and the stages it builds on.

prepare (harness/sandbox) -> signals (harness/signals) -> fuse (methods/) -> train (harness/training)
-> evaluate (harness/evaluation) -> report (harness/analysis); docs/design.md has the map. Every import in
every module is checked, lazy imports inside functions included. Within a package, the modules import each other
without a cycle: a lazy import inside a function that hides one counts as a cycle too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = {"config", "registry", "store", "errors", "models", "chat", "distributed", "modes", "code_identity"}
ORCHESTRATION = {"pipeline", "sweeps", "cli", "api", "launch", "__init__", "bench", "presets", "accelerate_configs",
                 "estimates"}  # estimates: the dry run's per-stage compute and memory, part of the plan
# stage package -> the stage packages it may import (besides shared modules and itself)
ALLOWED = {
    "sandbox": set(),
    "signals": {"sandbox"},  # the sandbox's reference judge scores sandbox answers
    "methods": set(),
    "training": {"signals", "methods"},
    "evaluation": set(),  # evaluation never imports training or signals: it scores any model folder
    "analysis": set(),  # tables and figures read run directories only
}


def _unit(module: str) -> str | None:
    """'harness.signals.align' -> 'signals'; 'methods.fusellm' -> 'methods'; other packages -> None."""
    parts = module.split(".")
    if parts[0] == "methods":
        return "methods"
    if parts[0] == "harness":
        return parts[1] if len(parts) > 1 else "__init__"
    return None


def _imports(path: Path, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every module `path` imports; `from package import name` counts as `package.name` where that is in `modules`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "harness":  # `from harness import store` names a submodule
                found.update(f"harness.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` (module -> the modules it imports), as a path that ends where it starts."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for other in sorted(graph.get(module, ())):
            if (found := visit(other, [*path, module])) is not None:
                return found
        done.add(module)
        return None

    for module in sorted(graph):
        if (found := visit(module, [])) is not None:
            return found
    return None


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted([*(REPO / "harness").rglob("*.py"), *(REPO / "methods").rglob("*.py")]):
        rel = path.relative_to(REPO).with_suffix("")
        out.append((".".join(rel.parts), path))
    return out


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_each_module_imports_only_what_its_stage_may(module: str, path: Path) -> None:
    unit = _unit(module)
    assert unit is not None
    if unit in ORCHESTRATION:
        return
    bad = []
    for imported in sorted(_imports(path)):
        other = _unit(imported)
        if other is None or other == unit or other in SHARED:
            continue
        if unit == "registry" and other == "methods":  # the registry exists to find the method plugins
            continue
        if unit in SHARED or other not in ALLOWED.get(unit, set()):
            bad.append(imported)
    assert not bad, f"{module} ({unit}) imports {bad}"


def _packages() -> list[str]:
    return sorted({m.rsplit(".", 1)[0] for m, p in _modules() if p.name != "__init__.py" and "." in m})


@pytest.mark.parametrize("package", _packages())
def test_the_modules_of_a_package_import_each_other_without_a_cycle(package: str) -> None:
    """A cycle hidden by imports inside functions still ties two modules into one concept; a shared module of
    their own (as harness/sandbox/identity.py is for build.py and packaged.py) breaks it."""
    members = {m: p for m, p in _modules() if m.rsplit(".", 1)[0] == package and p.name != "__init__.py"}
    graph = {m: {i for i in _imports(p, set(members)) if i in members and i != m} for m, p in members.items()}
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle in {package}: {' -> '.join(cycle or [])}"


def test_the_cycle_check_finds_a_cycle_hidden_inside_functions(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\n")
    modules = {"pkg.a", "pkg.b"}
    graph = {f"pkg.{n}": _imports(tmp_path / f"{n}.py", modules) & modules for n in ("a", "b")}
    assert _cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
    assert _cycle({"pkg.a": {"pkg.b"}, "pkg.b": set()}) is None


def test_every_harness_module_belongs_to_a_stage_or_is_shared() -> None:
    units = {_unit(m) for m, _ in _modules()}
    assert units <= SHARED | ORCHESTRATION | set(ALLOWED), units - (SHARED | ORCHESTRATION | set(ALLOWED))


def test_design_doc_maps_every_stage_package() -> None:
    design = (REPO / "docs" / "design.md").read_text()
    for folder in ("harness/sandbox/", "harness/signals/", "methods/", "harness/training/", "harness/evaluation/",
                   "harness/analysis/"):  # fmt: skip
        assert folder in design, folder
