"""ComfyUI custom node packs in nodegraph: the loader, the classic-protocol adapter and what the
helper modules packs import (``folder_paths``, ``comfy.utils``, ``nodes``, ``server``, …) need.

* :mod:`.loader` — finds and imports packs in ``custom_nodes/`` folders, registers their classes;
* :mod:`.classic` — a classic ComfyUI class as a nodegraph node kind (validation, cache, lists, lazy
  inputs, expansion, events: the engine's own paths, not a side path);
* :mod:`.native` — our nodes as classic classes (``nodes.SaveImage`` for packs to call or subclass);
* :mod:`.finder` — ComfyUI's import names answered with the ``comfy_shims`` package or placeholders;
* :mod:`.host`, :mod:`.current` — the process-wide and per-thread state the helper modules read;
* :mod:`.unsupported` — placeholders that fail with "not supported by nodegraph: <name>".

The helper modules themselves live in the top-level package ``comfy_shims`` (see
``docs/architecture.md``); this package never imports them by name.
"""

from .loader import CustomNodeSettings, LoadedPack, describe_packs, load_custom_nodes
from .unsupported import NotSupportedByNodegraph

__all__ = ["CustomNodeSettings", "LoadedPack", "describe_packs", "load_custom_nodes", "NotSupportedByNodegraph"]
