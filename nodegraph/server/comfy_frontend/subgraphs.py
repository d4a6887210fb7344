"""``/global_subgraphs``: subgraph blueprints offered to every user, from folders on the server.

ComfyUI collects the ``subgraphs/*.json`` files of its custom node packs; the frontend lists them in
its node library next to the user's own blueprints (which it keeps through ``/userdata`` in the user
folder's ``subgraphs/``). nodegraph reads the ``*.json`` files of the blueprint folders: the
``subgraphs/`` folder of the ready workflows (shipped) and ``<data_dir>/subgraphs/`` (for the server's
administrator to fill). A blueprint file is what the frontend saves: a UI workflow whose
``definitions.subgraphs`` holds the subgraph.

* ``GET /global_subgraphs`` — ``{id: {"source", "name", "path", "info": {"node_pack"}}}``; ``id`` is a
  SHA-256 of source and path, so it stays the same across restarts (as ComfyUI's).
* ``GET /global_subgraphs/{id}`` — the same record with ``data``, the file's JSON text; 404 unknown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .common import RouteError
from .state import FrontendState

SOURCE = "nodegraph"


@dataclass(frozen=True)
class Blueprint:
    id: str
    name: str
    path: str
    file: Path

    def record(self, with_data: bool = False) -> dict:
        record = {"source": SOURCE, "name": self.name, "path": self.path, "info": {"node_pack": SOURCE}}
        if with_data:
            record["data"] = self.file.read_text("utf-8")
        return record


def find_blueprints(folders: tuple[Path, ...]) -> dict[str, Blueprint]:
    found: dict[str, Blueprint] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        real_folder = folder.resolve()
        for file in sorted(folder.glob("*.json")):
            if file.name.startswith(".") or not file.resolve().is_relative_to(real_folder) or not file.is_file():
                continue
            label = f"{folder.name}/{file.name}"
            blueprint_id = hashlib.sha256(f"{SOURCE}{file.resolve()}".encode()).hexdigest()
            found[blueprint_id] = Blueprint(blueprint_id, file.stem, label, file)
    return found


class GlobalSubgraphs:
    def __init__(self, state: FrontendState) -> None:
        self.state = state

    async def list(self, request: web.Request) -> web.Response:
        found = find_blueprints(self.state.blueprint_dirs)
        return web.json_response({bid: bp.record() for bid, bp in found.items()})

    async def get(self, request: web.Request) -> web.Response:
        blueprint = find_blueprints(self.state.blueprint_dirs).get(request.match_info["id"])
        if blueprint is None:
            raise RouteError(404, "not_found", f"no subgraph blueprint {request.match_info['id']!r}")
        return web.json_response(blueprint.record(with_data=True))
