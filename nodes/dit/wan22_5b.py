"""Wan 2.2 TI2V 5B: its 48-channel VAE (diffusers ``AutoencoderKLWan`` with ``z_dim`` 48, ``is_residual``, 2×2
patches: 16× smaller spatially, 4× in time), the Wan 2.2 latent format, ComfyUI's ``Wan22ImageToVideoLatent``
and the runner that samples a start image's latent frames as given.

Files: ComfyUI's ``wan2.2_ti2v_5B_fp16.safetensors`` is a Wan transformer (:mod:`.wan`) with 48 input and
output channels; ``vae/wan2.2_vae.safetensors`` keeps Wan's original VAE names
(``encoder.downsamples.N.downsamples.M.residual.…``, ``encoder.middle.1.to_qkv``, ``encoder.head.2``,
``conv1`` / ``conv2``), renamed here to diffusers' (``encoder.down_blocks.N.resnets.M.…``, ``downsampler``,
``mid_block``, ``conv_out``, ``quant_conv`` / ``post_quant_conv``); diffusers-layout files load as they are.
The VAE config comes from the shapes.

Facts (ComfyUI's): latent format Wan 2.2 (48 channels, ``(latent - mean) / std``, the constants below);
``Wan22ImageToVideoLatent`` gives ``[B, 48, 1 + (length - 1) / 4, height / 16, width / 16]``; with a start image
the image (resized, center crop) is encoded, its latent frames replace the first ones (kept in the VAE's
space, the other frames are the latent format's zero) and ``noise_mask`` is 0 on them. Sampling a Wan 2.2 model
with a noise mask: the masked-off frames go into the network as the clean latent (ComfyUI's
``WAN22.scale_latent_inpaint``) and each frame's timestep is the sampled one times the frame's mean mask (0 for
the start frames; ``process_timestep``), which is diffusers' ``expand_timesteps`` (one timestep per token).
"""

from __future__ import annotations

import re

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import IMAGE, LATENT, VAE

from nodegraph_nodes.dit.qwen_image import ChannelLatentFormat

MAX_RESOLUTION = 16384
VARIANT = "wan22_5b"

WAN22_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891, 0.157,
    -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502, -0.2055,
    -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083,
    -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165,
    0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889,
    0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
WAN22_RGB = (
    (0.0119, 0.0103, 0.0046), (-0.1062, -0.0504, 0.0165), (0.014, 0.0409, 0.0491), (-0.0813, -0.0677, 0.0607),
    (0.0656, 0.0851, 0.0808), (0.0264, 0.0463, 0.0912), (0.0295, 0.0326, 0.059), (-0.0244, -0.027, 0.0025),
    (0.0443, -0.0102, 0.0288), (-0.0465, -0.009, -0.0205), (0.0359, 0.0236, 0.0082), (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561), (0.0006, 0.0594, 0.0418), (-0.0319, -0.0542, -0.0637), (-0.0268, 0.0024, 0.026),
    (0.0539, 0.0265, 0.0358), (-0.0359, -0.0312, -0.0287), (-0.0285, -0.1032, -0.1237), (0.1041, 0.0537, 0.0622),
    (-0.0086, -0.0374, -0.0051), (0.039, 0.067, 0.2863), (0.0069, 0.0144, 0.0082), (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232), (-0.1454, -0.0902, -0.0481), (0.0714, 0.0827, 0.0447), (-0.0304, -0.0574,
    -0.0196), (0.0401, 0.0384, 0.0204), (-0.0758, -0.0297, -0.0014), (0.0568, 0.1307, 0.1372), (-0.0055, -0.031,
    -0.038), (0.0239, -0.0305, 0.0325), (-0.0663, -0.0673, -0.014), (-0.0416, -0.0047, -0.0023), (0.0166, 0.0112,
    -0.0093), (-0.0211, 0.0011, 0.0331), (0.1833, 0.1466, 0.225), (-0.0368, 0.037, 0.0295), (-0.3441, -0.3543,
    -0.2008), (-0.0479, -0.0489, -0.042), (-0.066, -0.0153, 0.08), (-0.0101, 0.0068, 0.0156), (-0.069, -0.0452,
    -0.0927), (-0.0145, 0.0041, 0.0015), (0.0421, 0.0451, 0.0373), (0.0504, -0.0483, -0.0356), (-0.0837, 0.0168,
    0.0055),
)
WAN22_RGB_BIAS = (0.0317, -0.0878, -0.1388)

