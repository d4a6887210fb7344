"""HiDream-O1-Image's token sequence: what one denoising call of the unified transformer is given.

One sequence holds, in order: the chat-templated prompt (Qwen's ``<|im_start|>user\\n…<|im_end|>\\n
<|im_start|>assistant\\n``; with reference images each one first as ``<|vision_start|>`` + its Qwen3-VL
vision-tower tokens + ``<|vision_end|>``), then ``<|boi_token|>`` and one ``<|tms_token|>`` (the timestep
rides on it), then the target image's 32×32-pixel patches, then the reference images' patches. Ids as the
official tokenizer (and ComfyUI's tokenizer shim) have them: tms 151673, boi 151669, image pad 151655.

Positions (interleaved M-RoPE, 3 axes) follow the official ``get_rope_index_fix_point``: text counts up
on all axes; a vision-tower image (merged grid) sits after the text before it as in Qwen-VL; the target
image is pinned at the fixed point 4096 (``(4096, 4096 + row, 4096 + col)``); each reference image's
patches follow the previous maximum + 1. Attention: the text before the tms token is causal, every later
token (tms, target, references) sees the whole sequence.

Reference images (official pipeline, ``models/pipeline.py``): each is resized (halving with a box filter
while it is at least twice the goal, then bicubic to the largest patch-aligned area not above
``max_size²`` and centre-cropped) with ``max_size`` from the target's longer side and the count K (K = 1:
the side; 2: ¾; ≤ 4: ½; ≤ 8: ⅜; more: ¼), normalised to [-1, 1] and patchified; for the vision tower a
Lanczos copy of area about 384² (288² for K > 4, 192² for K > 8), patch-aligned to 32, becomes Qwen2-VL
pixel patches (16×16, temporal 2, mean/std 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

PATCH = 32
FIX_POINT = 4096
IM_START, IM_END, ASSISTANT, USER, NEWLINE = 151644, 151645, 77091, 872, 198
VISION_START, VISION_END, IMAGE_PAD = 151652, 151653, 151655
BOI, TMS = 151669, 151673
CONDITION_IMAGE_SIZE = 384
VISION_PATCH, VISION_TEMPORAL, VISION_MERGE = 16, 2, 2


@dataclass(frozen=True)
class Sequence:
    """One call's inputs besides the pixels: text ids ``[1, text_len]``, positions ``[3, 1, total]``,
    the count of leading causal tokens, the target's patch count and the reference patches
    ``[1, ref_tokens, 3·32·32]`` (or ``None``), the vision tower's pixel patches and grids (or ``None``)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    causal_len: int
    target_len: int
    ref_patches: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None

    @property
    def total(self) -> int:
        return self.positions.shape[-1]


