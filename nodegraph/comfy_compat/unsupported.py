"""Placeholders for the ComfyUI internals nodegraph does not provide (model patchers, ``comfy.ldm``, …).

Custom node packs import many ``comfy.*`` / ``comfy_extras.*`` modules at load time even when most of
their nodes never call them. Such a name resolves to a :func:`placeholder_module`: importing it, and
any attribute of it (``from comfy.sd import load_checkpoint_guess_config``, ``comfy.ldm.modules.x.y``),
works; *calling* or instantiating one raises :class:`NotSupportedByNodegraph` naming the symbol, so
only the node that really needs it fails, with a clear error, and the pack's other nodes work.
Placeholders are classes (a pack may subclass one, or use one in ``isinstance``): a subclass cannot be
instantiated either.
"""

from __future__ import annotations

import types
from typing import Any


class NotSupportedByNodegraph(RuntimeError):
    """A custom node called a ComfyUI internal that nodegraph does not provide."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"not supported by nodegraph: {name} (a ComfyUI internal; the nodes of this pack "
                         "that do not call it still work)")


class _PlaceholderType(type):
    """Metaclass of placeholders: any attribute is a deeper placeholder; a call raises."""

    _qualified: str

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls._qualified}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotSupportedByNodegraph(cls._qualified)

    def __repr__(cls) -> str:
        return f"<unsupported ComfyUI symbol {cls._qualified}>"

    def __bool__(cls) -> bool:
        return False


def placeholder(qualified: str) -> type:
    """A placeholder for the ComfyUI symbol ``qualified`` (``comfy.sd.load_checkpoint_guess_config``)."""
    short = qualified.rpartition(".")[2] or qualified
    return _PlaceholderType(short, (), {"_qualified": qualified, "__module__": qualified.rpartition(".")[0]})


class PlaceholderModule(types.ModuleType):
    """A ComfyUI module nodegraph does not provide: every attribute is a :func:`placeholder`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


def placeholder_module(name: str) -> PlaceholderModule:
    module = PlaceholderModule(name, f"placeholder for ComfyUI's {name}, which nodegraph does not provide")
    module.__path__ = []  # a package: its sub-modules import (as placeholders too)
    return module


def unsupported_attribute(module_name: str, name: str) -> Any:
    """For a helper module's ``__getattr__``: a placeholder for a name it does not provide."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    return placeholder(f"{module_name}.{name}")
