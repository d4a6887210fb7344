"""Qwen-Image: the MMDiT transformer (diffusers ``QwenImageTransformer2DModel``), its 3D causal VAE
(``AutoencoderKLQwenImage``, Wan 2.1's architecture) and the MODEL value's runner.

Facts (ComfyUI's): latent format Wan 2.1 (16 channels; the model works on ``(latent - mean) / std`` per
channel), default sampling ComfyUI's Flux-type flow with shift 1.15 (templates set
``ModelSamplingAuraFlow``: flow, network time = sigma); the network predicts the flow velocity.

Key layouts (detected from the names):

* transformer: ComfyUI's repackaged files and the official release use diffusers' own names
  (``txt_norm.weight``, ``img_in.weight``, ``transformer_blocks.N.img_mod.1.weight`` …), bare or under
  ``model.diffusion_model.``; the config comes from the shapes. RoPE axes are not in the weights: the
  released head width 128 uses (16, 56, 56); other head widths (tiny test models) (h/8, 7h/16, 7h/16).
* VAE: ComfyUI's ``qwen_image_vae.safetensors`` is in Wan's original layout (``encoder.conv1``,
  ``encoder.downsamples.N.residual.…``, ``decoder.middle.…``, ``conv1``/``conv2``), converted with
  diffusers' Wan VAE converter; a diffusers-layout file (``encoder.conv_in``, ``down_blocks``) loads as is.
  Two resnets per level (as released). Image LATENTs are 4-D ``[B, 16, h, w]`` (ComfyUI's are 5-D with
  one frame; nodegraph keeps images 4-D, the VAE wrapper adds and drops the frame axis).

The runner packs the latent into 2×2 patches (padding odd sides circularly, as for Flux), gives the
text states of each conditioning part with their mask and ``img_shapes`` ``(1, h/2, w/2)`` — followed by the
part's ``reference_latents`` (Qwen-Image-Edit; ReferenceLatent), packed the same way, each its own entry
of ``img_shapes`` (positions by index, as diffusers; ``reference_latents_method`` ``index_timestep_zero``,
Edit 2511's, also modulates the reference tokens at timestep 0), the output cut back to the image's
tokens — and calls
the network once per part (ComfyUI does not batch Qwen conditionings of different lengths either; the
rows of one part are batched). A part's InstantX ControlNet hints (``extras["control"]``) add their block
residuals (:mod:`.qwen_controlnet`).
"""

from __future__ import annotations

import dataclasses
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices, marker_prefix
from nodegraph_nodes.dit.model import FlowModel, _rows, pack_latents, unpack_latents
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner, pad_even
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

# -- latent format ----------------------------------------------------------------------------------

WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN21_RGB = ((-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
             (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
             (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
             (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
             (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
             (0.1984, 0.0913, 0.1861))
WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


@dataclass(frozen=True)
class ChannelLatentFormat:
    """A latent format normalised per channel: model space = ``(latent - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels) + (1,) * (latent.ndim - 2)
        mean = torch.tensor(self.mean, device=latent.device, dtype=latent.dtype).view(shape)
        std = torch.tensor(self.std, device=latent.device, dtype=latent.dtype).view(shape)
        return mean, std

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return (latent - mean) / std

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return latent * std + mean

    def preview(self, latent: torch.Tensor) -> torch.Tensor:
        factors = torch.tensor(self.rgb_factors, dtype=torch.float32, device=latent.device)
        bias = torch.tensor(self.rgb_bias, dtype=torch.float32, device=latent.device)
        rgb = torch.einsum("chw,cr->hwr", latent[0].float(), factors) + bias
        return ((rgb + 1) / 2).clamp(0, 1).cpu()


WAN21 = ChannelLatentFormat(WAN21_MEAN, WAN21_STD, WAN21_RGB, WAN21_RGB_BIAS)
#: ComfyUI's default sampling of Qwen-Image (Flux-type flow, shift 1.15, network time = sigma)
DEFAULT_SHIFT = 1.15

# -- transformer files ------------------------------------------------------------------------------

PREFIXES = ("model.diffusion_model.", "")
MARKERS = ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight")


def detect_prefix(keys) -> str | None:
    """The key prefix of a Qwen-Image transformer's weights, or ``None`` if these are not one."""
    return marker_prefix(keys, PREFIXES, MARKERS)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    if head_dim == 128:
        return (16, 56, 56)
    a = head_dim // 8
    b = (head_dim - a) // 2
    return (a, b, head_dim - a - b)


def transformer_config(sd: dict) -> dict:
    """``QwenImageTransformer2DModel`` config from the weights' shapes."""
    try:
        img_in = sd["img_in.weight"]
        head_dim = int(sd["transformer_blocks.0.attn.norm_q.weight"].shape[0])
        txt_in = sd["txt_in.weight"]
        proj = sd["proj_out.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Qwen-Image transformer weights lack {exc.args[0]}") from None
    inner = int(img_in.shape[0])
    layers = count_indices(sd, r"transformer_blocks\.(\d+)\.")
    patch = 2
    return {"patch_size": patch, "in_channels": int(img_in.shape[1]), "out_channels": int(proj.shape[0]) // (patch * patch),
            "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "joint_attention_dim": int(txt_in.shape[1]), "guidance_embeds": False,
            "axes_dims_rope": rope_axes(head_dim)}


def refuse_integer_weights(sd: dict, what: str) -> None:
    """Integer weights left after reading: ComfyUI's quantised files (``*_int8_convrot`` …) arrive dequantised
    (:mod:`nodegraph_nodes.diffusion.quantized`), so these are integers without ComfyUI's markers, a layout
    nodegraph does not know: say so instead of building a model from raw integers."""
    bad = next((k for k, v in sd.items() if hasattr(v, "dtype") and not v.is_floating_point() and v.ndim >= 2), None)
    if bad is not None:
        raise ModelFileError(f"this {what} file holds integer-quantized weights ({bad}: {sd[bad].dtype}) without "
                             "ComfyUI's quantisation markers (comfy_quant), so nodegraph cannot dequantise them: use "
                             "the bf16 or fp8 release, or a ComfyUI-quantised one")


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import QwenImageTransformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "Qwen-Image transformer")
    return _instantiate(QwenImageTransformer2DModel, transformer_config(sd), sd, dtype, "Qwen-Image transformer")


# -- VAE --------------------------------------------------------------------------------------------

WAN_VAE_MARKER = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_VAE_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"


def is_qwen_vae(keys) -> bool:
    keyset = set(keys)
    return WAN_VAE_MARKER in keyset or (DIFFUSERS_VAE_MARKER in keyset and "encoder.conv_in.weight" in keyset
                                         and any(k.endswith("time_conv.weight") for k in keyset))


def vae_config(sd: dict) -> dict:
    """``AutoencoderKLQwenImage`` config from diffusers-layout weights (two resnets per level)."""
    base = int(sd["encoder.conv_in.weight"].shape[0])
    z_dim = int(sd["quant_conv.weight"].shape[0]) // 2
    blocks = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    mult, temporal = [], []
    level_of = 3  # two resnets and a resample per level, the last level without a resample
    for i in blocks:
        if i % level_of == 0:
            mult.append(int(sd[f"encoder.down_blocks.{i}.conv1.weight"].shape[0]) // base)
        elif i % level_of == 2:
            temporal.append(f"encoder.down_blocks.{i}.time_conv.weight" in sd)
    return {"base_dim": base, "z_dim": z_dim, "dim_mult": mult, "num_res_blocks": 2, "attn_scales": [],
            "temperal_downsample": temporal, "latents_mean": list(WAN21_MEAN), "latents_std": list(WAN21_STD)}


class ImageVae(torch.nn.Module):
    """A video VAE seen as an image VAE: 4-D images and latents in, one frame inside."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def config(self):
        return self.vae.config

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        if z.ndim == 5:  # a video latent (Wan): its frames as a batch of images
            video = self.vae.decode(z, return_dict=False)[0]
            return (video.permute(0, 2, 1, 3, 4).flatten(0, 1),)
        return (self.vae.decode(z.unsqueeze(2), return_dict=False)[0][:, :, 0],)

    def encode(self, x: torch.Tensor):
        mode = self.vae.encode(x.unsqueeze(2)).latent_dist.mode()[:, :, 0]
        return _Encoded(_Mode(mode))


@dataclass(frozen=True)
class _Mode:
    value: torch.Tensor

    def mode(self) -> torch.Tensor:
        return self.value

    def sample(self, generator=None) -> torch.Tensor:
        return self.value


@dataclass(frozen=True)
class _Encoded:
    latent_dist: _Mode


def build_vae(sd: dict, dtype: torch.dtype) -> ImageVae:
    from diffusers import AutoencoderKLQwenImage
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    if WAN_VAE_MARKER in sd:
        sd = convert_wan_vae_to_diffusers(sd)
    return ImageVae(_instantiate(AutoencoderKLQwenImage, vae_config(sd), sd, dtype, "Qwen-Image VAE"))


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QwenImageModel(FlowModel):
    """MODEL: a Qwen-Image transformer."""

    family: str = "qwen_image"

    @property
    def format(self):
        return WAN21

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.flux_flow, DEFAULT_SHIFT)

    def open_runner(self, ctx, latent_shape: tuple):
        return _open_qwen_runner(self, ctx, latent_shape)

    def lora_patch(self, sd: dict, strength: float, name: str):
        from nodegraph_nodes.dit.llm_lora import llm_lora_patch

        return llm_lora_patch(self.family, self.handle.get(), sd, strength, name)


@contextmanager
def _open_qwen_runner(model: "QwenImageModel", ctx, latent_shape: tuple) -> Iterator["QwenImageRunner"]:
    """The runner, with the evaluation of InstantX ControlNet hints (:mod:`.qwen_controlnet`)."""
    from nodegraph_nodes.dit.qwen_controlnet import QwenControl

    with ExitStack() as stack:
        runner = stack.enter_context(open_runner(model, ctx, latent_shape, QwenImageRunner, model.format.process_in))
        runner.control = QwenControl(ctx.service("models"), ctx.device, stack, model.format.process_in)
        yield runner


def text_batch(parts: list[CondPart], device, dtype) -> list[tuple[torch.Tensor, torch.Tensor | None, int]]:
    """Per part: its states ``[rows, L, D]``, its mask (or ``None``) and its row count."""
    out = []
    for p in parts:
        states = _rows(p.cond.to(device, dtype), p.rows)
        mask = p.extras.get("attention_mask")
        if mask is not None:
            mask = _rows(mask.to(device), p.rows)
        out.append((states, mask, p.rows))
    return out


class QwenImageRunner(NetRunner):
    """One run's calls of a ``QwenImageTransformer2DModel``."""

    def __init__(self, net, device: str, process_in: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(net, device)
        self.process_in = process_in or (lambda t: t)
        self.control = None  # QwenControl: ControlNet hints on the conditioning (set by the model's open_runner)

    def begin_step(self, sigma: torch.Tensor, in_range: Callable[[float, float], bool]) -> None:
        if self.control is not None:
            self.control.begin_step(in_range)

    def _references(self, part: CondPart) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
        """A part's reference latents (Edit; raw VAE latents → model space), packed, and their shapes."""
        packed, shapes = [], []
        for ref in part.extras.get("reference_latents") or ():
            if ref.ndim == 5:  # ComfyUI's one-frame video latents
                ref = ref[:, :, 0]
            r = self.process_in(ref.float()).to(self.device, self.dtype)
            r = pad_even(r)
            packed.append(_rows(pack_latents(r[:1]), part.rows))
            shapes.append((1, r.shape[-2] // 2, r.shape[-1] // 2))
        return packed, shapes

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 4:
            raise ValueError(f"this Qwen-Image model samples image latents [B, 16, h, w], not {tuple(x_in.shape)}; "
                             "Qwen-Image-Layered latents (EmptyQwenImageLayeredLatentImage) need the layered model, "
                             "which nodegraph does not load yet")
        h, w = x_in.shape[-2:]
        x = pad_even(x_in.to(self.device, self.dtype))
        hh, ww = x.shape[-2:]
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part, (states, mask, rows) in zip(parts, text_batch(parts, self.device, self.dtype)):
            xs = pack_latents(x[row:row + rows])
            refs, ref_shapes = self._references(part)
            if mask is None:
                mask = torch.ones(states.shape[:2], device=self.device, dtype=torch.long)
            zero = bool(refs) and part.extras.get("reference_latents_method") == "index_timestep_zero"
            extra = {}
            hint = part.extras.get("control")
            if hint is not None and self.control is not None:
                samples = self.control.block_samples(hint, xs, states, mask, t[row:row + rows], (h, w),
                                                     (1, hh // 2, ww // 2), sum(r.shape[1] for r in refs),
                                                     len(self.net.transformer_blocks))
                if samples is not None:
                    extra["controlnet_block_samples"] = samples
            with reference_timestep_zero(self.net, zero):
                out = self.net(hidden_states=torch.cat([xs, *refs], dim=1), encoder_hidden_states=states,
                               encoder_hidden_states_mask=mask, timestep=t[row:row + rows],
                               img_shapes=[[(1, hh // 2, ww // 2), *ref_shapes]] * rows, return_dict=False,
                               **extra)[0]
            outs.append(unpack_latents(out[:, :xs.shape[1]], hh, ww))
            row += rows
        return torch.cat(outs)[..., :h, :w]


@contextmanager
def reference_timestep_zero(net, on: bool) -> Iterator[None]:
    """Qwen-Image-Edit 2511's ``index_timestep_zero``: the reference tokens are modulated at timestep 0
    (diffusers' ``zero_cond_t``, switched on for this call only)."""
    if not on or getattr(net, "zero_cond_t", False):
        yield
        return
    modules = [net, *net.transformer_blocks]
    for m in modules:
        m.zero_cond_t = True
    try:
        yield
    finally:
        for m in modules:
            m.zero_cond_t = False


def replace_sampling(model: FlowModel, **changes) -> FlowModel:
    return dataclasses.replace(model, **changes)
