"""ComfyUI's ``latent_preview``: sampler preview callbacks for packs that sample themselves.

``get_previewer`` returns ``None`` (nodegraph's samplers make their own previews); ``prepare_callback``
returns a callback that reports each step as progress of the calling node.
"""

from __future__ import annotations

from typing import Any, Callable

from ._attrs import missing_attribute

MAX_PREVIEW_RESOLUTION = 512


def get_previewer(device: Any, latent_format: Any) -> None:
    return None


def prepare_callback(model: Any, steps: int, x0_output_dict: dict | None = None) -> Callable[..., None]:
    import comfy.utils

    bar = comfy.utils.ProgressBar(steps)

    def callback(step: int, x0: Any, x: Any, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps)

    return callback


def __getattr__(name: str) -> Any:
    return missing_attribute("latent_preview", name)