def wrap_prompt(text_ids: list[int]) -> list[int]:
    """The prompt's token ids inside the chat template with the boi and tms markers (no images)."""
    return [IM_START, USER, NEWLINE, *text_ids, IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE, BOI, TMS]


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, (H/32)(W/32), C·32·32]`` (rows of patches, channels first in a patch)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpatchify(x: torch.Tensor, h: int, w: int, channels: int = 3) -> torch.Tensor:
    """The inverse of :func:`patchify` for an ``h``×``w`` image."""
    b = x.shape[0]
    x = x.reshape(b, h // PATCH, w // PATCH, channels, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, h, w)


# -- positions --------------------------------------------------------------------------------------

class _Positions:
    """Builds the three-axis positions segment by segment (see the module docstring)."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.next = 0
        self.fix = FIX_POINT

    def text(self, n: int) -> None:
        if n > 0:
            self.parts.append(torch.arange(n).view(1, -1).expand(3, -1) + self.next)
            self.next += n

    def grid(self, h: int, w: int, offset: int) -> None:
        rows = torch.arange(h).view(-1, 1).expand(h, w).flatten()
        cols = torch.arange(w).view(1, -1).expand(h, w).flatten()
        block = torch.stack([torch.zeros_like(rows), rows, cols]) + offset
        self.parts.append(block)
        self.next = int(block.max()) + 1

    def vision_tower_image(self, h: int, w: int) -> None:
        self.grid(h, w, self.next)

    def patch_image(self, h: int, w: int) -> None:
        """A target / reference image of ``h``×``w`` patches (its first patch is the vision-start slot)."""
        offset = self.fix if self.fix > 0 else self.next
        self.fix = 0
        self.grid(h, w, offset)

    def done(self) -> torch.Tensor:
        return torch.cat(self.parts, dim=1).view(3, 1, -1)


# -- images -----------------------------------------------------------------------------------------

def to_pil(image: torch.Tensor) -> Image.Image:
    """An IMAGE row ``[H, W, C]`` in 0..1 as an RGB PIL image (rounded to 8 bits, as a loaded file is)."""
    arr = (image[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def fit_to_patches(img: Image.Image, size: int, patch: int = PATCH) -> Image.Image:
    """``img`` scaled to the largest ``patch``-aligned area not above ``size²`` (aspect kept by a centre
    crop): halved with a box filter while its short side is at least ``2·size``, then bicubic."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    width, height = img.size
    area = size * size
    scale = math.sqrt(area / (width * height))
    candidates = [(f(width * scale) // patch * patch, g(height * scale) // patch * patch)
                  for f, g in ((round, round), (round, math.floor), (math.floor, round), (math.floor, math.floor))]
    candidates.sort(key=lambda s: s[0] * s[1], reverse=True)  # stable: ties keep this order
    new = next((s for s in candidates if s[0] * s[1] <= area), candidates[-1])
    s1, s2 = width / new[0], height / new[1]
    if s1 < s2:
        tall = round(height / s1)
        img = img.resize((new[0], tall), resample=Image.BICUBIC)
        top = (tall - new[1]) // 2
        return img.crop((0, top, new[0], top + new[1]))
    wide = round(width / s2)
    img = img.resize((wide, new[1]), resample=Image.BICUBIC)
    left = (wide - new[0]) // 2
    return img.crop((left, 0, left + new[0], new[1]))


def _fit_ratio(size: int, ratio: float) -> tuple[int, int]:
    width = math.sqrt(size * size * ratio)
    return int(width / PATCH) * PATCH, int(width / ratio / PATCH) * PATCH


def reference_size(count: int, width: int, height: int) -> int:
    side = max(width, height)
    if count == 1:
        return side
    if count == 2:
        return side * 48 // 64
    if count <= 4:
        return side // 2
    if count <= 8:
        return side * 24 // 64
    return side // 4


def vision_size(count: int) -> int:
    if count <= 4:
        return CONDITION_IMAGE_SIZE
    if count <= 8:
        return CONDITION_IMAGE_SIZE * 48 // 64
    return CONDITION_IMAGE_SIZE // 2


def vision_patches(img: Image.Image) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Qwen2-VL pixel patches of an already 32-aligned image: ``[gh·gw, 3·2·16·16]`` and its grid
    ``(1, gh, gw)`` in 16-pixel patches (the frame repeated for the temporal patch, merge order 2×2)."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    x = (x - 0.5) / 0.5
    c, h, w = x.shape
    gh, gw, m, p = h // VISION_PATCH, w // VISION_PATCH, VISION_MERGE, VISION_PATCH
    x = x.unsqueeze(0).expand(VISION_TEMPORAL, c, h, w)
    x = x.reshape(1, VISION_TEMPORAL, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, c * VISION_TEMPORAL * p * p), (1, gh, gw)


# -- the whole --------------------------------------------------------------------------------------

def build(text_ids: list[int], width: int, height: int, references: list[torch.Tensor] | None = None) -> Sequence:
    """The sequence of a prompt (its tokenizer ids, no template) for a ``width``×``height`` target and
    optional reference IMAGE rows ``[H, W, C]``."""
    hp, wp = height // PATCH, width // PATCH
    target_len = hp * wp
    pos = _Positions()
    references = list(references or [])
    if not references:
        ids = wrap_prompt(text_ids)
        pos.text(len(ids))
        pos.patch_image(hp, wp)
        return Sequence(torch.tensor([ids]), pos.done(), len(ids) - 1, target_len)

    count = len(references)
    refs = [fit_to_patches(to_pil(r), reference_size(count, width, height)) for r in references]
    ids = [IM_START, USER, NEWLINE]
    pixel_values, grids = [], []
    pending = len(ids) + 1  # the text so far plus this image's vision-start token
    for ref in refs:
        size = _fit_ratio(vision_size(count), ref.width / ref.height)
        patches, grid = vision_patches(ref.resize(size, resample=Image.LANCZOS))
        pixel_values.append(patches)
        grids.append(grid)
        merged_h, merged_w = grid[1] // VISION_MERGE, grid[2] // VISION_MERGE
        pos.text(pending)
        pos.vision_tower_image(merged_h, merged_w)
        ids += [VISION_START] + [IMAGE_PAD] * (merged_h * merged_w) + [VISION_END]
        pending = 2  # vision-end, then the next image's vision-start
    tail = [*text_ids, IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE, BOI, TMS]
    pos.text(pending - 1 + len(tail))
    ids += tail
    pos.patch_image(hp, wp)
    patches = []
    for ref in refs:
        x = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        patches.append(patchify(x * 2 - 1)[0])
        pos.patch_image(ref.height // PATCH, ref.width // PATCH)
    return Sequence(torch.tensor([ids]), pos.done(), len(ids) - 1, target_len, torch.cat(patches)[None],
                    torch.cat(pixel_values), torch.tensor(grids))
