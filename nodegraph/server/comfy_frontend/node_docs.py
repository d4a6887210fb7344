"""``GET /docs/{node}/{locale}.md``: the node help panel's pages.

The frontend asks for ``/docs/<class>/<locale>.md`` (base-relative, no ``/api``) when a node's help is
opened. ComfyUI serves these from the ``comfyui-embedded-docs`` package (its ``docs/`` folder, one
folder per class with a page per locale). Here:

1. when that package is installed, its page — for ``<locale>``, else its English one;
2. else, for a class nodegraph knows, a page written from the class's own description: what it does,
   its inputs (type, default, range, choices, tooltip) and its outputs, as ``/object_info`` gives them;
3. else 404.

Names are a class name and a locale file name resolved inside the docs folder (no ``..``, no symbolic
link out). Pages are ``text/markdown``; the frontend renders them with its sanitizing Markdown
renderer.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from .common import RouteError
from .state import FrontendState

DOCS_MODULE = "comfyui_embedded_docs"
LOCALE_FILE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z]{2,4})?\.md$")
CLASS_NAME = re.compile(r"^[A-Za-z0-9_. +()-]{1,200}$")
MARKDOWN = "text/markdown"


def embedded_docs_dir() -> Path | None:
    """The installed ``comfyui-embedded-docs`` package's ``docs/`` folder, or ``None``."""
    spec = importlib.util.find_spec(DOCS_MODULE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "docs"
        if folder.is_dir():
            return folder
    return None


def _inside(folder: Path, *parts: str) -> Path | None:
    try:
        real = folder.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() and real.is_relative_to(folder.resolve()) else None


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _describe_input(name: str, spec: list, section: str) -> str:
    kind, options = (spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list):
        kind, options = "COMBO", {**options, "options": kind}
    details = []
    if "default" in options:
        details.append(f"default `{options['default']}`")
    if "min" in options or "max" in options:
        details.append(f"from {options.get('min', '…')} to {options.get('max', '…')}")
    choices = options.get("options")
    if isinstance(choices, list) and choices:
        shown = ", ".join(f"`{c}`" for c in choices[:12]) + (", …" if len(choices) > 12 else "")
        details.append(f"one of {shown}")
    if options.get("tooltip"):
        details.append(str(options["tooltip"]))
    optional = " (optional)" if section == "optional" else ""
    return f"| {_cell(name)}{optional} | {_cell(kind)} | {_cell('; '.join(details))} |"


def generated_page(info: dict) -> str:
    """A help page from one class's ``/object_info`` entry."""
    lines = [f"# {info.get('display_name') or info['name']}", ""]
    if info.get("description"):
        lines += [str(info["description"]), ""]
    lines += [f"Category: `{info.get('category', '')}`. Class: `{info['name']}`"
              + (" (an output node: it runs when a prompt is queued)." if info.get("output_node") else "."), ""]
    inputs = info.get("input") or {}
    rows = [_describe_input(name, spec, section)
            for section in ("required", "optional") for name, spec in (inputs.get(section) or {}).items()
            if isinstance(spec, list) and spec]
    if rows:
        lines += ["## Inputs", "", "| input | type | details |", "|---|---|---|", *rows, ""]
    outputs = list(zip(info.get("output_name") or [], info.get("output") or []))
    if outputs:
        tips = info.get("output_tooltips") or []
        lines += ["## Outputs", "", "| output | type | details |", "|---|---|---|"]
        lines += [f"| {_cell(n)} | {_cell(t)} | {_cell(tips[i] if i < len(tips) and tips[i] else '')} |"
                  for i, (n, t) in enumerate(outputs)]
        lines.append("")
    return "\n".join(lines)


class NodeDocs:
    def __init__(self, state: FrontendState, docs_dir: Path | None = None, *, find_package: bool = True) -> None:
        self.state = state
        self.docs_dir = docs_dir if docs_dir is not None or not find_package else embedded_docs_dir()

    async def get(self, request: web.Request) -> web.StreamResponse:
        name, file = request.match_info["node"], request.match_info["file"]
        if not CLASS_NAME.match(name) or ".." in name or not LOCALE_FILE.match(file):
            raise RouteError(404, "not_found", f"no help page {name}/{file}")
        if self.docs_dir is not None:
            page = _inside(self.docs_dir, name, file) or _inside(self.docs_dir, name, "en.md")
            if page is not None:
                return web.FileResponse(page, headers={"Content-Type": f"{MARKDOWN}; charset=utf-8"})
        registry = self.state.server.engine.registry
        info = registry.object_info(name, paths=self.state.paths).get(name) if registry.get(name) else None
        if info is None:
            raise RouteError(404, "not_found", f"no help page for {name!r}")
        return web.Response(text=generated_page(info), content_type=MARKDOWN, charset="utf-8")
