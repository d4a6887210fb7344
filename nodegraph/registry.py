"""The node registry: which node classes exist, found through the ``nodegraph.nodes`` entry points.

The built-in families (``nodegraph_nodes.<family>``) and third-party packs register the same way,
through the Python entry-point group ``nodegraph.nodes``. An entry point may name a module (its
:class:`Node` subclasses are taken), a list of modules or classes, a ``{name: class}`` mapping
(ComfyUI's ``NODE_CLASS_MAPPINGS`` shape) or a function returning one of those. A ComfyUI custom node
pack installed as a distribution registers so too: its classes follow ComfyUI's classic protocol
(a module with ``NODE_CLASS_MAPPINGS``, or the mapping itself) and become nodes through
:mod:`nodegraph.comfy_compat.classic`; ComfyUI's module names are made importable before third-party
entry points load (:mod:`nodegraph.comfy_compat.finder`). The registry never imports a node family by
name; ComfyUI packs in folders are loaded by :mod:`nodegraph.comfy_compat.loader`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .node import Node

if TYPE_CHECKING:  # pragma: no cover
    from .context import Paths

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nodegraph.nodes"
#: the distribution whose entry points are the built-in families
BUILTIN_DISTRIBUTION = "nodegraph"


@dataclass(frozen=True)
class PackLoadError:
    source: str
    message: str


class NodeRegistry:
    """A mapping of class_type → node class. Build one with :func:`default_registry` or by hand."""

    def __init__(self, classes: Iterable[type[Node]] = ()) -> None:
        self._classes: dict[str, type[Node]] = {}
        self._source: dict[str, str] = {}
        self.load_errors: list[PackLoadError] = []
        #: ComfyUI custom node packs loaded from folders (``nodegraph.comfy_compat.loader.LoadedPack``)
        self.custom_packs: list[Any] = []
        #: counts registrations: what was looked up under an unchanged generation still stands
        self.generation = 0
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Node], name: str | None = None, source: str = "") -> None:
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise TypeError(f"{cls!r} is not a nodegraph Node class")
        name = name or cls.class_type()
        self._classes[name] = cls
        self._source[name] = source or cls.__module__
        self.generation += 1

    def get(self, class_type: str) -> type[Node] | None:
        return self._classes.get(class_type)

    def __getitem__(self, class_type: str) -> type[Node]:
        return self._classes[class_type]

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def names(self) -> list[str]:
        return sorted(self._classes)

    def source_of(self, class_type: str) -> str:
        return self._source.get(class_type, "")

    # -- discovery ----------------------------------------------------------------------------

    def add_module(self, module: ModuleType, source: str = "") -> int:
        found = [obj for obj in vars(module).values()
                 if inspect.isclass(obj) and issubclass(obj, Node) and obj is not Node
                 and obj.__module__ == module.__name__ and not vars(obj).get("abstract", False)]
        for cls in found:
            self.register(cls, source=source or module.__name__)
        return len(found)

    def add_package(self, package_name: str) -> int:
        """Import every module of a package and register its node classes (tests, ad-hoc packs)."""
        package = importlib.import_module(package_name)
        count = self.add_module(package)
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            count += self.add_module(importlib.import_module(info.name))
        return count

    def add_entry_points(self, group: str = ENTRY_POINT_GROUP, *, builtin: bool = True,
                         third_party: bool = True) -> int:
        """Register node packs from installed distributions; a broken pack is recorded, not fatal.

        ``builtin``: the entry points of nodegraph's own distribution (the built-in families);
        ``third_party``: those of every other distribution.
        """
        count = 0
        for ep in metadata.entry_points(group=group):
            is_builtin = ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION
            if not (builtin if is_builtin else third_party):
                continue
            source = f"{ep.name} ({ep.value})"
            try:
                if not is_builtin:
                    _comfy_names_importable()  # a ComfyUI pack imports folder_paths, comfy.utils, …
                count += self._add_pack_object(ep.load(), source)
            except Exception as exc:  # a third-party pack must not take the engine down
                log.warning("node pack %s failed to load: %s", source, exc)
                self.load_errors.append(PackLoadError(source, f"{type(exc).__name__}: {exc}"))
        return count

    def _add_pack_object(self, obj: Any, source: str) -> int:
        if isinstance(obj, ModuleType):
            mappings = getattr(obj, "NODE_CLASS_MAPPINGS", None)
            if isinstance(mappings, dict):  # a ComfyUI pack's module
                display = getattr(obj, "NODE_DISPLAY_NAME_MAPPINGS", None)
                return self._add_mapping(mappings, source, display if isinstance(display, dict) else {})
            return self.add_module(obj, source)
        if inspect.isclass(obj):
            self.register(obj, source=source)
            return 1
        if isinstance(obj, dict):
            return self._add_mapping(obj, source, {})
        if isinstance(obj, (list, tuple)):
            return sum(self.add_module(item) if isinstance(item, ModuleType)
                       else self._add_pack_object(item, source) for item in obj)
        if callable(obj):
            return self._add_pack_object(obj(), source)
        raise TypeError(f"entry point gave {type(obj).__name__}; expected a module, class, "
                        "list of classes, {name: class} mapping or a function returning one")

    def _add_mapping(self, mapping: dict, source: str, display: dict) -> int:
        """``{name: class}``: our node classes, or ComfyUI classic classes (adapted)."""
        for name, cls in mapping.items():
            if not (inspect.isclass(cls) and issubclass(cls, Node)):
                from .comfy_compat.classic import build_node_class

                cls = build_node_class(str(name), cls, source, display.get(name))
            self.register(cls, name=str(name), source=source)
        return len(mapping)

    # -- description --------------------------------------------------------------------------

    def object_info(self, class_type: str | None = None, paths: "Paths | None" = None) -> dict[str, Any]:
        """ComfyUI's ``/object_info`` for all classes, or for one (``{}`` when unknown).

        ``paths``: the folders file combos list (LoadImage's input folder...).
        """
        if class_type is not None:
            cls = self.get(class_type)
            return {class_type: describe_node(class_type, cls, self.source_of(class_type), paths)} if cls else {}
        return {name: describe_node(name, cls, self.source_of(name), paths)
                for name, cls in self._classes.items()}


def _comfy_names_importable() -> None:
    from .comfy_compat import finder

    try:
        finder.install()
    except RuntimeError as exc:  # ComfyUI's own modules are loaded: packs get those
        log.debug("ComfyUI module names not provided: %s", exc)


def describe_node(name: str, cls: type[Node], python_module: str = "",
                  paths: "Paths | None" = None) -> dict[str, Any]:
    """One class in ComfyUI's ``/object_info`` shape (COMFY_COMPAT §5)."""
    required = {s.name: s.spec(paths) for s in cls.required_inputs()}
    optional = {s.name: s.spec(paths) for s in cls.optional_inputs()}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    hidden = cls.hidden_spec()
    if hidden:
        inputs["hidden"] = hidden
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": {"required": list(required), **({"optional": list(optional)} if optional else {})},
        "output": [o.type for o in cls.outputs],
        "output_is_list": [o.is_list for o in cls.outputs],
        "output_name": [o.display_name for o in cls.outputs],
        "name": name,
        "display_name": cls.display_name or name,
        "description": cls.description,
        "python_module": python_module or cls.__module__,
        "category": cls.category,
        "output_node": cls.output_node,
    }
    tooltips = [o.tooltip for o in cls.outputs]
    if any(tooltips):
        info["output_tooltips"] = [t or "" for t in tooltips]
    if cls.deprecated:
        info["deprecated"] = True
    if cls.experimental:
        info["experimental"] = True
    if cls.api_node:
        info["api_node"] = True
    return info


def default_registry(packs: bool = True) -> NodeRegistry:
    """The built-in families plus, with ``packs``, every installed third-party pack.

    Both come from the ``nodegraph.nodes`` entry points; a built-in family that fails to load is an
    error (an install problem), not a skipped pack.
    """
    registry = NodeRegistry()
    registry.add_entry_points(third_party=False)
    if registry.load_errors:
        failed = "; ".join(f"{e.source}: {e.message}" for e in registry.load_errors)
        raise RuntimeError(f"a built-in node family failed to load: {failed}")
    if not len(registry):
        raise RuntimeError("no built-in node families found: nodegraph's entry points are missing "
                           "(install the package: pip install -e . or pip install nodegraph)")
    if packs:
        registry.add_entry_points(builtin=False)
    return registry
