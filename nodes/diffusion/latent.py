"""Latent and VAE nodes: empty latents, VAE encode/decode (also tiled), upscales, inpaint masks, batches.

LATENT is ``{"samples": [B,4,h,w], …}`` holding the VAE's *raw* latents (ComfyUI's convention; the
sampler applies the model's scaling factor). Decoded images are ``[B,H,W,3]`` in 0..1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE, LATENT, MASK, VAE

from nodegraph_nodes.image.operations import common_upscale

MAX_RESOLUTION = 16384
LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic"]
CROP_METHODS = ["disabled", "center"]


# -- VAE helpers ------------------------------------------------------------------------------------

def _refuse_audio_vae(vae, node: str) -> None:
    if getattr(vae, "sample_rate", None) is not None:  # nodegraph_nodes.dit.audio_vae.AudioVae
        raise TypeError(f"{node}: this is an audio VAE ({vae.family}); use VAEDecodeAudio / VAEEncodeAudio")


def vae_decode(ctx, vae, samples: torch.Tensor) -> torch.Tensor:
    _refuse_audio_vae(vae, "VAEDecode")
    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        dtype = next(module.parameters()).dtype
        images = []
        for i in range(samples.shape[0]):
            ctx.check_interrupted()
            out = module.decode(samples[i:i + 1].to(ctx.device, dtype), return_dict=False)[0]
            images.append((out.float() / 2 + 0.5).clamp(0, 1).cpu())
    return torch.cat(images).permute(0, 2, 3, 1).contiguous()


def crop_to_multiple(pixels: torch.Tensor, multiple: int) -> torch.Tensor:
    h = (pixels.shape[1] // multiple) * multiple
    w = (pixels.shape[2] // multiple) * multiple
    if h == pixels.shape[1] and w == pixels.shape[2]:
        return pixels
    y, x = (pixels.shape[1] % multiple) // 2, (pixels.shape[2] % multiple) // 2
    return pixels[:, y:y + h, x:x + w, :]


def vae_encode(ctx, vae, pixels: torch.Tensor) -> torch.Tensor:
    _refuse_audio_vae(vae, "VAEEncode")
    pixels = crop_to_multiple(pixels[..., :3], vae.scale_factor)
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise ValueError(f"the image is smaller than {vae.scale_factor} pixels; it cannot be encoded")
    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        dtype = next(module.parameters()).dtype
        x = pixels.permute(0, 3, 1, 2).to(ctx.device, dtype) * 2 - 1
        latents = [module.encode(x[i:i + 1]).latent_dist.mode().float().cpu() for i in range(x.shape[0])]
    return torch.cat(latents)


def _ramp(n: int, overlap: int, start: bool, end: bool) -> torch.Tensor:
    w = torch.ones(n)
    if overlap > 0:
        r = torch.linspace(0, 1, overlap + 2)[1:-1]
        if start:
            w[:overlap] = r
        if end:
            w[-overlap:] = r.flip(0)
    return w


def tiled(fn, x: torch.Tensor, tile: int, overlap: int, factor: float, out_channels: int) -> torch.Tensor:
    """Apply ``fn`` ([B,C,h,w] → [B,C',h·f,w·f]) tile by tile with linear blending of overlaps."""
    b, _, h, w = x.shape
    tile_h, tile_w = min(tile, h), min(tile, w)
    overlap = max(0, min(overlap, tile_h // 2, tile_w // 2))
    stride_h, stride_w = max(1, tile_h - overlap), max(1, tile_w - overlap)
    ys = list(range(0, max(h - tile_h, 0) + 1, stride_h))
    xs = list(range(0, max(w - tile_w, 0) + 1, stride_w))
    if ys[-1] + tile_h < h:
        ys.append(h - tile_h)
    if xs[-1] + tile_w < w:
        xs.append(w - tile_w)
    out = torch.zeros(b, out_channels, round(h * factor), round(w * factor))
    weight = torch.zeros(1, 1, out.shape[2], out.shape[3])
    for y in ys:
        for x0 in xs:
            piece = fn(x[:, :, y:y + tile_h, x0:x0 + tile_w]).float().cpu()
            ph, pw = piece.shape[-2:]
            oy, ox = round(y * factor), round(x0 * factor)
            ov = round(overlap * factor)
            wy = _ramp(ph, ov, y > 0, y + tile_h < h)
            wx = _ramp(pw, ov, x0 > 0, x0 + tile_w < w)
            mask = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, oy:oy + ph, ox:ox + pw] += piece * mask
            weight[:, :, oy:oy + ph, ox:ox + pw] += mask
    return out / weight.clamp(min=1e-8)


# -- nodes ------------------------------------------------------------------------------------------

class EmptyLatentImage(Node):
    """A batch of empty latent images to be denoised by a sampler.

    ComfyUI assumes SD's VAE (1/8 of the image size, 4 channels), as the built-in shapes-world VAE
    does. Connect the optional ``vae`` to size the latent for another VAE (other scale factor or
    channel count): width and height are then image pixels for it and must be multiples of its scale
    factor.
    """

    category = "latent"
    display_name = "Empty Latent Image"
    width = Input(INT, default=512, min=16, max=MAX_RESOLUTION, step=8)
    height = Input(INT, default=512, min=16, max=MAX_RESOLUTION, step=8)
    batch_size = Input(INT, default=1, min=1, max=4096)
    vae = Input(VAE, optional=True, tooltip="Size the latent for this VAE (default: SD's 1/8, 4 channels).")
    outputs = (Output(LATENT),)

    def execute(self, width: int, height: int, batch_size: int = 1, vae=None) -> tuple:
        factor = vae.scale_factor if vae is not None else 8
        channels = vae.latent_channels if vae is not None else 4
        for name, value in (("width", width), ("height", height)):
            if value % factor:
                raise ValueError(f"{name} {value} is not a multiple of {factor}: latents are 1/{factor} of the "
                                 f"image size; use {value // factor * factor} or {value // factor * factor + factor}")
        return ({"samples": torch.zeros([batch_size, channels, height // factor, width // factor])},)


class VAEDecode(Node):
    """Decodes latent images back into pixel space images."""

    category = "latent"
    display_name = "VAE Decode"
    samples = Input(LATENT)
    vae = Input(VAE)
    outputs = (Output(IMAGE),)

    def execute(self, samples: dict, vae) -> tuple:
        return (vae_decode(self.ctx, vae, samples["samples"]),)


class VAEEncode(Node):
    """Encodes pixel images into latents (the distribution's mean, as ComfyUI)."""

    category = "latent"
    display_name = "VAE Encode"
    pixels = Input(IMAGE)
    vae = Input(VAE)
    outputs = (Output(LATENT),)

    def execute(self, pixels: torch.Tensor, vae) -> tuple:
        return ({"samples": vae_encode(self.ctx, vae, pixels)},)


class VAEDecodeTiled(Node):
    category = "_for_testing"
    display_name = "VAE Decode (Tiled)"
    samples = Input(LATENT)
    vae = Input(VAE)
    tile_size = Input(INT, default=512, min=64, max=4096, step=32)
    overlap = Input(INT, default=64, min=0, max=4096, step=32)
    temporal_size = Input(INT, default=64, min=8, max=4096, step=4)
    temporal_overlap = Input(INT, default=8, min=4, max=4096, step=4)
    outputs = (Output(IMAGE),)

    def execute(self, samples: dict, vae, tile_size: int, overlap: int, temporal_size: int = 64,
                temporal_overlap: int = 8) -> tuple:
        f = vae.scale_factor
        latents = samples["samples"]
        if latents.ndim == 5:  # a video latent: temporal chunks (nodegraph_nodes.dit.vae_temporal_tiling)
            from nodegraph_nodes.dit.vae_temporal_tiling import decode_tiled

            return (decode_tiled(self.ctx, vae, latents, tile_size, overlap, temporal_size, temporal_overlap),)
        images = tiled(lambda t: vae_decode(self.ctx, vae, t).permute(0, 3, 1, 2), latents,
                       max(1, tile_size // f), overlap // f, f, 3)
        return (images.permute(0, 2, 3, 1).contiguous(),)


class VAEEncodeTiled(Node):
    category = "_for_testing"
    display_name = "VAE Encode (Tiled)"
    pixels = Input(IMAGE)
    vae = Input(VAE)
    tile_size = Input(INT, default=512, min=64, max=4096, step=64)
    overlap = Input(INT, default=64, min=0, max=4096, step=32)
    temporal_size = Input(INT, default=64, min=8, max=4096, step=4)
    temporal_overlap = Input(INT, default=8, min=4, max=4096, step=4)
    outputs = (Output(LATENT),)

    def execute(self, pixels: torch.Tensor, vae, tile_size: int, overlap: int, temporal_size: int = 64,
                temporal_overlap: int = 8) -> tuple:
        f = vae.scale_factor
        pixels = crop_to_multiple(pixels[..., :3], f)
        tile = max(f, tile_size // f * f)
        ov = overlap // f * f
        latents = tiled(lambda t: vae_encode(self.ctx, vae, t.permute(0, 2, 3, 1)), pixels.permute(0, 3, 1, 2),
                        tile, ov, 1 / f, vae.latent_channels)
        return ({"samples": latents},)


class LatentUpscale(Node):
    category = "latent"
    display_name = "Upscale Latent"
    samples = Input(LATENT)
    upscale_method = Input(COMBO, choices=LATENT_UPSCALE_METHODS)
    width = Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=8)
    height = Input(INT, default=512, min=0, max=MAX_RESOLUTION, step=8)
    crop = Input(COMBO, choices=CROP_METHODS)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, upscale_method: str, width: int, height: int, crop: str) -> tuple:
        if width == 0 and height == 0:
            return (samples,)
        s = dict(samples)
        x = samples["samples"]
        if width == 0:
            height = max(64, height)
            width = max(64, round(x.shape[-1] * height / x.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(x.shape[-2] * width / x.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        s["samples"] = common_upscale(x, width // 8, height // 8, upscale_method, crop)
        return (s,)


class LatentUpscaleBy(Node):
    category = "latent"
    display_name = "Upscale Latent By"
    samples = Input(LATENT)
    upscale_method = Input(COMBO, choices=LATENT_UPSCALE_METHODS)
    scale_by = Input(FLOAT, default=1.5, min=0.01, max=8.0, step=0.01)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, upscale_method: str, scale_by: float) -> tuple:
        s = dict(samples)
        x = samples["samples"]
        width, height = round(x.shape[-1] * scale_by), round(x.shape[-2] * scale_by)
        s["samples"] = common_upscale(x, width, height, upscale_method, "disabled")
        return (s,)


class SetLatentNoiseMask(Node):
    category = "latent/inpaint"
    display_name = "Set Latent Noise Mask"
    samples = Input(LATENT)
    mask = Input(MASK)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, mask: torch.Tensor) -> tuple:
        s = dict(samples)
        s["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (s,)


class VAEEncodeForInpaint(Node):
    category = "latent/inpaint"
    display_name = "VAE Encode (for Inpainting)"
    pixels = Input(IMAGE)
    vae = Input(VAE)
    mask = Input(MASK)
    grow_mask_by = Input(INT, default=6, min=0, max=64, step=1)
    outputs = (Output(LATENT),)

    def execute(self, pixels: torch.Tensor, vae, mask: torch.Tensor, grow_mask_by: int = 6) -> tuple:
        f = vae.scale_factor
        mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float(),
                             size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        pixels = crop_to_multiple(pixels[..., :3].clone(), f)
        h, w = pixels.shape[1], pixels.shape[2]
        y0, x0 = (mask.shape[2] % f) // 2, (mask.shape[3] % f) // 2
        mask = mask[:, :, y0:y0 + h, x0:x0 + w]
        if grow_mask_by == 0:
            grown = mask
        else:
            kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
            padding = math.ceil((grow_mask_by - 1) / 2)
            grown = torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)[:, :, :h, :w]
        keep = (1.0 - mask.round()).squeeze(1)
        pixels = (pixels - 0.5) * keep[..., None] + 0.5
        return ({"samples": vae_encode(self.ctx, vae, pixels), "noise_mask": grown.round()},)


class LatentFromBatch(Node):
    category = "latent/batch"
    display_name = "Latent From Batch"
    samples = Input(LATENT)
    batch_index = Input(INT, default=0, min=0, max=63)
    length = Input(INT, default=1, min=1, max=64)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, batch_index: int, length: int) -> tuple:
        s = dict(samples)
        x = samples["samples"]
        batch_index = min(x.shape[0] - 1, batch_index)
        length = min(x.shape[0] - batch_index, length)
        s["samples"] = x[batch_index:batch_index + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                s["noise_mask"] = masks.clone()
            else:
                if masks.shape[0] < x.shape[0]:
                    masks = masks.repeat(math.ceil(x.shape[0] / masks.shape[0]), 1, 1, 1)[:x.shape[0]]
                s["noise_mask"] = masks[batch_index:batch_index + length].clone()
        if "batch_index" not in samples:
            s["batch_index"] = list(range(batch_index, batch_index + length))
        else:
            s["batch_index"] = samples["batch_index"][batch_index:batch_index + length]
        return (s,)


class RepeatLatentBatch(Node):
    category = "latent/batch"
    display_name = "Repeat Latent Batch"
    samples = Input(LATENT)
    amount = Input(INT, default=1, min=1, max=64)
    outputs = (Output(LATENT),)

    def execute(self, samples: dict, amount: int) -> tuple:
        s = dict(samples)
        x = samples["samples"]
        s["samples"] = x.repeat((amount, 1, 1, 1))
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            masks = samples["noise_mask"]
            if masks.shape[0] < x.shape[0]:
                masks = masks.repeat(math.ceil(x.shape[0] / masks.shape[0]), 1, 1, 1)[:x.shape[0]]
            s["noise_mask"] = masks.repeat((amount, 1, 1, 1))
        if "batch_index" in samples:
            offset = max(samples["batch_index"]) - min(samples["batch_index"]) + 1
            s["batch_index"] = samples["batch_index"] + [i + offset * k for k in range(1, amount)
                                                         for i in samples["batch_index"]]
        return (s,)


class ImageScaleToTotalPixels(Node):
    category = "image/upscaling"
    display_name = "Scale Image to Total Pixels"
    image = Input(IMAGE)
    upscale_method = Input(COMBO, choices=["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])
    megapixels = Input(FLOAT, default=1.0, min=0.01, max=16.0, step=0.01)
    outputs = (Output(IMAGE),)

    def execute(self, image: torch.Tensor, upscale_method: str, megapixels: float) -> tuple:
        samples = image.movedim(-1, 1)
        total = int(megapixels * 1024 * 1024)
        scale_by = math.sqrt(total / (samples.shape[3] * samples.shape[2]))
        width, height = round(samples.shape[3] * scale_by), round(samples.shape[2] * scale_by)
        return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


class ImagePadForOutpaint(Node):
    category = "image"
    display_name = "Pad Image for Outpainting"
    image = Input(IMAGE)
    left = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    top = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    right = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    bottom = Input(INT, default=0, min=0, max=MAX_RESOLUTION, step=8)
    feathering = Input(INT, default=40, min=0, max=MAX_RESOLUTION, step=1)
    outputs = (Output(IMAGE), Output(MASK))

    def execute(self, image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int) -> tuple:
        b, h, w, c = image.shape
        new = torch.ones((b, h + top + bottom, w + left + right, c), dtype=torch.float32) * 0.5
        new[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        t = torch.zeros((h, w), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
            i = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
            j = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
            full_h, full_w = torch.full_like(i, h), torch.full_like(j, w)
            d = torch.minimum(torch.minimum(i if top else full_h, (h - i) if bottom else full_h),
                              torch.minimum(j if left else full_w, (w - j) if right else full_w))
            v = (feathering - d) / feathering
            t = torch.where(d >= feathering, torch.zeros_like(v), v * v)
        mask[top:top + h, left:left + w] = t
        return new, mask.unsqueeze(0)
