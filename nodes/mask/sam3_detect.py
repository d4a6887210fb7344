"""SAM3_Detect: open-vocabulary detection and segmentation with a SAM 3 checkpoint (ComfyUI's node: names,
inputs, defaults, outputs), run through transformers' ``Sam3Model`` (:mod:`.sam3_loading`).

Per frame, as ComfyUI: the image is resized (bilinear, no crop) to 1008 x 1008 and scaled to -1..1; each text
prompt of the conditioning (``"a, b:3"``: one prompt per comma, ``:N`` keeps up to N detections, default 1)
runs the detector, optionally restricted by ``bboxes`` (pixel ``{"x","y","width","height"}``: one box, a list
for every frame, or a list per frame); queries whose sigmoid score passes ``threshold`` are kept, best first.
Masks are the detector's mask logits resized (bilinear) to the image and cut at 0; ``masks`` is their union
per frame, or one mask per detection with ``individual_masks``. ``bboxes`` out: per frame, a list of
``{"x","y","width","height","score"}`` in pixels.

Not done yet (they need SAM 3's tracker decoder, whose weights the loader does not read): the
``refine_iterations`` passes (with a node warning the raw detector masks are returned, which ComfyUI's refined
masks contain), point prompts and box prompts without text (errors naming the input).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nodegraph.node import BOOLEAN, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, MASK, MODEL

from .sam3_loading import Sam3Handle

NODE = "SAM3_Detect"
BOUNDING_BOX = "BOUNDING_BOX"


@dataclass(frozen=True)
class TextPrompt:
    """One text prompt of a SAM 3 conditioning: the text encoder's last hidden state ``[1, T, width]``,
    its token mask ``[1, T]`` and how many detections to keep."""

    hidden: torch.Tensor
    mask: torch.Tensor
    max_detections: int


@dataclass(frozen=True)
class Detections:
    """What one frame's detection found, best first: boxes ``[N, 4]`` (x1, y1, x2, y2 pixels), scores ``[N]``,
    masks ``[N, H, W]`` (0/1 floats) and the mask logits at the image size."""

    boxes: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor

    def box_dicts(self) -> list[dict]:
        return [{"x": float(b[0]), "y": float(b[1]), "width": float(b[2] - b[0]), "height": float(b[3] - b[1]),
                 "score": float(s)} for b, s in zip(self.boxes.tolist(), self.scores.tolist())]


def check_model(model: Any, node: str) -> Sam3Handle:
    if not isinstance(model, Sam3Handle):
        raise TypeError(f"{node}: input 'model' must be a SAM 3 model (CheckpointLoaderSimple with a SAM 3 file "
                        f"such as sam3.1_multiplex_fp16.safetensors), got {type(model).__name__}")
    return model


def text_prompts(conditioning: list, node: str) -> list[TextPrompt]:
    """The prompts of a SAM 3 CLIP conditioning (ComfyUI's ``sam3_multi_cond`` list, else the main entry)."""
    cond, extras = conditioning[0][0], conditioning[0][1]
    multi = extras.get("sam3_multi_cond")
    entries = multi if multi is not None else [{"cond": cond, "attention_mask": extras.get("attention_mask"),
                                                "max_detections": 1}]
    out = []
    for entry in entries:
        hidden = entry["cond"]
        mask = entry.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        out.append(TextPrompt(hidden, mask, int(entry.get("max_detections", 1))))
    return out


def prepare_frames(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, H, W, C]`` 0..1 → ``[B, 3, size, size]`` in -1..1 (bilinear resize, no crop, as ComfyUI)."""
    x = images[..., :3].movedim(-1, 1).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def frame_boxes(bboxes: Any, frames: int, width: int, height: int) -> list[torch.Tensor | None]:
    """Per frame, the boxes ``[1, N, 4]`` normalised (cx, cy, w, h): one box dict (every frame), a list of
    them (every frame), or a list per frame (the last repeated for missing frames)."""
    def tensor(boxes: list[dict]) -> torch.Tensor:
        return torch.tensor([[[(b["x"] + b["width"] / 2) / width, (b["y"] + b["height"] / 2) / height,
                               b["width"] / width, b["height"] / height] for b in boxes]], dtype=torch.float32)

    if bboxes is None or bboxes == []:
        return [None] * frames
    if isinstance(bboxes, dict):
        return [tensor([bboxes])] * frames
    if isinstance(bboxes, list) and isinstance(bboxes[0], list):
        per = [tensor(b) if b else None for b in bboxes]
        return (per + [per[-1]] * frames)[:frames]
    if isinstance(bboxes, list) and all(isinstance(b, dict) for b in bboxes):
        return [tensor(bboxes)] * frames
    raise ValueError(f"{NODE}: input 'bboxes' must be a box dict, a list of them or a list per frame")


class _TextEmbeds:
    """What ``Sam3Model.forward`` reads of precomputed text embeddings."""

    def __init__(self, pooler_output: torch.Tensor) -> None:
        self.pooler_output = pooler_output


@torch.inference_mode()
def detect(model, frame: torch.Tensor, prompt: TextPrompt, boxes: torch.Tensor | None, threshold: float,
           height: int, width: int, *, vision=None) -> Detections:
    """Run the detector on one prepared frame ``[1, 3, S, S]`` for one text prompt."""
    device, dtype = frame.device, next(model.parameters()).dtype
    if prompt.hidden.shape[-1] != model.text_projection.in_features:
        raise ValueError(f"{NODE}: the conditioning is {prompt.hidden.shape[-1]} wide, the SAM 3 text projection "
                         f"takes {model.text_projection.in_features}: encode the text with the SAM 3 checkpoint's CLIP")
    embeds = model.text_projection(prompt.hidden.to(device, dtype))
    kwargs: dict[str, Any] = {"vision_embeds": vision} if vision is not None else {"pixel_values": frame.to(dtype)}
    if boxes is not None:
        try:
            import torchvision  # noqa: F401  (transformers' SAM 3 pools box prompts with torchvision's roi_align)
        except ImportError:
            raise ImportError(f"{NODE}: box prompts (input 'bboxes') need torchvision, which is not "
                              "installed") from None
        kwargs["input_boxes"] = boxes.to(device, dtype)
    out = model(text_embeds=_TextEmbeds(embeds), attention_mask=prompt.mask.to(device), **kwargs)
    probs = out.pred_logits[0].float().sigmoid()
    keep = torch.nonzero(probs > threshold).flatten()
    keep = keep[probs[keep].argsort(descending=True)][:prompt.max_detections]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=probs.device)
    logits = out.pred_masks[0, keep].float()
    if len(keep):
        logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    else:
        logits = logits.new_zeros(0, height, width)
    return Detections((out.pred_boxes[0, keep].float() * scale).cpu(), probs[keep].cpu(), (logits > 0).float().cpu())


def _points(text: str | None, name: str) -> list:
    if not text:
        return []
    try:
        points = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{NODE}: input '{name}' must be JSON like [{{\"x\": 10, \"y\": 20}}]: {exc}") from None
    return points if isinstance(points, list) else [points]


class SAM3_Detect(Node):
    """Open-vocabulary detection and segmentation using text, box, or point prompts."""

    category = "detection"
    display_name = "SAM3 Detect"
    model = Input(MODEL)
    image = Input(IMAGE)
    conditioning = Input(CONDITIONING, optional=True, tooltip="Text conditioning from CLIPTextEncode")
    bboxes = Input(BOUNDING_BOX, optional=True, force_input=True, tooltip="Bounding boxes to segment within")
    positive_coords = Input(STRING, optional=True, force_input=True,
                            tooltip="Positive point prompts as JSON [{\"x\": int, \"y\": int}, ...] (pixel coords)")
    negative_coords = Input(STRING, optional=True, force_input=True,
                            tooltip="Negative point prompts as JSON [{\"x\": int, \"y\": int}, ...] (pixel coords)")
    threshold = Input(FLOAT, default=0.5, min=0.0, max=1.0, step=0.01)
    refine_iterations = Input(INT, default=2, min=0, max=5,
                              tooltip="SAM decoder refinement passes (0=use raw detector masks)")
    individual_masks = Input(BOOLEAN, default=False, tooltip="Output per-object masks instead of union")
    outputs = (Output(MASK, "masks"), Output(BOUNDING_BOX, "bboxes"))

    def execute(self, model, image: torch.Tensor, conditioning: list | None = None, bboxes: Any = None,
                positive_coords: str | None = None, negative_coords: str | None = None, threshold: float = 0.5,
                refine_iterations: int = 2, individual_masks: bool = False) -> tuple:
        sam = check_model(model, NODE)
        frames, height, width = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
        prompts = text_prompts(conditioning, NODE) if conditioning else []
        if _points(positive_coords, "positive_coords") or _points(negative_coords, "negative_coords"):
            raise NotImplementedError(f"{NODE}: point prompts need SAM 3's tracker decoder, which this engine does "
                                      "not load yet; use a text conditioning (optionally with bboxes)")
        per_frame = frame_boxes(bboxes, frames, width, height)
        if not prompts:
            if any(b is not None for b in per_frame):
                raise NotImplementedError(f"{NODE}: bboxes without a text conditioning need SAM 3's tracker decoder, "
                                          "which this engine does not load yet; connect a conditioning too")
            raise ValueError(f"{NODE}: give a text 'conditioning' (CLIPTextEncode with the SAM 3 checkpoint's CLIP)")
        if refine_iterations > 0:
            self.ctx.warn(f"{NODE}: refine_iterations={refine_iterations} needs SAM 3's tracker decoder, which this "
                          "engine does not load yet; the detector's own masks are returned")
        manager = self.ctx.service("models")
        masks, boxes_out = [], []
        with manager.use(sam.handle, self.ctx.device) as net:
            size = int(net.config.vision_config.image_size)
            for b in range(frames):
                frame = prepare_frames(image[b:b + 1], size).to(self.ctx.device)
                with torch.inference_mode():  # one vision pass per frame, shared by the prompts
                    vision = net.get_vision_features(pixel_values=frame.to(next(net.parameters()).dtype))
                found = [detect(net, frame, p, per_frame[b], threshold, height, width, vision=vision) for p in prompts]
                boxes_out.append([d for det in found for d in det.box_dicts()])
                frame_masks = torch.cat([det.masks for det in found], dim=0)
                masks.append(frame_masks if individual_masks else (frame_masks > 0).any(dim=0).float())
                self.ctx.check_interrupted()
                self.ctx.progress(b + 1, frames)
        out = torch.cat(masks, dim=0) if individual_masks else torch.stack(masks)
        return out, boxes_out
