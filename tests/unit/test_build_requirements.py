"""Every third-party package the mypyc-compiled modules reach (their import closure inside meshplug, imports in
functions included: mypy follows them all) is a declared build requirement (itself or its stubs) or is one
mypy is told to treat as untyped. A missing one makes `pip wheel .` fail everywhere but in the dev venv (the
image and fresh-venv builds of tests/integration catch it too, minutes later)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from meshplug import native

REPO = Path(__file__).resolve().parents[2]
#: imported through a declared requirement's own dependencies (types-requests requires urllib3 >= 2)
TRANSITIVE = {"urllib3": "types-requests"}


def _module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def _closure() -> set[str]:
    """Top-level third-party names imported by the compiled modules and every meshplug module they import."""
    todo = [m for m in native.COMPILED]
    seen: set[str] = set()
    third: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for imported in _imports(path, package):
            top = imported.split(".")[0]
            if top == "meshplug":
                todo.append(imported)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third


def _normal(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def test_every_typed_package_the_compiled_modules_reach_is_a_build_requirement() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requires = {_normal(re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0]) for r in pyproject["build-system"]["requires"]}
    untyped = {
        pattern.removesuffix(".*")
        for override in pyproject["tool"]["mypy"].get("overrides", [])
        if override.get("ignore_missing_imports")
        for pattern in override["module"]
    }
    dists = importlib.metadata.packages_distributions()
    missing = []
    for top in sorted(_closure()):
        if top in untyped:
            continue
        if top in TRANSITIVE and _normal(TRANSITIVE[top]) in requires:
            continue
        names = [_normal(d) for d in dists.get(top, [top])]
        if not any(n in requires or f"types-{n}" in requires for n in names):
            missing.append(f"{top} (distribution {', '.join(names)})")
    assert not missing, f"add to [build-system] requires (or its types- stubs): {missing}"
