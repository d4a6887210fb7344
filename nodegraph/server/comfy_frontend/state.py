"""What the ComfyUI-frontend routes share: the server, the user's folder, the model folders.

One :class:`FrontendState` per application, built by :func:`~nodegraph.server.comfy_frontend.add_routes`.
The user folder is ComfyUI's ``user/default``: ``<data_dir>/user/default/`` holds the settings
(``comfy.settings.json``) and whatever the frontend stores through ``/userdata`` (``workflows/``,
``subgraphs/``, ``user.css``, …). It lives next to the job store, so it persists across restarts with
it. One user: ComfyUI's ``--multi-user`` profiles are not implemented (``/users`` says so the way
ComfyUI does in its single-user mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

#: the one user of a single-user server, as ComfyUI names it
DEFAULT_USER = "default"
#: the folders the frontend lists at start-up (created with the user folder, so listing them is not a 404)
USER_SUBFOLDERS = ("workflows", "subgraphs")


@dataclass
class FrontendState:
    #: the application's :class:`nodegraph.server.app.Server` (store, runner, hub, engine, config); not
    #: imported here, as ``app`` imports this package
    server: Any
    #: ``<data_dir>/user`` (ComfyUI's user directory) and the default user's folder inside it
    user_dir: Path
    #: the model kinds ``/models`` lists (a function of the folders: extra model paths add kinds), and
    #: the function listing one folder's model files
    model_kinds: Callable[[Any], list[str]]
    list_models: Callable[[Path], list[str]]
    #: extra folders of subgraph blueprints (``/global_subgraphs``), besides the shipped ones
    blueprint_dirs: tuple[Path, ...] = ()
    extras: dict = field(default_factory=dict)

    @property
    def user_root(self) -> Path:
        return self.user_dir / DEFAULT_USER

    @property
    def paths(self):
        return self.server.engine.paths

    def ensure_user_folder(self) -> Path:
        root = self.user_root
        for name in USER_SUBFOLDERS:
            (root / name).mkdir(parents=True, exist_ok=True)
        return root
