"""Image-prompt fusion: mix CLIP vision embeddings into text CONDITIONING.

ImageConditioningFuse takes a CLIP_VISION_OUTPUT (CLIPVisionEncode) and a CONDITIONING (CLIPTextEncode)
and either blends the image embedding into every text token (``average``: ``(1-w)·text + w·image``) or
appends it as extra tokens (``concat``, scaled by ``w``). The image embedding is brought to the text
tokens' width by a fixed orthonormal projection when the widths differ (identity when they match, as for
SD1.x with CLIP ViT-L) and to their mean norm, so the mix stays in range. A ``pooled_output`` of the same
width as the image embedding is blended too. The result is an ordinary CONDITIONING for KSampler.
"""

from __future__ import annotations

import torch

from nodegraph.node import Input, Node, Output
from nodegraph.types import COMBO, CONDITIONING, FLOAT, INT

from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT


def projection(src: int, dst: int) -> torch.Tensor:
    """A fixed ``[src, dst]`` matrix with orthonormal rows or columns (seeded by the two widths)."""
    if src == dst:
        return torch.eye(src)
    g = torch.Generator().manual_seed(src * 100_003 + dst)
    q, _ = torch.linalg.qr(torch.randn(max(src, dst), min(src, dst), generator=g))
    return q if src > dst else q.T


def image_tokens(image_embeds: torch.Tensor, width: int, batch: int, target_norm: torch.Tensor) -> torch.Tensor:
    """``[B_img, P]`` → ``[batch, 1, width]`` at the text tokens' mean norm."""
    emb = image_embeds.float().reshape(image_embeds.shape[0], -1)
    emb = emb @ projection(emb.shape[-1], width)
    if emb.shape[0] != batch:
        emb = emb.mean(0, keepdim=True).expand(batch, -1)
    emb = torch.nn.functional.normalize(emb, dim=-1) * target_norm.reshape(-1, 1)
    return emb[:, None, :]


class ImageConditioningFuse(Node):
    """Blend (average) or append (concat) a CLIP vision embedding into text conditioning."""

    category = "conditioning/fusion"
    conditioning = Input(CONDITIONING)
    clip_vision_output = Input(CLIP_VISION_OUTPUT)
    weight = Input(FLOAT, default=0.3, min=0.0, max=1.0, step=0.01)
    mode = Input(COMBO, choices=["average", "concat"], default="average")
    tokens = Input(INT, default=1, min=1, max=16, tooltip="concat: how many image tokens to append.")
    outputs = (Output(CONDITIONING),)

    def execute(self, conditioning, clip_vision_output, weight=0.3, mode="average", tokens=1) -> tuple:
        embeds = getattr(clip_vision_output, "image_embeds", None)
        if not isinstance(embeds, torch.Tensor):
            raise TypeError("input 'clip_vision_output' has no image_embeds; connect CLIPVisionEncode")
        if not isinstance(conditioning, list) or not conditioning:
            raise TypeError("input 'conditioning' must be a non-empty CONDITIONING list; connect CLIPTextEncode")
        out = []
        for cond, extras in conditioning:
            if not isinstance(cond, torch.Tensor) or cond.ndim != 3:
                raise ValueError(f"input 'conditioning' holds a tensor of shape {list(getattr(cond, 'shape', []))}; "
                                 "expected [batch, tokens, width]")
            b, _, width = cond.shape
            norm = cond.float().norm(dim=-1).mean(dim=-1)
            img = image_tokens(embeds, width, b, norm).to(cond.dtype)
            if mode == "average":
                new = (1.0 - weight) * cond + weight * img
            else:
                new = torch.cat([cond, (weight * img).expand(b, tokens, width)], dim=1)
            extras = dict(extras)
            pooled = extras.get("pooled_output")
            if isinstance(pooled, torch.Tensor) and pooled.shape[-1] == embeds.shape[-1]:
                pnorm = pooled.float().norm(dim=-1)
                pimg = image_tokens(embeds, pooled.shape[-1], pooled.shape[0], pnorm)[:, 0].to(pooled.dtype)
                extras["pooled_output"] = (1.0 - weight) * pooled + weight * pimg
            out.append([new, extras])
        return (out,)
