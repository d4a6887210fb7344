"""ComfyUI's ``comfy.cli_args``: ``args`` with ComfyUI's defaults (packs read a few flags), and the
``LatentPreviewMethod`` enum. Flags nodegraph does not have read as ``None``."""

from __future__ import annotations

import enum
from typing import Any


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class _Args:
    preview_method = LatentPreviewMethod.NoPreviews
    preview_size = 512
    disable_metadata = False
    cpu = False
    lowvram = False
    highvram = False
    novram = False
    normalvram = False
    gpu_only = False
    force_fp16 = False
    force_fp32 = False
    fp16_vae = False
    fp32_vae = False
    bf16_vae = False
    disable_smart_memory = False
    deterministic = False
    dont_print_server = False
    listen = "127.0.0.1"
    port = 8188
    enable_cors_header = None
    multi_user = False
    verbose = "INFO"
    base_directory = None
    output_directory = None
    input_directory = None
    temp_directory = None
    user_directory = None
    disable_all_custom_nodes = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


args = _Args()
