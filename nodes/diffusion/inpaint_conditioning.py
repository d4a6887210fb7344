"""Conditioning for UNets that take an image as extra input channels (ComfyUI's names and semantics):
InpaintModelConditioning (inpainting UNets: mask + masked image latent) and InstructPixToPixConditioning
(InstructPix2Pix UNets: the source image's latent).

Both put the encoded image on every positive and negative entry (``concat_latent_image``; inpainting
also ``concat_mask``), which the UNet runners concatenate to the model input
(:mod:`nodegraph_nodes.diffusion.control_run`); a UNet without extra input channels ignores them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nodegraph.node import BOOLEAN, Input, Node, Output
from nodegraph.types import CONDITIONING, IMAGE, LATENT, MASK, VAE
from nodegraph.value_checks import check_image

from nodegraph_nodes.diffusion.conditioning import set_values
from nodegraph_nodes.diffusion.latent import vae_encode


def _crop_offsets(pixels: torch.Tensor) -> tuple[int, int, int, int]:
    """(y, x, h, w): the centered crop of the image to multiples of 8 (ComfyUI's rule)."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    return (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2, h, w


class InpaintModelConditioning(Node):
    """Encodes the image with the masked part grayed out for inpainting models (their extra input
    channels) and the whole image as the latent to sample from; ``noise_mask`` also limits sampling to
    the mask. The mask is resized to the image (bilinear)."""

    category = "conditioning/inpaint"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    pixels = Input(IMAGE)
    mask = Input(MASK)
    noise_mask = Input(BOOLEAN, default=True,
                       tooltip="Add a noise mask to the latent so sampling will only happen within the mask. "
                               "Might improve results or completely break things depending on the model.")
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive: list, negative: list, vae, pixels: torch.Tensor, mask: torch.Tensor,
                noise_mask: bool = True) -> tuple:
        pixels = check_image(pixels, "InpaintModelConditioning.pixels")
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
            raise TypeError("InpaintModelConditioning.mask: expected a MASK [B, H, W]")
        mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float(),
                             size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
        original = pixels[..., :3]
        y, x, h, w = _crop_offsets(original)
        cropped = original[:, y:y + h, x:x + w, :].clone()
        mask = mask[:, :, y:y + h, x:x + w]
        keep = (1.0 - mask.round()).squeeze(1)
        if keep.shape[0] != cropped.shape[0]:
            keep = keep[:1].expand(cropped.shape[0], -1, -1) if keep.shape[0] == 1 else keep
        cropped = (cropped - 0.5) * keep[..., None] + 0.5
        concat_latent = vae_encode(self.ctx, vae, cropped)
        latent = {"samples": vae_encode(self.ctx, vae, original)}
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return (set_values(positive, values), set_values(negative, values), latent)


class InstructPixToPixConditioning(Node):
    """Encodes the source image for InstructPix2Pix models (their extra input channels); the latent out
    is an empty latent of the image's size."""

    category = "conditioning/instructpix2pix"
    positive = Input(CONDITIONING)
    negative = Input(CONDITIONING)
    vae = Input(VAE)
    pixels = Input(IMAGE)
    outputs = (Output(CONDITIONING, "positive"), Output(CONDITIONING, "negative"), Output(LATENT, "latent"))

    def execute(self, positive: list, negative: list, pixels: torch.Tensor, vae) -> tuple:
        pixels = check_image(pixels, "InstructPixToPixConditioning.pixels")
        y, x, h, w = _crop_offsets(pixels)
        concat_latent = vae_encode(self.ctx, vae, pixels[:, y:y + h, x:x + w, :3])
        values = {"concat_latent_image": concat_latent}
        return (set_values(positive, values), set_values(negative, values),
                {"samples": torch.zeros_like(concat_latent)})
