"""FLUX.3's ComfyUI nodes: ``Flux3LayoutPrompt`` (the box table appended to a prompt) and
``ReferenceMultiLatent`` (several reference images VAE-encoded into the conditioning at once).

Flux3LayoutPrompt's table is BFL's layout caption as diffusers' FLUX.3 pipeline writes it
(``modular_pipelines/flux3/prompt_upsampler.py``, adapted there from BFL's ``flux3/bbox.py``): the prompt, one
space, then a JSON array (``json.dumps``, non-ASCII kept) with one row ``{"id", "bbox", "desc"}`` per element,
``id`` = ``obj_N`` from 1 in the elements' order (the templates cite ``<obj_1>``), ``bbox`` =
``[y_min, x_min, y_max, x_max]`` integers on the 0–1000 grid (CreateBoundingBoxes' elements). A text element's
wording goes into its ``desc`` in double quotes (BFL's table carries a text block's wording verbatim in double
quotes), followed by its description. Colour palettes are not used (ComfyUI's node says so). No elements: the
prompt unchanged.

ReferenceMultiLatent (ComfyUI's spec): each connected image (``images.image0`` …, in slot order) is prepared on
its own — ``keep resolution`` as it comes, ``resize`` scaled (area) to ``megapixels`` with the aspect kept —
centre-cropped to the VAE's grid (16 px for Flux.2/3's VAE) and encoded; the latents are appended to the
``reference_latents`` of the positive and (if connected) the negative conditioning, so chained nodes accumulate.
``empty_latent`` is the first reference latent × 0; without a reference, a square empty latent of 1024² px (or
``megapixels``) in the VAE's latent layout (128 channels at 1/16 without a VAE: Flux.2/3's).
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from nodegraph.node import COMBO, FLOAT, STRING, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, VAE

from nodegraph_nodes.diffusion.latent import vae_encode
from nodegraph_nodes.dit.qwen_edit import scale_to_area

ARRAY = "ARRAY"
RESOLUTIONS = ["keep resolution", "resize"]
REFERENCE_SLOTS = tuple(f"images.image{i}" for i in range(100))


def layout_rows(elements: list, where: str = "Flux3LayoutPrompt") -> list[dict]:
    """BFL's layout table rows for CreateBoundingBoxes' elements."""
    rows = []
    for i, element in enumerate(elements or ()):
        if not isinstance(element, dict) or "bbox" not in element:
            raise ValueError(f"{where}: input 'element' item {i + 1} is not a Create Bounding Boxes element "
                             f"(an object with a 'bbox'): {element!r}")
        try:
            bbox = [int(round(float(v))) for v in element["bbox"]]
        except (TypeError, ValueError):
            bbox = []
        if len(bbox) != 4:
            raise ValueError(f"{where}: element {i + 1}'s bbox must be [y_min, x_min, y_max, x_max], "
                             f"got {element['bbox']!r}")
        desc = str(element.get("desc") or "").strip()
        text = str(element.get("text") or "").strip()
        if element.get("type") == "text" and text:
            desc = f'"{text}"' + (f" {desc}" if desc else "")
        rows.append({"id": f"obj_{i + 1}", "bbox": [min(max(v, 0), 1000) for v in bbox], "desc": desc})
    return rows


def layout_prompt(prompt: str, elements: list) -> str:
    rows = layout_rows(elements)
    return f"{prompt} {json.dumps(rows, ensure_ascii=False)}" if rows else prompt


class Flux3LayoutPrompt(Node):
    """Appends the Create Bounding Boxes elements to the prompt as FLUX.3's layout table (id, box, description);
    cite box N as ``<obj_N>`` in the prompt. No elements: the prompt unchanged."""

    category = "conditioning/flux"
    display_name = "FLUX 3 Image Layout Prompt"
    prompt = Input(STRING, multiline=True, default="", tooltip="The prompt text. Cite box N as <obj_N>.")
    element = Input(ARRAY, tooltip="The elements to place, from the Create Bounding Boxes node.")
    outputs = (Output(STRING, "prompt"),)

    def execute(self, prompt: str, element: list | None = None) -> tuple:
        return (layout_prompt(prompt, element or []),)


def _append(conditioning: list, latents: list[torch.Tensor]) -> list:
    return [[cond, {**extras, "reference_latents": list(extras.get("reference_latents", ())) + latents}]
            for cond, extras in conditioning]


def prepare_reference(image: torch.Tensor, resolution: str, megapixels: float) -> torch.Tensor:
    if resolution == "resize":
        return scale_to_area(image, int(megapixels * 1024 * 1024))
    return image[..., :3]


class ReferenceMultiLatent(Node):
    """Encodes one or more reference images with the VAE and appends their latents to the positive (and
    negative) conditioning, in slot order; ``empty_latent`` is the first reference's latent × 0."""

    category = "advanced/conditioning/edit_models"
    display_name = "Set Reference Multi Latent"
    dynamic_combos = {"resolution": {"keep resolution": (), "resize": ("resolution.megapixels",)}}
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING, optional=True)
    vae = Input(VAE, optional=True)
    resolution = Input(COMBO, choices=RESOLUTIONS, default="keep resolution",
                       tooltip="keep resolution: encode each image at its size; resize: scale it to megapixels.")
    vars().update({
        "resolution.megapixels": Input(FLOAT, default=1.0, min=0.01, max=16.0, step=0.01, optional=True,
                                       tooltip="Target size of each reference image (1.0 ≈ 1024×1024)."),
    })
    vars().update({name: Input(IMAGE, optional=True) for name in REFERENCE_SLOTS})
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "empty_latent"))

    def execute(self, positive: list, resolution: str = "keep resolution", negative: list | None = None,
                vae: Any = None, **fields: Any) -> tuple:
        if resolution not in RESOLUTIONS:
            raise ValueError(f"ReferenceMultiLatent: input 'resolution' is {resolution!r}; use one of {RESOLUTIONS}")
        megapixels = float(fields.get("resolution.megapixels") or 1.0)
        images = [fields[name] for name in REFERENCE_SLOTS if fields.get(name) is not None]
        latents = []
        if vae is not None:
            for image in images:
                for i in range(image.shape[0]):  # each image of a batch is a reference of its own
                    latents.append(vae_encode(self.ctx, vae, prepare_reference(image[i:i + 1], resolution,
                                                                                megapixels)))
        if not latents:
            side = 1024 if resolution != "resize" else max(16, int(math.sqrt(megapixels) * 1024))
            factor = getattr(vae, "scale_factor", 16)
            channels = getattr(vae, "latent_channels", 128)
            empty = torch.zeros([1, channels, side // factor, side // factor])
            return (positive, negative if negative is not None else positive, {"samples": empty})
        positive = _append(positive, latents)
        negative = _append(negative, latents) if negative is not None else positive
        return (positive, negative, {"samples": torch.zeros_like(latents[0])})
