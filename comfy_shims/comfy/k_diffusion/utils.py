"""ComfyUI's ``comfy.k_diffusion.utils``: ``FolderOfImages`` (packs read its ``IMG_EXTENSIONS`` to
list image files; iterating it lists a folder's images). Everything else is a placeholder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nodegraph.comfy_compat.unsupported import placeholder


class FolderOfImages:
    """The image files under a folder, recursively, sorted (no transforms: paths only)."""

    IMG_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}

    def __init__(self, root: str | Path, transform: Any = None) -> None:
        self.root = Path(root)
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.IMG_EXTENSIONS)

    def __len__(self) -> int:
        return len(self.paths)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return placeholder(f"comfy.k_diffusion.utils.{name}")
