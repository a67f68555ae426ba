"""The project's import graph, read from the source (no import executed):
which project modules each module imports, at any depth (function-level
imports included), plus the two imports made by name at run time."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transferline", "tasks", "flows")
MODALITIES = ("image", "text")


def module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_modules() -> list[str]:
    return sorted(module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _has_code(path: Path) -> bool:
    """An __init__.py with more than a docstring runs code when its package is imported."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) and
               not (isinstance(n, ast.ImportFrom) and n.module == "__future__") for n in body)


def _runs_code(name: str) -> bool:
    """A module file, or a package whose __init__.py holds more than a docstring."""
    path = module_file(name)
    return path is not None and (path.name != "__init__.py" or _has_code(path))


@cache
def direct_imports(name: str) -> frozenset[str]:
    """Project modules `name` imports itself (its parent packages' __init__ included when they hold code)."""
    path = module_file(name)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for cand in candidates:
            while cand and module_file(cand) is None:
                cand = cand.rpartition(".")[0]
            if cand and cand.split(".")[0] in PACKAGES and cand != name and _runs_code(cand):
                found.add(cand)
    for dep in list(found):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        parts = dep.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts)) if _runs_code(".".join(parts[:i]))} - {name}
    return frozenset(found)


def by_name(name: str, modality: str) -> set[str]:
    """The import made by name at run time inside the library: the active modality's schema.
    (tasks/_stage.py's import of the stage's modality module is added by stage_closure.)"""
    return {f"transferline.config.{modality}"} if name == "transferline.config" else set()


def closure(roots: set[str], modality: str) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [*direct_imports(name), *by_name(name, modality)]
    return seen


def stage_closure(stage: str, modality: str) -> set[str]:
    """Every project module `python -m tasks.<stage>` runs for `modality`."""
    return closure({f"tasks.{stage}", f"transferline.{modality}.{stage}"}, modality)


def as_files(modules: set[str]) -> set[str]:
    return {str(module_file(m).relative_to(ROOT)) for m in modules}
