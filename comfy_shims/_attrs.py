"""What a helper module answers for a name it does not define: a placeholder when ComfyUI's module has
that name (calling it fails with "not supported by nodegraph: <name>"), else ``AttributeError`` as
ComfyUI would raise (so ``hasattr`` checks in packs answer as they do there)."""

from __future__ import annotations

from typing import Any

from nodegraph.comfy_compat.unsupported import placeholder

from ._comfy_names import COMFY_NAMES


def missing_attribute(module: str, name: str) -> Any:
    if not (name.startswith("__") and name.endswith("__")) and name in COMFY_NAMES.get(module, ()):
        return placeholder(f"{module}.{name}")
    raise AttributeError(f"module {module!r} has no attribute {name!r} (nor has ComfyUI's, in the version "
                         "nodegraph follows)")
