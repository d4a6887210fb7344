"""Workflow templates for the frontend's templates dialog: our ready workflows, plus ComfyUI's template
packages when they are installed.

The frontend reads two sources:

* the **core index**, ``/templates/index.json`` (``index.<locale>.json`` for other languages): a list
  of categories ``{"moduleName": "default", "title", "type", "templates": [{"name", "title",
  "description", "mediaType", "mediaSubtype", "tags", …}]}``; it then fetches ``/templates/<name>.json``
  to open one and ``/templates/<name>-1.<mediaSubtype>`` as its thumbnail; and
  ``/templates/index_logo.json`` (``{provider: logo file}``);
* ``/api/workflow_templates``: ``{module: [names]}`` of custom node packs' example workflows (ComfyUI
  collects each pack's ``example_workflows/``). nodegraph's node families ship none: ``{}``.

Our category, "nodegraph", lists every UI-format (canvas) file in the ready-workflows folder
(``workflows/``, shipped in the wheel): ``txt2img.ui.json`` is the template ``txt2img``. Its thumbnail
is drawn from the graph (:mod:`.thumbnail`), a PNG. When ComfyUI's template packages are installed
(``comfyui-workflow-templates``: the modules named ``comfyui_workflow_templates*`` that hold a
``templates/`` folder), their index's categories follow ours and their files (workflows, thumbnails,
localized indexes) are served from those folders — ours win on a name clash. Every name is a single
file name resolved inside its folder (no ``..``, no symbolic link out).
"""

from __future__ import annotations

import json
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ...assets import workflows_dir
from .common import RouteError
from .thumbnail import render_graph

CATEGORY = "nodegraph"
PACKAGE_PREFIX = "comfyui_workflow_templates"
THUMBNAIL = re.compile(r"^(?P<name>.+)-1\.png$")
INDEX = re.compile(r"^index(\.[A-Za-z_-]{2,12})?\.json$")
SAFE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,200}$")
MEDIA_TYPES = {".json": "application/json", ".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg",
               ".jpeg": "image/jpeg", ".mp4": "video/mp4", ".webm": "video/webm", ".mp3": "audio/mpeg",
               ".svg": "image/svg+xml", ".gif": "image/gif"}


def _inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` for a plain file name whose real path is a file inside ``folder``."""
    if not SAFE_FILE.match(name) or ".." in name:
        return None
    try:
        real = (folder / name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return real if real.is_file() and real.is_relative_to(folder.resolve()) else None


def package_template_dirs() -> tuple[Path, ...]:
    """The ``templates/`` folders of the installed ComfyUI template packages (none when not installed)."""
    found = []
    for module in pkgutil.iter_modules():
        if not module.name.startswith(PACKAGE_PREFIX) or not hasattr(module.module_finder, "path"):
            continue
        folder = Path(module.module_finder.path) / module.name / "templates"
        if folder.is_dir():
            found.append(folder)
    return tuple(sorted(found))


@dataclass(frozen=True)
class Template:
    name: str
    path: Path

    def entry(self, workflow: dict) -> dict[str, Any]:
        nodes = [n for n in workflow.get("nodes") or [] if isinstance(n, dict)]
        kinds: list[str] = []
        for node in sorted(nodes, key=lambda n: (n.get("order", 0), str(n.get("id")))):
            kind = str(node.get("type", ""))
            if kind and kind not in kinds:
                kinds.append(kind)
        shown = ", ".join(kinds[:6]) + (", …" if len(kinds) > 6 else "")
        return {"name": self.name, "title": self.name.replace("_", " "),
                "description": f"nodegraph ready workflow ({len(nodes)} nodes: {shown})",
                "mediaType": "image", "mediaSubtype": "png", "tags": [CATEGORY], "models": [],
                "sourceModule": "default"}


class TemplateLibrary:
    """Our templates (from ``workflows``) and the installed packages' folders."""

    def __init__(self, workflows: Path | None = None, package_dirs: tuple[Path, ...] | None = None) -> None:
        self.workflows = workflows_dir() if workflows is None else Path(workflows)
        self.package_dirs = package_template_dirs() if package_dirs is None else tuple(package_dirs)
        self._thumbnails: dict[tuple[Path, float], bytes] = {}

    def ours(self) -> dict[str, Template]:
        """Template name → file, for every UI-format workflow (``x.ui.json`` wins over ``x.json``)."""
        found: dict[str, Template] = {}
        if not self.workflows.is_dir():
            return found
        for path in sorted(self.workflows.glob("*.json"), key=lambda p: (not p.name.endswith(".ui.json"), p.name)):
            name = path.name.removesuffix(".json").removesuffix(".ui")
            if name in found or _inside(self.workflows, path.name) is None:
                continue
            workflow = self._load(path)
            if workflow is not None:
                found[name] = Template(name, path)
        return found

    @staticmethod
    def _load(path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("nodes"), list) else None

    def index(self, locale_file: str = "index.json") -> list[dict]:
        templates = []
        for template in self.ours().values():
            workflow = self._load(template.path)
            if workflow is not None:
                templates.append(template.entry(workflow))
        categories: list[dict] = []
        if templates:
            categories.append({"moduleName": "default", "title": CATEGORY, "type": "image",
                               "category": CATEGORY, "icon": "icon-[lucide--workflow]", "templates": templates})
        for folder in self.package_dirs:
            path = _inside(folder, locale_file) or _inside(folder, "index.json")
            data = self._json(path) if path else None
            if isinstance(data, list):
                categories += [c for c in data if isinstance(c, dict)]
        return categories

    def logos(self) -> dict:
        merged: dict = {}
        for folder in self.package_dirs:
            path = _inside(folder, "index_logo.json")
            data = self._json(path) if path else None
            if isinstance(data, dict):
                merged.update(data)
        return merged

    @staticmethod
    def _json(path: Path) -> Any:
        try:
            return json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def file(self, name: str) -> tuple[bytes | Path, str] | None:
        """What ``/templates/<name>`` serves (bytes or a file) and its content type, or ``None``."""
        ours = self.ours()
        if name.endswith(".json") and name[:-5] in ours:
            return ours[name[:-5]].path, "application/json"
        match = THUMBNAIL.match(name)
        if match and match["name"] in ours:
            return self.thumbnail(ours[match["name"]].path), "image/png"
        for folder in self.package_dirs:
            path = _inside(folder, name)
            if path is not None:
                return path, MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return None

    def thumbnail(self, path: Path) -> bytes:
        key = (path, path.stat().st_mtime)
        if key not in self._thumbnails:
            self._thumbnails[key] = render_graph(self._load(path) or {})
        return self._thumbnails[key]


class Templates:
    def __init__(self, library: TemplateLibrary) -> None:
        self.library = library

    async def workflow_templates(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        import asyncio

        name = request.match_info["name"]
        loop = asyncio.get_running_loop()
        if INDEX.match(name):
            index = await loop.run_in_executor(None, self.library.index, name)
            return web.json_response(index, headers={"Cache-Control": "no-cache"})
        if name == "index_logo.json":
            return web.json_response(await loop.run_in_executor(None, self.library.logos))
        found = await loop.run_in_executor(None, self.library.file, name)
        if found is None:
            raise RouteError(404, "not_found", f"no template file {name!r}")
        content, ctype = found
        if isinstance(content, Path):
            return web.FileResponse(content, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
        return web.Response(body=content, content_type=ctype, headers={"Cache-Control": "no-cache"})
