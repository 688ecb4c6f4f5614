"""The layers of the package (issue 22): the core and the sources never import the validation
layer (config.py), the front-ends or the plans from below; no module imports another in a
circle through config.py. Read from the source text, so a lazy import inside a function counts
too."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "importer"
FRONT_ENDS = {"importer.cli", "importer.pod", "importer.poller", "importer.ovirt_populator",
              "importer.openstack_populator", "importer.populator",
              "importer.cloner", "importer.size_detection", "importer.uploadserver.server",
              "importer.config", "importer.podconfig", "importer.uploadconfig",
              "importer.pollerconfig", "importer.populatorconfig", "importer.output_format"}
LOWER = ("importer.sources", "importer.disks", "importer.formats", "importer.sinks")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every importer module this file imports, at the top or inside functions."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("importer"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("importer"))
    return found


def _graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in mods and i != m} for m, p in mods.items()}


def test_nothing_below_imports_the_validation_layer_or_a_front_end() -> None:
    upward = sorted((m, i) for m, deps in _graph().items() if m.startswith(LOWER)
                    for i in deps if i in FRONT_ENDS or i.startswith("importer.plans")
                    or i == "importer.engine")
    assert upward == [], upward


def test_no_import_circle_through_the_validation_layer() -> None:
    graph = _graph()

    def reaches(start: str, goal: str) -> bool:
        stack, visited = [start], set()
        while stack:
            cur = stack.pop()
            if cur == goal:
                return True
            if cur not in visited:
                visited.add(cur)
                stack.extend(graph.get(cur, ()))
        return False

    circles = sorted(d for d in graph["importer.config"] if reaches(d, "importer.config"))
    assert circles == [], f"importer.config -> {circles} -> ... -> importer.config"
