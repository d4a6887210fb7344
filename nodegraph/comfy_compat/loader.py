"""Loading ComfyUI custom node packs from ``custom_nodes/`` folders into a node registry.

Each entry of a folder is one pack, imported as ComfyUI imports it: a sub-folder with
``__init__.py`` or a single ``.py`` file, in name order; ``__pycache__``, hidden names and names
ending in ``.disabled`` are skipped. The module is registered in ``sys.modules`` under the name
ComfyUI gives it (the folder's path with ``.`` written ``_x_``; a file's path without ``.py``), so
the pack's relative imports work. From the module:

* ``NODE_CLASS_MAPPINGS`` — each class becomes a node (:mod:`nodegraph.comfy_compat.classic`); its
  ``/object_info`` ``python_module`` is ``custom_nodes.<pack>``. A name that a built-in node already
  has is skipped (ComfyUI does not let packs replace core nodes); between packs, the later one wins;
* ``NODE_DISPLAY_NAME_MAPPINGS`` — display names;
* without ``NODE_CLASS_MAPPINGS``, a V3 ``comfy_entrypoint`` (``async`` or not): its extension's
  ``on_load()`` then ``get_node_list()``, each class registered under its schema's ``node_id``;
* ``WEB_DIRECTORY`` — the pack's frontend files, served under ``/extensions/<pack>/``.

The engine's input folder is created first, as ComfyUI's is (packs list it in ``INPUT_TYPES``).

Before the first pack is imported, ComfyUI's module names are made importable
(:mod:`nodegraph.comfy_compat.finder`) and the helper modules are bound to the engine's folders and
registry (:mod:`nodegraph.comfy_compat.host`). A pack that fails to import, or a class that does not
follow the protocol, is recorded (a :class:`~nodegraph.registry.PackLoadError` on the registry, a
line in the log) and the other packs load. A pack is imported once per process: loading the same
folder for a second engine registers the same module's classes again.

Custom nodes are code: they load only from the folders the user names (``--custom-nodes-dir``,
default ``./custom_nodes``) or from installed distributions (the ``nodegraph.nodes`` entry points);
nothing in the HTTP API loads or installs them.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Iterable

from ..context import Paths
from ..registry import NodeRegistry, PackLoadError
from . import finder
from .classic import build_node_class, run_awaitable
from .host import HOST
from .routes import RecordedRoute

log = logging.getLogger("nodegraph.custom_nodes")

#: where packs are looked for when no folder is named (``$NODEGRAPH_CUSTOM_NODES`` overrides)
DEFAULT_DIR = Path("custom_nodes")
#: ``python_module`` prefix of pack nodes (ComfyUI's ``RELATIVE_PYTHON_MODULE``)
MODULE_PARENT = "custom_nodes"


@dataclass(frozen=True)
class CustomNodeSettings:
    """Which packs to load: ``dirs`` (in order), none at all (``enabled=False``,
    ``--disable-custom-nodes``), or all but the ``disabled`` pack names (``--disable-custom-node``)."""

    dirs: tuple[Path, ...] = ()
    enabled: bool = True
    disabled: frozenset[str] = frozenset()

    @classmethod
    def default(cls, dirs: Iterable[Path] = (), *, enabled: bool = True,
                disabled: Iterable[str] = ()) -> "CustomNodeSettings":
        """The named folders, else ``$NODEGRAPH_CUSTOM_NODES``, else ``./custom_nodes``."""
        chosen = tuple(Path(d) for d in dirs)
        if not chosen:
            env = os.environ.get("NODEGRAPH_CUSTOM_NODES")
            chosen = tuple(Path(p) for p in env.split(os.pathsep) if p) if env else (DEFAULT_DIR,)
        return cls(chosen, enabled, frozenset(disabled))


@dataclass
class LoadedPack:
    """One pack found in a folder: what it registered, or why it did not load."""

    name: str
    path: Path
    nodes: tuple[str, ...] = ()
    display_names: dict[str, str] = field(default_factory=dict)
    web_dir: Path | None = None
    error: str | None = None
    disabled: bool = False
    seconds: float = 0.0
    #: classes the pack offers (its NODE_CLASS_MAPPINGS, or its V3 node list)
    offered: int = 0
    #: its names a built-in node already has (not used, as in ComfyUI)
    shadowed: tuple[str, ...] = ()
    #: HTTP routes the pack declared while it was imported (the server adds them)
    routes: tuple[RecordedRoute, ...] = ()
    #: its module imported (``error`` may still name classes that did not register)
    imported: bool = False

    @property
    def python_module(self) -> str:
        return f"{MODULE_PARENT}.{self.name}"

    @property
    def ok(self) -> bool:
        """Imported and not disabled: its routes and web folder are served, as ComfyUI serves those of
        every pack that imported, even when some of its classes did not register (``error`` says which)."""
        return self.imported and not self.disabled


#: path → the imported module and the routes it declared, or the import's error text (a pack is
#: imported once per process)
_IMPORTED: dict[str, tuple[ModuleType, tuple[RecordedRoute, ...]] | str] = {}
_import_lock = threading.RLock()


class PackImportFailed(ImportError):
    """A pack whose import failed earlier in this process (the message is that failure)."""


def pack_entries(folder: Path) -> list[tuple[str, Path]]:
    """``(pack name, path)`` of each pack in ``folder``, as ComfyUI picks them, in name order."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(os.listdir(folder)):
        path = folder / entry
        if entry == "__pycache__" or entry.startswith(".") or entry.endswith(".disabled"):
            continue
        if path.is_file():
            if path.suffix != ".py":
                continue
            found.append((path.stem, path))
        elif path.is_dir():
            found.append((entry, path))
    return found


