"""The packages of ``stage0`` import only the layers below them (docs/architecture.md).

contract < policy < engine < store < lifecycle, each importing only those before it; the
entry points on top (server, console, cli, sdk, integrations, testing, and the root modules) may
import anything — except that the server never imports the console (the console builds on the
server; ``stage0.app`` mounts one on the other). Every import counts: at module level, inside
functions, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "stage0"

LAYERS: dict[str, frozenset[str]] = {
    "contract": frozenset(),
    "policy": frozenset({"contract"}),
    "engine": frozenset({"contract", "policy"}),
    "store": frozenset({"contract", "policy", "engine"}),
    "lifecycle": frozenset({"contract", "policy", "engine", "store"}),
}
TOP = frozenset({"server", "console", "cli", "sdk", "integrations", "export", "testing", "app",
                 "__init__", "__main__"})


def _package(module: str) -> str:
    """The top-level part of ``stage0`` that ``stage0.<module>`` belongs to."""
    first = module.split(".", 1)[0]
    return first if (SRC / first).is_dir() or (SRC / f"{first}.py").is_file() else "__init__"


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _targets(path: Path, node: ast.AST) -> list[str]:
    """The ``stage0`` modules (without the ``stage0.`` prefix) that ``node`` imports."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against this module's package
            here = _module_name(path)
            package = here if path.name == "__init__.py" else here[:-1]
            base = package[: len(package) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"stage0.{module}" if module else "stage0"]
        else:
            names = [node.module or ""]
        if names == ["stage0"]:  # `from stage0 import sdk` imports the subpackage
            names = [f"stage0.{a.name}" for a in node.names]
    else:
        return []
    return [n.removeprefix("stage0.") for n in names if n.startswith("stage0.")]


@functools.cache
def _imports() -> dict[str, dict[str, set[str]]]:
    """For each package: each package it imports, and the files that do."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        owner = rel.parts[0].removesuffix(".py")  # a subpackage, or a root module
        imports = graph.setdefault(owner, defaultdict(set))
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            for target in _targets(path, node):
                package = _package(target)
                if package != owner:
                    imports[package].add(str(rel))
    return graph


def test_every_package_has_a_place_in_the_layers() -> None:
    assert set(_imports()) == set(LAYERS) | TOP


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_layer_imports_only_the_layers_below_it(package: str) -> None:
    imports = _imports()[package]
    wrong = {p: sorted(files) for p, files in imports.items() if p not in LAYERS[package]}
    assert not wrong, f"stage0.{package} may import only {sorted(LAYERS[package])}: {wrong}"


def test_the_walk_sees_the_imports_it_checks() -> None:
    imports = _imports()
    assert {"engine", "store"} <= set(imports["lifecycle"])  # the lifecycle runs both
    assert "policy" in imports["engine"]
    assert "lifecycle" in imports["cli"]
    assert "sdk" in imports["__init__"]  # a lazy `from stage0 import sdk`, inside a function


def test_the_server_does_not_import_the_console() -> None:
    imports = _imports()
    assert "console" not in imports["server"], (
        f"stage0.server imports stage0.console: {sorted(imports['server']['console'])}")
    assert "server" in imports["console"]  # the console builds on the server's state and jobs
    assert {"server", "console"} <= set(imports["app"])  # the assembly of both
