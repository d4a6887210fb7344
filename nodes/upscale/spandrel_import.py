"""Import spandrel (the upscaler architecture library) whether or not torchvision is installed.

spandrel declares torchvision as a dependency, but nodegraph does not install it (PyPI's torchvision
does not import beside the pinned torch CPU wheel), so spandrel is installed with ``--no-deps``. Its
registry imports every architecture package at ``import spandrel``, and two of them import torchvision
at module import for a function they call only when a model runs: RestoreFormer (``normalize``) and
LaMa (``rotate``, ``InterpolationMode``). Every other architecture is plain torch.

:func:`import_spandrel` imports spandrel normally when torchvision imports. Otherwise it imports it with
three placeholder modules (``torchvision``, ``torchvision.transforms``, ``torchvision.transforms.functional``)
in ``sys.modules`` for the duration of that one import and removes them right after; each name taken
from them is a :class:`DeferredTorchvision` that imports the real function when used and, without
torchvision, raises :class:`TorchvisionMissing` naming it. The architectures that took such a name are
recorded: :func:`needs_torchvision` tells the loader to refuse their models up front with a clear
message instead of failing halfway through an upscale. The import runs once per process, under a lock.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any

SPANDREL_VERSION = "0.4.2"  # the version pinned in README's first command and scripts/test
_PLACEHOLDERS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_ARCH_PACKAGE = "spandrel.architectures."

_lock = threading.Lock()
_deferred_packages: frozenset[str] = frozenset()  # spandrel.architectures.<X> packages that took a placeholder


class TorchvisionMissing(ImportError):
    """A spandrel architecture called a torchvision function, and torchvision cannot be imported."""


class DeferredTorchvision:
    """Stands in a spandrel module for one name of ``torchvision.transforms.functional``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def real(self) -> Any:
        try:
            module = importlib.import_module("torchvision.transforms.functional")
        except Exception as exc:  # ModuleNotFoundError, or a torchvision built for another torch
            raise TorchvisionMissing(
                f"this model's architecture needs torchvision.transforms.functional.{self.name}, and torchvision "
                f"cannot be imported ({type(exc).__name__}: {exc}); nodegraph does not install torchvision") from None
        return getattr(module, self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.real()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:  # InterpolationMode.BILINEAR
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self.real(), attr)

    def __repr__(self) -> str:
        return f"<torchvision.transforms.functional.{self.name}, imported when used>"


def _placeholder_modules() -> dict[str, ModuleType]:
    modules = {}
    for name in _PLACEHOLDERS:
        module = ModuleType(name, "placeholder while spandrel is imported without torchvision")
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name != _PLACEHOLDERS[-1])
        modules[name] = module
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]

    def deferred(name: str) -> DeferredTorchvision:
        if name.startswith("__"):
            raise AttributeError(name)
        return DeferredTorchvision(name)

    modules["torchvision.transforms.functional"].__getattr__ = deferred  # PEP 562
    return modules


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or installed for another torch: forget whatever part of it loaded
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_spandrel() -> ModuleType:
    """The ``spandrel`` module, imported once (see the module docstring)."""
    global _deferred_packages
    module = sys.modules.get("spandrel")
    if module is not None and "ModelLoader" in vars(module):
        return module
    with _lock:
        if "spandrel" in sys.modules and "ModelLoader" in vars(sys.modules["spandrel"]):
            return sys.modules["spandrel"]
        if importlib.util.find_spec("spandrel") is None:
            raise ModuleNotFoundError(f"PyTorch upscalers are built by spandrel, which is not installed: "
                                      f"pip install --no-deps spandrel=={SPANDREL_VERSION}", name="spandrel")
        if _torchvision_imports():
            return importlib.import_module("spandrel")
        placeholders = _placeholder_modules()
        if any(name in sys.modules for name in placeholders):  # a torchvision import is half-way somewhere
            raise ImportError("cannot import spandrel: a torchvision module is loaded but torchvision does not import")
        sys.modules.update(placeholders)
        try:
            module = importlib.import_module("spandrel")
        finally:
            for name, placeholder in placeholders.items():
                if sys.modules.get(name) is placeholder:
                    del sys.modules[name]
        deferred = set()
        for name, loaded in list(sys.modules.items()):
            if name.startswith(_ARCH_PACKAGE) and loaded is not None and any(
                    isinstance(value, DeferredTorchvision) for value in vars(loaded).values()):
                deferred.add(".".join(name.split(".")[:3]))
        _deferred_packages = frozenset(deferred)
        return module


def needs_torchvision(architecture: Any) -> bool:
    """Whether a spandrel ``Architecture`` uses torchvision that was not importable when spandrel was."""
    package = ".".join(type(architecture).__module__.split(".")[:3])
    return package in _deferred_packages


def torchvision_architectures() -> list[str]:
    """The ids of the registry's architectures that cannot run here for want of torchvision (sorted)."""
    spandrel = import_spandrel()
    return sorted(str(s.architecture.id) for s in spandrel.MAIN_REGISTRY.architectures() if needs_torchvision(s.architecture))


__all__ = ["DeferredTorchvision", "TorchvisionMissing", "import_spandrel", "needs_torchvision",
           "torchvision_architectures"]
