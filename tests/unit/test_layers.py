"""The layer rule of DESIGN §2: imports point down only."""

from __future__ import annotations

import ast
from pathlib import Path

import limner

SRC = Path(limner.__file__).parent

# Lower number = lower layer. A module may import its own layer or lower ones.
LAYERS: dict[str, int] = {
    "errors": 0,
    "crashpoints": 0,
    "periodic": 0,
    "config": 0,
    "ids": 0,
    "backends": 1,
    "mcp_client": 1,
    "storage": 1,
    "db": 1,
    "imaging": 1,
    "imaging_structure": 1,
    "net": 1,
    "throttle": 1,
    "library": 2,
    "probes": 2,
    "accounts": 2,
    "keys": 2,
    "usage": 2,
    "chat": 3,
    "tools": 3,
    "runtime": 4,
    "cli": 4,
    "cli_output": 4,
    "api": 4,
    "web": 4,
    "mcp_server": 4,
    "__main__": 4,
}
FRONT_END_ONLY = ("fastapi", "typer", "uvicorn", "starlette")


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = rel.parts
        if parts[0] in ("sandbox", "__init__") or "migrations" in parts:
            continue
        top = "mcp_client" if parts[0].startswith("mcp_client") else parts[0]
        found.append((top, path))
    return found


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_imports_point_down_only() -> None:
    problems = []
    for top, path in _modules():
        assert top in LAYERS, f"{top} is not in the layer map"
        for name in _imports(path):
            if name.startswith("limner."):
                target = name.split(".")[1]
                target = "mcp_client" if target.startswith("mcp_client") else target
                if target == "sandbox" and top != "runtime" and top != "cli":
                    problems.append(f"{path.name} imports the sandbox")
                elif target in LAYERS and LAYERS[target] > LAYERS[top]:
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
            if LAYERS[top] < 4 and name.split(".")[0] in FRONT_END_ONLY:
                problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert problems == []


def test_backends_do_not_touch_storage_or_database() -> None:
    for top, path in _modules():
        if top == "backends":
            for name in _imports(path):
                assert not name.startswith(("limner.db", "limner.storage", "limner.library")), path


def test_sandbox_imports_nothing_of_limner_but_itself() -> None:
    for path in (SRC / "sandbox").rglob("*.py"):
        for name in _imports(path):
            if name.startswith("limner"):
                assert name.startswith("limner.sandbox"), f"{path.name} imports {name}"


def test_public_names_are_sorted() -> None:
    assert list(limner.__all__) == sorted(limner.__all__)
    for name in limner.__all__:
        assert hasattr(limner, name)
