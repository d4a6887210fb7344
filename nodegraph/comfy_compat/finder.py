"""ComfyUI's import names inside a nodegraph process: ``folder_paths``, ``comfy.utils``, ``nodes``, …

Custom node packs import ComfyUI's modules by their bare names. nodegraph ships its own versions in
the top-level package ``comfy_shims`` (``comfy_shims.folder_paths``, ``comfy_shims.comfy.utils``, …)
and :class:`ComfyNameFinder`, a ``sys.meta_path`` finder, answers ComfyUI's names with them:

* a name ``comfy_shims`` provides → that module (the same object under both names);
* any other name under ``comfy``, ``comfy_extras``, ``comfy_execution``, ``comfy_api`` or
  ``comfy_config`` → a placeholder module (:mod:`nodegraph.comfy_compat.unsupported`) that imports
  fine and fails with "not supported by nodegraph: <name>" when something in it is called;
* every other name → not ours (the finder steps aside).

Nothing is put on ``sys.path`` and nothing is installed under ComfyUI's names, so the finder only
exists in a nodegraph process that loads custom nodes (:func:`install`): a ComfyUI checkout next to
nodegraph, or in the same environment, is never shadowed. If ComfyUI's own modules are already
imported in this process (nodegraph embedded in ComfyUI), :func:`install` refuses rather than mix the
two.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType

from .unsupported import placeholder_module

SHIM_PACKAGE = "comfy_shims"
#: names answered only exactly (generic words a pack's own module could also use)
EXACT = frozenset({"folder_paths", "nodes", "server", "latent_preview", "node_helpers"})
#: names answered with everything below them
TREES = frozenset({"comfy", "comfy_extras", "comfy_execution", "comfy_api", "comfy_config"})

_lock = threading.Lock()


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str | None) -> None:
        self.target = target  # the comfy_shims module, or None for a placeholder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.target is None:
            return placeholder_module(spec.name)
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        return None  # the module is complete already


class ComfyNameFinder(importlib.abc.MetaPathFinder):
    """Answers ComfyUI's module names with ``comfy_shims`` modules or placeholders (module doc)."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - importlib's signature
        root = fullname.partition(".")[0]
        if fullname not in EXACT and root not in TREES:
            return None
        shim = f"{SHIM_PACKAGE}.{fullname}"
        found = importlib.util.find_spec(shim) if _parent_is_shim(shim) else None
        if found is None and fullname in EXACT:
            return None
        loader = _AliasLoader(shim if found is not None else None)
        is_package = found.submodule_search_locations is not None if found is not None else True
        return importlib.util.spec_from_loader(fullname, loader, is_package=is_package)


def _parent_is_shim(shim: str) -> bool:
    """``comfy_shims.a.b`` can only exist when ``comfy_shims.a`` is a real shim package."""
    parent = shim.rpartition(".")[0]
    if parent == SHIM_PACKAGE:
        return True
    module = sys.modules.get(parent)
    if module is None:
        try:
            spec = importlib.util.find_spec(parent)
        except (ImportError, ValueError):
            return False
        return spec is not None and spec.submodule_search_locations is not None
    return hasattr(module, "__path__")


FINDER = ComfyNameFinder()


def foreign_comfy_modules() -> list[str]:
    """ComfyUI modules already imported in this process that are not ours (a real ComfyUI)."""
    found = []
    for name in sorted(EXACT | TREES):
        module = sys.modules.get(name)
        if module is not None and not (getattr(module, "__name__", "").startswith(SHIM_PACKAGE)
                                       or type(module).__name__ == "PlaceholderModule"):
            found.append(name)
    return found


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); refuse next to a real ComfyUI's modules."""
    with _lock:
        if FINDER in sys.meta_path:
            return
        foreign = foreign_comfy_modules()
        if foreign:
            raise RuntimeError("ComfyUI's own modules are already imported in this process ("
                               f"{', '.join(foreign)}); nodegraph will not mix its helper modules with them")
        sys.meta_path.insert(0, FINDER)


def installed() -> bool:
    return FINDER in sys.meta_path
