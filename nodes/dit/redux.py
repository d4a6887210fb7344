"""Flux.1 Redux in ComfyUI's node names: StyleModelLoader (``models/style_models``) and StyleModelApply.

A Redux file (``flux1-redux-dev.safetensors``: ``redux_up.{weight,bias}``, ``redux_down.{weight,bias}``) is
a two-layer projection: SigLIP patch states ``[B, tokens, vision width]`` → ``down(silu(up(x)))`` →
``[B, tokens, T5 width]``. StyleModelApply runs it on ``clip_vision_output.last_hidden_state`` (from
CLIPVisionEncode), joins the images' tokens into one row ``[1, B·tokens, width]``, multiplies them by
``strength`` (``strength_type`` multiply) and appends them to every entry of the text conditioning, as
ComfyUI does; the pooled output and other extras are kept.

Stricter than ComfyUI: ``attn_bias`` with a strength other than 1, and conditioning that already carries an
``attention_mask``, are refused with an error (the Flux runner takes no attention bias yet; ComfyUI adds
``log(strength)`` to the attention towards the image tokens), and so is the SD1 T2I style adapter
(``style_embedding``) and a token width that differs from the text's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, Input, Node, Output
from nodegraph.types import CONDITIONING

from nodegraph_nodes.diffusion.files import SAFE_EXTENSIONS, ModelFileError, file_identity, list_model_files, resolve_model
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT

STYLE_MODEL = "STYLE_MODEL"
FOLDER = "style_models"
REDUX_KEYS = ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")


class ReduxEncoder(torch.nn.Module):
    """Redux's projection of vision states into the text encoder's token space."""

    def __init__(self, vision_width: int, hidden: int, text_width: int) -> None:
        super().__init__()
        self.redux_up = torch.nn.Linear(vision_width, hidden)
        self.redux_down = torch.nn.Linear(hidden, text_width)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.redux_down(torch.nn.functional.silu(self.redux_up(states)))


@dataclass(frozen=True, eq=False)
class StyleModel:
    """STYLE_MODEL: a loaded Redux encoder (fp32, CPU) and its file name."""

    encoder: ReduxEncoder
    name: str

    @property
    def vision_width(self) -> int:
        return self.encoder.redux_up.in_features

    @property
    def text_width(self) -> int:
        return self.encoder.redux_down.out_features

    def tokens(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        """``[B, n, vision width]`` → ``[1, B·n, text width]`` (fp32)."""
        if last_hidden_state.ndim != 3 or last_hidden_state.shape[-1] != self.vision_width:
            raise ValueError(f"input 'clip_vision_output': last_hidden_state has shape {tuple(last_hidden_state.shape)}; "
                             f"style model {self.name!r} needs [batch, tokens, {self.vision_width}] (a SigLIP "
                             "so400m vision model for Flux Redux)")
        with torch.inference_mode():
            out = self.encoder(last_hidden_state.float().cpu())
        return out.reshape(1, -1, out.shape[-1]).clone()


def style_model_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, FOLDER)


def read_redux_file(path: Path, name: str) -> StyleModel:
    """A Redux encoder from a ``.safetensors`` file in the layout Black Forest Labs publishes."""
    if path.suffix.lower() not in SAFE_EXTENSIONS:
        raise ModelFileError(f"input 'style_model_name': {name!r} is not a .safetensors file (pickled files are "
                             "not loaded)")
    from safetensors.torch import load_file

    sd = load_file(str(path))
    if "style_embedding" in sd:
        raise ModelFileError(f"input 'style_model_name': {name!r} is an SD1 T2I style adapter; only Flux Redux "
                             "style models are supported")
    missing = [k for k in REDUX_KEYS if k not in sd]
    if missing:
        raise ModelFileError(f"input 'style_model_name': {name!r} is not a Flux Redux model (lacks {missing})")
    hidden, vision_width = sd["redux_up.weight"].shape
    text_width, hidden_down = sd["redux_down.weight"].shape
    if hidden_down != hidden:
        raise ModelFileError(f"input 'style_model_name': {name!r}: redux_down takes {hidden_down} features but "
                             f"redux_up gives {hidden}")
    encoder = ReduxEncoder(int(vision_width), int(hidden), int(text_width))
    encoder.load_state_dict({k: sd[k].float() for k in REDUX_KEYS})
    return StyleModel(encoder.eval(), name)


class StyleModelLoader(Node):
    """Load a Flux Redux style model from models/style_models (.safetensors)."""

    category = "loaders"
    display_name = "Load Style Model"
    style_model_name = Input(COMBO, choices=style_model_choices)
    outputs = (Output(STYLE_MODEL),)

    @classmethod
    def fingerprint(cls, paths: Paths | None = None, style_model_name: str | None = None, **_: Any) -> Any:
        try:
            return file_identity(resolve_model(paths or Paths(), FOLDER, style_model_name or ""))
        except ModelFileError:
            return ("missing", style_model_name)

    def execute(self, style_model_name: str) -> tuple:
        path = resolve_model(self.ctx.paths, FOLDER, style_model_name)
        return (read_redux_file(path, style_model_name),)


def apply_style(conditioning: list, tokens: torch.Tensor, strength: float, strength_type: str) -> list:
    """ComfyUI's StyleModelApply for ``strength_type`` multiply (and attn_bias at strength 1)."""
    if strength_type == "multiply":
        tokens = tokens * strength
    elif strength != 1.0:
        raise ValueError("input 'strength_type': attn_bias with a strength other than 1 is not supported yet "
                         "(the Flux runner takes no attention bias); use multiply")
    out = []
    for i, (txt, extras) in enumerate(conditioning):
        if "attention_mask" in extras:
            raise ValueError(f"input 'conditioning': entry {i} carries an attention_mask, which is not supported yet")
        if txt.shape[-1] != tokens.shape[-1]:
            raise ValueError(f"input 'conditioning': entry {i} has {txt.shape[-1]}-wide tokens but the style model "
                             f"gives {tokens.shape[-1]}-wide ones (Flux Redux needs Flux's T5 conditioning)")
        image = tokens.to(txt.dtype).to(txt.device).expand(txt.shape[0], -1, -1)
        out.append([torch.cat((txt, image), dim=1), dict(extras)])
    return out


class StyleModelApply(Node):
    """Append a style model's image tokens (Flux Redux) to the conditioning; strength scales them.

    Stricter than ComfyUI: attn_bias only at strength 1, no existing attention masks."""

    category = "conditioning/style_model"
    conditioning = Input(CONDITIONING)
    style_model = Input(STYLE_MODEL)
    clip_vision_output = Input(CLIP_VISION_OUTPUT)
    strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.001)
    strength_type = Input(COMBO, choices=["multiply", "attn_bias"], default="multiply")
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning: list, style_model: StyleModel, clip_vision_output: Any, strength: float = 1.0,
                strength_type: str = "multiply") -> tuple:
        if not isinstance(style_model, StyleModel):
            raise TypeError("input 'style_model' must come from StyleModelLoader")
        states = getattr(clip_vision_output, "last_hidden_state", None)
        if not isinstance(states, torch.Tensor):
            raise TypeError("input 'clip_vision_output' has no last_hidden_state; connect CLIPVisionEncode")
        return (apply_style(conditioning, style_model.tokens(states), float(strength), strength_type),)
