"""The node registry: which node classes exist, found from ``nodes/`` and from installed packs.

Third-party packs register through the Python entry-point group ``nodegraph.nodes``. An entry point
may name a module (its :class:`Node` subclasses are taken), a list of classes, a ``{name: class}``
mapping (ComfyUI's ``NODE_CLASS_MAPPINGS`` shape) or a function returning one of those. Nothing is
imported from arbitrary folders.
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

from .node import HIDDEN_INPUTS, Node

if TYPE_CHECKING:  # pragma: no cover
    from .context import Paths

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "nodegraph.nodes"


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
        for cls in classes:
            self.register(cls)

    def register(self, cls: type[Node], name: str | None = None, source: str = "") -> None:
        if not (isinstance(cls, type) and issubclass(cls, Node)):
            raise TypeError(f"{cls!r} is not a nodegraph Node class")
        name = name or cls.class_type()
        self._classes[name] = cls
        self._source[name] = source or cls.__module__

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
        """Import every module of a package (e.g. ``nodes``) and register its node classes."""
        package = importlib.import_module(package_name)
        count = self.add_module(package)
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            count += self.add_module(importlib.import_module(info.name))
        return count

    def add_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Register node packs from installed distributions; a broken pack is recorded, not fatal."""
        count = 0
        for ep in metadata.entry_points(group=group):
            source = f"{ep.name} ({ep.value})"
            try:
                count += self._add_pack_object(ep.load(), source)
            except Exception as exc:  # a third-party pack must not take the engine down
                log.warning("node pack %s failed to load: %s", source, exc)
                self.load_errors.append(PackLoadError(source, f"{type(exc).__name__}: {exc}"))
        return count

    def _add_pack_object(self, obj: Any, source: str) -> int:
        if isinstance(obj, ModuleType):
            return self.add_module(obj, source)
        if inspect.isclass(obj):
            self.register(obj, source=source)
            return 1
        if isinstance(obj, dict):
            for name, cls in obj.items():
                self.register(cls, name=name, source=source)
            return len(obj)
        if isinstance(obj, (list, tuple)):
            for cls in obj:
                self.register(cls, source=source)
            return len(obj)
        if callable(obj):
            return self._add_pack_object(obj(), source)
        raise TypeError(f"entry point gave {type(obj).__name__}; expected a module, class, "
                        "list of classes, {name: class} mapping or a function returning one")

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


def describe_node(name: str, cls: type[Node], python_module: str = "",
                  paths: "Paths | None" = None) -> dict[str, Any]:
    """One class in ComfyUI's ``/object_info`` shape (COMFY_COMPAT §5)."""
    required = {s.name: s.spec(paths) for s in cls.required_inputs()}
    optional = {s.name: s.spec(paths) for s in cls.optional_inputs()}
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    if cls.hidden:
        inputs["hidden"] = {h: HIDDEN_INPUTS[h] for h in cls.hidden}
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
    return info


def default_registry(entry_points: bool = True) -> NodeRegistry:
    """Built-in nodes from the ``nodes`` package plus every installed pack."""
    registry = NodeRegistry()
    registry.add_package("nodes")
    if entry_points:
        registry.add_entry_points()
    return registry