def module_name_for(path: Path) -> str:
    """The ``sys.modules`` name ComfyUI gives a pack (its absolute path, ``.`` → ``_x_`` for folders)."""
    absolute = os.path.abspath(path)
    return os.path.splitext(absolute)[0] if os.path.isfile(absolute) else absolute.replace(".", "_x_")


def import_pack(path: Path) -> tuple[ModuleType, tuple[RecordedRoute, ...]]:
    """Import one pack (once per process): its module and the routes it declared; raises what the
    pack's import raised."""
    key = os.path.abspath(path)
    with _import_lock:
        done = _IMPORTED.get(key)
        if isinstance(done, tuple):
            return done
        if isinstance(done, str):
            raise PackImportFailed(done)
        init = path / "__init__.py" if path.is_dir() else path
        if not init.is_file():
            message = f"{path.name} is a folder without __init__.py (not a Python package)"
            _IMPORTED[key] = message
            raise PackImportFailed(message)
        name = module_name_for(path)
        spec = importlib.util.spec_from_file_location(name, init)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {init}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        routes_before = len(HOST.routes)
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            message = import_failure(exc, path)
            _IMPORTED[key] = message
            if isinstance(exc, Exception):
                raise PackImportFailed(message) from exc
            raise
        result = (module, tuple(list(HOST.routes)[routes_before:]))
        _IMPORTED[key] = result
        return result


def import_failure(exc: BaseException, path: Path) -> str:
    """What a pack's failed import says; a missing third-party module gets the fix."""
    text = f"{type(exc).__name__}: {exc}"
    missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
    if missing:
        top = missing.partition(".")[0]
        folder = path if path.is_dir() else path.parent
        requirements = folder / "requirements.txt"
        listed = f" ({requirements} lists what the pack needs)" if path.is_dir() and requirements.is_file() else ""
        text += f"; install the Python package that provides '{top}' in nodegraph's environment{listed}"
    return text


