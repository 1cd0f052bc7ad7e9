"""Dependencies: the lock agrees with pyproject, the environment matches the lock, and limner uses only
its dependencies' public interfaces (an override of a private method broke on a minor release once)."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import limner

ROOT = Path(__file__).parents[2]
SRC = Path(limner.__file__).parent

Wanted = tuple[str, frozenset[str], SpecifierSet, str]


def _pyproject_requirements() -> set[Wanted]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set()
    groups = [(None, project["dependencies"]), *project.get("optional-dependencies", {}).items()]
    for extra, lines in groups:
        for line in lines:
            req = Requirement(line)
            markers = [str(req.marker)] if req.marker else []
            markers += [f"extra == '{extra}'"] if extra else []
            marker = str(Marker(" and ".join(markers))) if markers else ""
            wanted.add((canonicalize_name(req.name), frozenset(req.extras), req.specifier, marker))
    return wanted


def _lock() -> dict[str, object]:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def _locked_root() -> dict[str, object]:
    (root,) = [p for p in _lock()["package"] if p["name"] == "limner"]  # type: ignore[attr-defined]
    return dict(root)


def _locked_requirements() -> set[Wanted]:
    metadata = _locked_root()["metadata"]
    found = set()
    for dep in metadata["requires-dist"]:  # type: ignore[index]
        marker = str(Marker(dep["marker"])) if dep.get("marker") else ""
        found.add(
            (
                canonicalize_name(dep["name"]),
                frozenset(dep.get("extras", [])),
                SpecifierSet(dep.get("specifier", "")),
                marker,
            )
        )
    return found


def test_the_lock_agrees_with_pyproject() -> None:
    """Refresh with ``uv lock`` (README, "Dependencies") after changing pyproject's dependencies."""
    wanted, locked = _pyproject_requirements(), _locked_requirements()
    assert wanted == locked, (
        f"pyproject.toml and uv.lock disagree: only in pyproject {sorted(map(str, wanted - locked))}, "
        f"only in the lock {sorted(map(str, locked - wanted))}; run `uv lock`"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _lock()["requires-python"] == project["requires-python"]
    assert _locked_root()["metadata"].get("provides-extras", []) == sorted(project["optional-dependencies"])  # type: ignore[attr-defined]
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("dependency-groups", {})
    locked_groups = _locked_root()["metadata"].get("requires-dev", {})  # type: ignore[attr-defined]
    for group, lines in groups.items():
        wanted_group = {(canonicalize_name(Requirement(line).name), str(Requirement(line).specifier)) for line in lines}
        found_group = {
            (canonicalize_name(dep["name"]), dep.get("specifier", "")) for dep in locked_groups.get(group, [])
        }
        assert wanted_group == found_group, f"dependency group {group!r} differs between pyproject and uv.lock"
    assert set(locked_groups) == set(groups)


def test_the_installed_environment_is_the_locked_one() -> None:
    """The suite runs on exactly the locked versions (the quick start's `uv sync --locked`)."""
    locked = {p["name"]: p["version"] for p in _lock()["package"] if "version" in p}  # type: ignore[attr-defined]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    mismatched = {
        name: (version, installed[name]) for name, version in locked.items() if installed.get(name, version) != version
    }
    assert mismatched == {}, f"installed versions differ from uv.lock (locked, installed): {mismatched}"


def _private_overrides(cls: type) -> list[str]:
    """Methods ``_name`` (not dunder) that ``cls``, a class of limner's, defines over a base from a dependency."""
    found = []
    for name, member in vars(cls).items():
        if not name.startswith("_") or name.startswith("__") or name.endswith("_"):
            continue  # public, dunder, or an enum's sunder protocol (``_generate_next_value_``)
        if not isinstance(member, staticmethod | classmethod | property) and not inspect.isfunction(member):
            continue  # data such as ``_abc_impl`` or a pydantic model's private attributes
        for base in cls.__mro__[1:]:
            if base is not object and not base.__module__.startswith("limner") and name in vars(base):
                here, there = f"{cls.__module__}.{cls.__qualname__}", f"{base.__module__}.{base.__qualname__}"
                found.append(f"{here}.{name} overrides {there}")
                break
    return found


def _limner_classes() -> list[type]:
    classes: list[type] = []
    for path in SRC.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        module_name = ".".join(("limner", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        if not any(isinstance(node, ast.ClassDef) for node in ast.walk(tree)):
            continue
        module = __import__(module_name, fromlist=["_"])
        classes += [obj for _, obj in inspect.getmembers(module, inspect.isclass) if obj.__module__ == module_name]
    return classes


def test_no_class_of_limner_overrides_a_private_method_of_a_dependency() -> None:
    overrides = [found for cls in _limner_classes() for found in _private_overrides(cls)]
    assert overrides == []


def test_the_override_check_sees_an_override() -> None:
    from pydantic_settings import EnvSettingsSource

    class Overriding(EnvSettingsSource):
        def _extract_field_info(self, *args: object) -> list[tuple[str, str, bool]]:  # type: ignore[override]
            return []

    Overriding.__module__ = "limner.example"
    (found,) = _private_overrides(Overriding)
    assert "<locals>.Overriding._extract_field_info overrides pydantic_settings.sources." in found


@pytest.mark.parametrize("command", ["serve", "test"])
def test_the_quick_start_installs_from_the_lock(command: str) -> None:
    readme = (ROOT / "README.md").read_text()
    script = (ROOT / "scripts" / "venv").read_text()
    assert "uv sync --locked" in script
    assert f"scripts/venv {command}" in readme
