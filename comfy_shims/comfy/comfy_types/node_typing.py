"""ComfyUI's ``comfy.comfy_types.node_typing``: the ``IO`` type names, ``ComfyNodeABC`` and the typed
dicts packs annotate ``INPUT_TYPES`` with."""

from __future__ import annotations

import enum
from abc import ABC
from typing import Any, TypedDict


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


class IO(StrEnum):
    """Socket type names; ``IO.ANY`` is ``"*"``, ``IO.NUMBER`` the union ``"FLOAT,INT"``."""

    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    LORA_MODEL = "LORA_MODEL"
    LOSS_MAP = "LOSS_MAP"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    VIDEO = "VIDEO"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, value: object) -> bool:  # ComfyUI: types that can connect compare equal
        if not isinstance(value, str):
            return True
        if self.value == "*" or value == "*":
            return False
        return not (set(self.value.split(",")) & set(value.split(",")))


InputTypeDict = dict
InputTypeOptions = dict


class ComfyNodeABC(ABC):
    """Base class ComfyUI offers classic nodes (only a marker here)."""

    DESCRIPTION: str = ""
    CATEGORY: str = ""


class CheckLazyMixin:
    """ComfyUI's default ``check_lazy_status``: ask for every lazy input still ``None``."""

    def check_lazy_status(self, **kwargs: Any) -> list[str]:
        declared = self.INPUT_TYPES()  # type: ignore[attr-defined]
        names = []
        for section in ("required", "optional"):
            for name, spec in (declared.get(section) or {}).items():
                options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 else {}
                if isinstance(options, dict) and options.get("lazy") and kwargs.get(name) is None:
                    names.append(name)
        return names


class FileLocator(TypedDict):
    filename: str
    subfolder: str
    type: str