def load_custom_nodes(registry: NodeRegistry, settings: CustomNodeSettings, *, paths: Paths | None = None,
                      device: str | None = None) -> list[LoadedPack]:
    """Load every pack of ``settings.dirs`` into ``registry``; the packs found (loaded, failed,
    disabled) are returned and kept in ``registry.custom_packs``; failures also go to
    ``registry.load_errors``."""
    packs: list[LoadedPack] = []
    if not settings.enabled:
        return packs
    entries = [(name, path) for folder in settings.dirs for name, path in pack_entries(Path(folder))]
    HOST.bind(paths=paths, device=device, custom_nodes_dirs=tuple(Path(d).resolve() for d in settings.dirs))
    if not entries:
        return packs
    try:  # ComfyUI's input folder exists before packs load (packs list it in INPUT_TYPES)
        Path(HOST.paths.input_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot create %s for custom node packs: %s", HOST.paths.input_dir, exc)
    finder.install()
    HOST.bind(registry=registry)
    builtin = set(registry.names())
    for name, path in entries:
        pack = LoadedPack(name, path)
        packs.append(pack)
        if name in settings.disabled:
            pack.disabled = True
            log.info("custom node pack %s is disabled", name)
            continue
        start = time.perf_counter()
        try:
            module, pack.routes = import_pack(path)
        except BaseException as exc:  # noqa: BLE001 - a pack's import must not stop the others
            if isinstance(exc, KeyboardInterrupt):
                raise
            pack.error = f"import failed: {exc if isinstance(exc, PackImportFailed) else f'{type(exc).__name__}: {exc}'}"
        else:
            pack.imported = True
            register_module(registry, pack, module, builtin)
        pack.seconds = time.perf_counter() - start
        if pack.error is not None:
            log.warning("custom node pack %s (%s) %s: %s", name, path,
                        "loaded in part" if pack.imported else "failed to load", pack.error)
            registry.load_errors.append(PackLoadError(f"custom_nodes/{name}", pack.error))
    HOST.bind(registry=registry)  # NODE_CLASS_MAPPINGS now holds the packs' classes too
    registry.custom_packs.extend(packs)
    return packs


def register_module(registry: NodeRegistry, pack: LoadedPack, module: ModuleType, builtin: set[str]) -> None:
    """Register a pack module's classes (``NODE_CLASS_MAPPINGS``) and read its web folder."""
    web = getattr(module, "WEB_DIRECTORY", None)
    if web is not None:
        folder = Path(os.path.abspath(os.path.join(os.path.dirname(module.__file__ or str(pack.path)), str(web))))
        if folder.is_dir():
            pack.web_dir = folder
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    problems: list[str] = []
    if mappings is None:
        if hasattr(module, "comfy_entrypoint"):
            try:
                mappings, display, problems = v3_node_classes(module.comfy_entrypoint)
            except Exception as exc:  # noqa: BLE001 - a pack's entry point must not stop the others
                pack.error = f"comfy_entrypoint failed: {type(exc).__name__}: {exc}"
                return
        else:
            pack.error = "it has no NODE_CLASS_MAPPINGS (nor a V3 comfy_entrypoint)"
            return
    elif not isinstance(mappings, dict):
        pack.error = f"NODE_CLASS_MAPPINGS is {type(mappings).__name__}, not a dict"
        return
    else:
        display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
        display = dict(display) if isinstance(display, dict) else {}
    registered = []
    shadowed = []
    pack.offered = len(mappings) + len(problems)  # problems so far: V3 classes whose schema failed
    for class_type, pack_cls in mappings.items():
        class_type = str(class_type)
        if class_type in builtin:
            log.debug("custom node pack %s: %s is a built-in node; the pack's class is not used",
                      pack.name, class_type)
            shadowed.append(class_type)
            continue
        try:
            if callable(getattr(pack_cls, "GET_SCHEMA", None)):  # V3: ComfyUI tells the class its module
                pack_cls.RELATIVE_PYTHON_MODULE = pack.python_module
            node_cls = build_node_class(class_type, pack_cls, pack.name, display.get(class_type))
        except Exception as exc:  # noqa: BLE001 - one bad class must not drop the pack's others
            problems.append(f"{class_type}: {type(exc).__name__}: {exc}")
            continue
        registry.register(node_cls, name=class_type, source=pack.python_module)
        registered.append(class_type)
    pack.nodes = tuple(registered)
    pack.shadowed = tuple(shadowed)
    pack.display_names = {k: str(v) for k, v in display.items() if k in registered}
    if problems:
        pack.error = f"{len(problems)} class(es) not loaded: " + "; ".join(problems)


def v3_node_classes(entrypoint) -> tuple[dict[str, type], dict[str, str], list[str]]:  # noqa: ANN001
    """A V3 pack's classes (``comfy_entrypoint()`` → extension → ``on_load()``, ``get_node_list()``),
    keyed by their schema's ``node_id``, their display names, and the classes whose schema failed."""
    extension = run_awaitable(entrypoint())
    if not callable(getattr(extension, "get_node_list", None)):
        raise TypeError(f"comfy_entrypoint returned {type(extension).__name__}, not a ComfyExtension")
    if callable(getattr(extension, "on_load", None)):
        run_awaitable(extension.on_load())
    node_list = run_awaitable(extension.get_node_list())
    if not isinstance(node_list, list):
        raise TypeError(f"get_node_list() returned {type(node_list).__name__}, not a list of node classes")
    mappings: dict[str, type] = {}
    display: dict[str, str] = {}
    problems: list[str] = []
    for node_cls in node_list:
        try:
            schema = node_cls.GET_SCHEMA()
        except Exception as exc:  # noqa: BLE001 - one class's schema must not drop the others
            problems.append(f"{getattr(node_cls, '__name__', node_cls)}: {type(exc).__name__}: {exc}")
            continue
        mappings[str(schema.node_id)] = node_cls
        if schema.display_name is not None:
            display[str(schema.node_id)] = str(schema.display_name)
    return mappings, display, problems


def describe_packs(packs: Iterable[LoadedPack]) -> list[str]:
    """One line per pack for ``nodegraph nodes`` and the server log."""
    lines = []
    for pack in packs:
        if pack.disabled:
            lines.append(f"custom node pack {pack.name}: disabled")
        elif pack.error is not None and not pack.nodes:
            lines.append(f"custom node pack {pack.name}: FAILED ({pack.error})")
        else:
            extra = f"; {pack.error}" if pack.error else ""
            lines.append(f"custom node pack {pack.name}: {len(pack.nodes)} node(s) in {pack.seconds:.2f}s{extra}")
    return lines


def is_classic_class(obj: object) -> bool:
    """True for a class following ComfyUI's classic node protocol (what an entry point may give)."""
    return inspect.isclass(obj) and all(hasattr(obj, a) for a in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"))
