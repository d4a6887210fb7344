"""Packaging facts a wheel depends on: every Python package folder is listed in pyproject.toml (a renamed
folder cannot be found by setuptools' ``packages.find``), every built-in family is an entry point, and
the installed import names are ``nodegraph``, ``nodegraph_nodes`` and ``comfy_shims`` (ComfyUI's helper
modules for custom node packs, answered under ComfyUI's names only while packs load) only.

The wheel itself is built, installed and served in ``tests/web/test_wheel_install.py``.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import nodegraph_nodes

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
#: data-only packages (no __init__.py): the canvas and the ready workflows
DATA_PACKAGES = {"nodegraph.web", "nodegraph.workflows"}


def python_packages(import_name: str, folder: Path) -> set[str]:
    """Every folder below ``folder`` with an ``__init__.py``, as dotted names under ``import_name``."""
    found = set()
    for init in folder.rglob("__init__.py"):
        relative = init.parent.relative_to(folder)
        if "__pycache__" in relative.parts:
            continue
        found.add(".".join((import_name, *relative.parts)))
    return found


def test_every_package_folder_is_listed_and_nothing_else() -> None:
    package_dir = SETUPTOOLS["package-dir"]
    on_disk = set()
    for import_name, folder in package_dir.items():
        if import_name not in DATA_PACKAGES:
            on_disk |= python_packages(import_name, ROOT / folder)
    listed = set(SETUPTOOLS["packages"])
    assert on_disk - listed == set(), "package folders missing from pyproject's [tool.setuptools] packages"
    assert listed - DATA_PACKAGES - on_disk == set(), "listed packages with no folder"
    assert DATA_PACKAGES <= listed


def test_top_level_import_names_are_nodegraph_and_its_node_library() -> None:
    top_level = {name.split(".")[0] for name in SETUPTOOLS["packages"]}
    # comfy_shims: ComfyUI's helper modules for custom node packs, never installed under ComfyUI's names
    assert top_level == {"nodegraph", "nodegraph_nodes", "comfy_shims"}
    assert "training" not in top_level  # the shapes world's training scripts stay out of the wheel


def test_every_builtin_family_is_an_entry_point() -> None:
    declared = PYPROJECT["project"]["entry-points"]["nodegraph.nodes"]
    assert set(declared) == set(nodegraph_nodes.FAMILIES)
    for name, target in declared.items():
        assert target == f"nodegraph_nodes.{name}:node_modules"
    installed = {ep.name for ep in metadata.entry_points(group="nodegraph.nodes")
                 if ep.dist is not None and ep.dist.name == "nodegraph"}
    assert installed == set(declared), "reinstall (pip install -e .): the installed entry points are stale"
