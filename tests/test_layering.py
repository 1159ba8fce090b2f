"""The packages import only the ones below them (STYLE.md's seams): no import circles, no
imports from a lower layer to a higher one. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import prunellm

# Bottom to top. A package may import its own modules and any package before it in this list.
LAYERS = ["errors", "logs", "devices", "layers", "solvers", "distributed", "io", "data", "eval", "methods", "walker",
          "compression", "formats", "streaming", "runtime", "pipeline", "recipe", "sweep", "report", "cli", "__init__"]
ROOT = Path(prunellm.__file__).parent


def _imported_packages(path: Path) -> set[str]:
    """The top-level prunellm packages (or modules) a file imports, absolute or relative."""
    rel = path.relative_to(ROOT)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("prunellm."))
            continue
        if node.level == 0:
            parts = (node.module or "").split(".")
            if parts[0] != "prunellm":
                continue
            found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
            continue
        base = list(rel.parts[:-1])[:len(rel.parts) - node.level] if node.level > 1 else list(rel.parts[:-1])
        module = base + (node.module.split(".") if node.module else [])
        found.update([module[0]] if module else [a.name for a in node.names])
    return {name.removesuffix(".py") for name in found}


def test_every_package_imports_only_packages_below_it() -> None:
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 50
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = []
    for path in files:
        package = path.relative_to(ROOT).parts[0].removesuffix(".py")
        assert package in rank, f"{package} is not in LAYERS: place it in the layering"
        for imported in _imported_packages(path) - {package}:
            assert imported in rank, f"{path.relative_to(ROOT)} imports unknown prunellm.{imported}"
            if rank[imported] > rank[package]:
                upward.append(f"{path.relative_to(ROOT)} -> {imported}")
    assert not upward, "imports from a lower layer to a higher one: " + "; ".join(upward)
