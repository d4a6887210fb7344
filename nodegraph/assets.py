"""Where the web canvas's files and the ready workflows are, in a wheel install or in a clone.

The repository keeps them in ``web/`` (with litegraph.js vendored in ``web/vendor/litegraph/``) and
``workflows/``. A wheel carries them inside the package, as ``nodegraph/web/`` and
``nodegraph/workflows/`` (pyproject maps the two folders as package data). An editable install
(``pip install -e .``) imports ``nodegraph`` from the clone, where neither folder is inside the
package: there the repository's folders, next to ``nodegraph/``, are used.

No web framework here: the CLI (``nodegraph run NAME.json``) and the server both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

#: the files the page cannot work without, relative to the web folder
CANVAS_FILES = ("index.html", "style.css", "src/main.js", "vendor/litegraph/litegraph.core.js",
                "vendor/litegraph/litegraph.css")


def source_root() -> Path | None:
    """The repository root when ``nodegraph`` is imported from a clone (editable install), else None."""
    root = PACKAGE.parent
    if (root / "pyproject.toml").is_file() and (root / "nodegraph" / "__init__.py").is_file():
        return root
    return None


def _asset_dir(name: str) -> Path:
    installed = PACKAGE / name
    if installed.is_dir():
        return installed
    root = source_root()
    return root / name if root is not None else installed


def web_dir() -> Path:
    """The canvas's folder: ``nodegraph/web`` in a wheel install, the clone's ``web/`` otherwise."""
    return _asset_dir("web")


def workflows_dir() -> Path:
    """The ready workflows' folder: ``nodegraph/workflows`` in a wheel, the clone's ``workflows/``."""
    return _asset_dir("workflows")


@dataclass(frozen=True)
class MissingCanvas:
    """Canvas files that are not where the server looks for them, and how to get them back."""

    folder: Path
    missing: tuple[str, ...]

    @property
    def fix(self) -> str:
        if source_root() is not None and self.folder.parent == source_root():
            return ("restore them from the repository (git checkout -- web), or reinstall from a fresh clone; "
                    "litegraph.js is vendored in web/vendor/litegraph/, no npm step is needed")
        return "reinstall nodegraph (pip install --force-reinstall --no-deps nodegraph)"

    def message(self) -> str:
        return (f"the web canvas's files are missing from {self.folder}: {', '.join(self.missing)}; "
                f"{self.fix}")


def missing_canvas_files(folder: Path | None = None) -> MissingCanvas | None:
    """Which of :data:`CANVAS_FILES` are absent from ``folder`` (default :func:`web_dir`); None if none."""
    folder = web_dir() if folder is None else Path(folder)
    missing = tuple(name for name in CANVAS_FILES if not (folder / name).is_file())
    return MissingCanvas(folder, missing) if missing else None


def find_workflow(path: str | Path) -> Path:
    """``path`` if it exists; else the shipped workflow of that name (``design_loop.json`` or
    ``workflows/design_loop.json`` from a wheel install, outside a clone); else ``path`` unchanged,
    so that the caller's "does not exist" names what was asked."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    if len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "workflows"):
        shipped = workflows_dir() / path.name
        if shipped.is_file():
            return shipped
    return path