WAN22 = ChannelLatentFormat(WAN22_MEAN, WAN22_STD, WAN22_RGB, WAN22_RGB_BIAS)


# -- VAE --------------------------------------------------------------------------------------------

ORIGINAL_MARKER = "encoder.downsamples.0.downsamples.0.residual.0.gamma"
DIFFUSERS_MARKER = "encoder.down_blocks.0.resnets.0.norm1.gamma"
_RESNET = ((".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
           (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut."))


def is_wan22_vae(keys) -> bool:
    """Wan 2.2's residual VAE, in Wan's original names or diffusers'."""
    keyset = set(keys)
    return ORIGINAL_MARKER in keyset or (DIFFUSERS_MARKER in keyset and "post_quant_conv.weight" in keyset)


def _resnet(name: str) -> str:
    for a, b in _RESNET:
        name = name.replace(a, b)
    return name


def convert_vae(sd: dict) -> dict:
    """Wan 2.2 VAE weights in Wan's original names → diffusers' ``AutoencoderKLWan`` names."""
    out = {}
    for key, value in sd.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.(downsamples|upsamples)\.(\d+)\.\2\.(\d+)\.(.*)", key):
            part, _, block, index, rest = m.groups()
            kind = "down_blocks" if part == "encoder" else "up_blocks"
            if rest.startswith(("resample.", "time_conv.")):
                sampler = "downsampler" if part == "encoder" else "upsampler"
                new = f"{part}.{kind}.{block}.{sampler}.{rest}"
            else:
                new = _resnet(f"{part}.{kind}.{block}.resnets.{index}.{rest}")
        elif m := re.match(r"(encoder|decoder)\.middle\.(\d)\.(.*)", key):
            part, index, rest = m.groups()
            if index == "1":
                new = f"{part}.mid_block.attentions.0.{rest}"
            else:
                new = _resnet(f"{part}.mid_block.resnets.{int(index) // 2}.{rest}")
        elif m := re.match(r"(encoder|decoder)\.head\.(\d)\.(.*)", key):
            part, index, rest = m.groups()
            new = f"{part}.{'norm_out' if index == '0' else 'conv_out'}.{rest}"
        elif m := re.match(r"(encoder|decoder)\.conv1\.(.*)", key):
            new = f"{m.group(1)}.conv_in.{m.group(2)}"
        elif key.startswith("conv1."):
            new = "quant_conv." + key[len("conv1."):]
        elif key.startswith("conv2."):
            new = "post_quant_conv." + key[len("conv2."):]
        out[new] = value
    return out


def vae_config(sd: dict) -> dict:
    """``AutoencoderKLWan`` config of Wan 2.2's VAE from diffusers-layout weights."""
    from nodegraph_nodes.diffusion.files import ModelFileError

    try:
        conv_in = sd["encoder.conv_in.weight"]
        z_dim = int(sd["post_quant_conv.weight"].shape[0])
        out_dim = int(sd["decoder.conv_out.weight"].shape[1])
    except KeyError as exc:
        raise ModelFileError(f"the Wan 2.2 VAE weights lack {exc.args[0]}") from None
    base = int(conv_in.shape[0])
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    mult = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) // base for i in blocks]
    temporal = [f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in sd for i in blocks[:-1]]
    res = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    channels = int(conv_in.shape[1])
    patch = int(round((channels / 3) ** 0.5))
    return {"base_dim": base, "decoder_base_dim": out_dim, "z_dim": z_dim, "dim_mult": mult, "num_res_blocks": res,
            "attn_scales": [], "temperal_downsample": temporal, "is_residual": True, "in_channels": channels,
            "out_channels": channels, "patch_size": patch if patch > 1 else None, "scale_factor_temporal": 4,
            "scale_factor_spatial": 8 * patch, "latents_mean": list(WAN22_MEAN), "latents_std": list(WAN22_STD)}


def build_vae(sd: dict, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.qwen_image import ImageVae

    if ORIGINAL_MARKER in sd:
        sd = convert_vae(sd)
    return ImageVae(_instantiate(AutoencoderKLWan, vae_config(sd), sd, dtype, "Wan 2.2 VAE"))


def is_vae_file(path, allow_pickle: bool) -> bool:
    from nodegraph_nodes.dit.loading import file_keys

    return path.is_file() and is_wan22_vae(file_keys(path, allow_pickle))


def load_vae(path, manager, device: str):
    """VAELoader for Wan 2.2's VAE (one file): 16× spatial compression, 48 channels."""
    from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
    from nodegraph_nodes.diffusion.files import read_state_dict
    from nodegraph_nodes.dit.loading import flow_dtype

    dtype = flow_dtype(device)
    handle = manager.load(_manager_key(path, "vae", dtype),
                          lambda: build_vae(read_state_dict(path, allow_pickle=manager.allow_pickle), dtype))
    return VaeModel(handle, 16, 48)


# -- transformer ------------------------------------------------------------------------------------

def variant_of_channels(out_channels: int) -> str:
    """The WanModel variant of a transformer predicting ``out_channels`` latent channels (48: Wan 2.2 5B, TI2V
    and Fun)."""
    return VARIANT if out_channels == 48 else ""


def file_out_channels(path, prefix: str) -> int | None:
    """The latent channels a Wan transformer file predicts (its output projection's rows over the 1×2×2 patch),
    from the header; ``None`` when it cannot tell."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for key in (prefix + "head.head.weight", prefix + "proj_out.weight"):
            if key in keys:
                return int(f.get_slice(key).get_shape()[0]) // 4
    return None


def runner_class():
    from nodegraph_nodes.dit.wan import WanRunner

    class Wan22Runner(WanRunner):
        """A Wan 2.2 5B run: with a noise mask (Wan22ImageToVideoLatent's start frames) the masked-off part goes
        in as the clean latent and each token gets its frame's timestep (``expand_timesteps``)."""

        latent_image = None
        mask = None

        def set_latent(self, latent_image: torch.Tensor, mask: torch.Tensor | None) -> None:
            self.latent_image, self.mask = latent_image, mask

        def prepare(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if self.mask is None:
                return x, t
            from nodegraph_nodes.dit.model import _rows

            mask = _rows(self.mask.to(x.device, x.dtype), x.shape[0])
            latent = _rows(self.latent_image.to(x.device, x.dtype), x.shape[0])
            x = x * mask + latent * (1 - mask)
            p_t, p_h, p_w = self.net.config.patch_size
            frames = mask.mean(dim=(1, 3, 4))[:, ::p_t] * t[:, None]  # [B, frames]
            tokens = (x.shape[3] // p_h) * (x.shape[4] // p_w)
            return x, frames.repeat_interleave(tokens, dim=1)

    return Wan22Runner


# -- node -------------------------------------------------------------------------------------------

class Wan22ImageToVideoLatent(Node):
    """The latent of a Wan 2.2 TI2V 5B video (48 channels, 1/16 of the size): empty, or with ``start_image``'s
    latent frames first and a noise mask keeping them (image-to-video)."""

    category = "conditioning/inpaint"
    vae = Input(VAE)
    width = Input(INT, default=1280, min=32, max=MAX_RESOLUTION, step=32)
    height = Input(INT, default=704, min=32, max=MAX_RESOLUTION, step=32)
    length = Input(INT, default=49, min=1, max=MAX_RESOLUTION, step=4)
    batch_size = Input(INT, default=1, min=1, max=4096)
    start_image = Input(IMAGE, optional=True)
    outputs = (Output(LATENT),)

    def execute(self, vae, width: int, height: int, length: int, batch_size: int,
                start_image: torch.Tensor | None = None) -> tuple:
        frames = (length - 1) // 4 + 1
        latent = torch.zeros([1, 48, frames, height // 16, width // 16])
        if start_image is None:
            return ({"samples": latent.repeat(batch_size, 1, 1, 1, 1)},)
        if getattr(vae, "latent_channels", 48) != 48:
            raise ValueError(f"Wan22ImageToVideoLatent.vae: Wan 2.2's 48-channel VAE is needed (wan2.2_vae); this one "
                             f"has {vae.latent_channels} latent channels")
        from nodegraph_nodes.dit.wan_i2v import _resized, encode_video

        image = _resized(start_image[:length], width, height)
        encoded = encode_video(self.ctx, vae, image, "Wan22ImageToVideoLatent")
        mask = torch.ones([1, 1, frames, latent.shape[-2], latent.shape[-1]])
        latent[:, :, :encoded.shape[2]] = encoded
        mask[:, :, :encoded.shape[2]] = 0.0
        latent = WAN22.process_out(latent) * mask + latent * (1.0 - mask)
        return ({"samples": latent.repeat(batch_size, 1, 1, 1, 1),
                 "noise_mask": mask.repeat(batch_size, 1, 1, 1, 1)},)
