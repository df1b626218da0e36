"""The identity of the code a cache entry depends on, so that editing a method's loss or an alignment reruns the
stages that use it and an unchanged tree reuses everything.

`code_hash(module, ...)` is the sha256 of the source of each named module and of every module it imports,
transitively, within the project packages (harness/, methods/) and the named modules' own top-level package
(an outside plugin's). Imports are read from the source (`ast`), not by running it: `import x`, `from x import y`
(`y` a submodule when there is one, else the module `x`), relative imports, and lazy imports inside functions,
which run when the function does. Imports under `if TYPE_CHECKING:` never run and are left out; modules named
by string (the registry's built-in list) are not followed, so one method's hash does not hold every method.
Third-party libraries are not hashed here: the manifest records their versions.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache
from pathlib import Path

PROJECT_PACKAGES = ("harness", "methods")


def code_hash(*modules: str) -> str:
    """16 hex digits of sha256 over the sources of `modules` and of the project modules they import."""
    return _hash(tuple(sorted(set(modules))))


def module_sources(*modules: str) -> dict[str, Path]:
    """Module name -> source file of every module `code_hash(*modules)` covers."""
    found: dict[str, Path] = {}
    for module in modules:
        packages = {*PROJECT_PACKAGES, module.split(".")[0]}
        _collect(module, packages, found)
    return dict(sorted(found.items()))


@cache
def _hash(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name, path in module_sources(*modules).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _source_file(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent that is not a package, or not importable
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _collect(module: str, packages: set[str], found: dict[str, Path]) -> None:
    if module in found or module.split(".")[0] not in packages:
        return
    path = _source_file(module)
    if path is None:
        return
    found[module] = path
    is_package = path.name == "__init__.py"
    for imported in _imports(ast.parse(path.read_bytes(), filename=str(path)), module, is_package):
        _collect(imported, packages, found)


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """The modules `tree` (the source of `module`) imports, outside `if TYPE_CHECKING:` blocks."""
    out: list[str] = []
    package = module if is_package else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(sub if _source_file(sub) is not None else base)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )
