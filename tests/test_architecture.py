"""The import rules of docs/architecture.md, read from its module table and checked on the code.

Each module of the server package is in the table with its layer; a module imports only modules
of its own layer or below, the domain no transport or storage library, the service no gRPC or
HTTP of its own, and the sandbox nothing of the server.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parent.parent
PACKAGE: Final = REPO / "server" / "yunpian_sms_server"
ARCHITECTURE: Final = REPO / "docs" / "architecture.md"
LAYERS: Final = ("domain", "adapters", "service", "edge")
SANDBOX: Final = "sandbox"
# Third-party packages each layer must not import: it reaches them through a layer above it.
FORBIDDEN: Final = {
    "domain": {"aiohttp", "grpc", "grpc_status", "redis", "prometheus_client", "structlog"},
    "adapters": {"grpc", "grpc_status", "prometheus_client"},
    "service": {"aiohttp", "grpc", "grpc_status", "redis", "prometheus_client"},
    "edge": set(),
    SANDBOX: {"grpc", "grpc_status", "redis", "prometheus_client", "structlog"},
}
_ROW = re.compile(r"^\| `(?P<module>[a-z_]+)` \| (?P<layer>[a-z]+) \|", re.MULTILINE)


def documented_layers() -> dict[str, str]:
    """The module table of docs/architecture.md: top-level module (or package) -> layer."""
    return {m["module"]: m["layer"] for m in _ROW.finditer(ARCHITECTURE.read_text())}


def modules() -> dict[str, Path]:
    """Every module of the server package by dotted name below the package ("sandbox.faults")."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        found[".".join(parts).removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> Iterator[str]:
    """The modules a file imports, absolute."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = ".".join(path.relative_to(PACKAGE.parent).parts[: -node.level])
            yield f"{package}.{node.module}" if node.module else package


def layer_of(module: str, layers: dict[str, str]) -> str:
    return layers[module.split(".")[0]]


def test_every_module_is_in_the_architecture_table() -> None:
    layers = documented_layers()
    assert set(layers.values()) <= {*LAYERS, SANDBOX}
    missing = sorted({name.split(".")[0] for name in modules()} - set(layers))
    stale = sorted(set(layers) - {name.split(".")[0] for name in modules()})
    assert missing == [], f"docs/architecture.md does not place {missing}"
    assert stale == [], f"docs/architecture.md names modules that are gone: {stale}"


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_point_down_the_layers(module: str) -> None:
    layers = documented_layers()
    mine = layer_of(module, layers)
    wrong = []
    for imported in imports(modules()[module]):
        top = imported.split(".")[0]
        if top in FORBIDDEN[mine]:
            wrong.append(f"{imported} (no {top} in the {mine} layer)")
        if top != "yunpian_sms_server" or imported == "yunpian_sms_server":
            continue
        target = imported.removeprefix("yunpian_sms_server.")
        theirs = layer_of(target, layers)
        if mine == SANDBOX or theirs == SANDBOX:
            same_part = target.split(".")[0] in (SANDBOX, "sandbox_matching")
            if mine == SANDBOX and not same_part:
                wrong.append(f"{imported} (the sandbox depends on nothing of the server)")
            if theirs == SANDBOX and mine != SANDBOX and module not in ("app", "cli"):
                wrong.append(f"{imported} (only app and cli start the sandbox)")
            continue
        if LAYERS.index(theirs) > LAYERS.index(mine):
            wrong.append(f"{imported} ({theirs}, above {mine})")
    assert wrong == [], f"{module} ({mine}) imports {wrong}"


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    graph = {
        name: {
            imported.removeprefix("yunpian_sms_server.")
            for imported in imports(path)
            if imported.startswith("yunpian_sms_server.")
        }
        for name, path in modules().items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done or name not in graph:
            return
        assert name not in visiting, f"import circle: {' -> '.join([*visiting, name])}"
        visiting.append(name)
        for target in sorted(graph[name]):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
