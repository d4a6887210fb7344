"""Qwen-Image 2.1: the single-stream block-causal transformer (diffusers ``QwenImage21Transformer2DModel``),
its 64-channel RGBA VAE (``AutoencoderKLQwenImage21``, 16× spatial), the MODEL value with its runner and the
prefix KV cache (ComfyUI's ``QwenImage21Cache`` options). Text encoder (Qwen3-VL): :mod:`.qwen_image21_text`;
nodes: :mod:`.qwen_image21_nodes`.

Facts used (diffusers' pipeline, ComfyUI's node specs):

* Latents ``[B, 64, H/16, W/16]``; the model space is ``(latent - mean) / std`` per channel with the VAE
  config's ``latents_mean`` / ``latents_std`` (the release's 64 values, diffusers' defaults). The transformer
  reads them unpatched (one token per latent pixel, raster order).
* The text states and the target image form one joint sequence: each vision slot of the encoder (an
  ``<|image_pad|>``) stands for 2×2 latent tokens, reference latents fill the slots of their images and the
  target image's tokens are appended (``img_mask`` = the conditioning's image-pad mask + one slot per 2×2
  target tokens; ``img_shapes`` = references first, the target last). Network time = sigma (flow).
* ``causal_condition``: text and reference tokens are modulated at t = 0, so their keys/values do not depend
  on the step: the first call of a run fills a cache (``extract``), later calls recompute only the target
  tokens (``cached``) — diffusers' ``use_kv_cache``, ComfyUI's default (``QwenImage21Cache`` device ``auto``).
  ``off`` recomputes the whole sequence every step. ``cpu`` keeps the cache in RAM between steps; ``int8`` /
  ``int4`` store it quantized per token and head (symmetric absmax; int4 values are kept one per int8 byte, not
  packed: the precision of int4, not its memory).
* Default sampling: ComfyUI's Flux-type flow with shift 1.15 as for Qwen-Image (ComfyUI's own default for 2.1
  could not be established; the templates sample with KSampler euler/simple at cfg 1).

LoRAs: :mod:`.qwen_image21_lora`. Key layouts (detected from the names):

* transformer: diffusers' names (``txt_in.text_norm.weight``, ``modulation.1.weight``,
  ``transformer_blocks.N.attn.to_q.weight`` …), bare or under ``model.diffusion_model.``; ComfyUI's files fuse
  each block's SwiGLU gate and up projections into ``img_mlp.gate_up.weight`` (gate rows first), split here as
  diffusers' single-file converter does. Config from the shapes; RoPE axes (16, 56, 56) for head width 128, else
  (h/8, 7h/16, 7h/16). ConvRot INT8 files (``*_int8_convrot``) are dequantised as they
  are read (:mod:`nodegraph_nodes.diffusion.quantized`).
* VAE: diffusers' names (``encoder.conv_in``, ``encoder.down_blocks.N.resnets.M``, ``…downsampler.resample.1``,
  ``decoder.up_blocks.N.upsampler``, ``quant_conv``); 4 input/output channels (RGBA). An RGB image is encoded
  with an opaque alpha channel; decoding gives RGBA ``[B, H, W, 4]``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices, marker_prefix
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.qwen_image import DEFAULT_SHIFT, ChannelLatentFormat, refuse_integer_weights, rope_axes
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

PREFIXES = ("model.diffusion_model.", "")
MARKERS = ("txt_in.text_norm.weight", "modulation.1.weight", "img_in.weight")
CACHE_DEVICES = ("auto", "gpu", "cpu", "off")
CACHE_DTYPES = ("default", "int8", "int4")


def _latent_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    import inspect

    from diffusers import AutoencoderKLQwenImage21

    params = inspect.signature(AutoencoderKLQwenImage21.__init__).parameters
    return tuple(params["latents_mean"].default), tuple(params["latents_std"].default)


def latent_format() -> ChannelLatentFormat:
    mean, std = _latent_stats()
    return ChannelLatentFormat(mean, std, tuple((0.0, 0.0, 0.0) for _ in mean), (0.0, 0.0, 0.0))


# -- transformer ------------------------------------------------------------------------------------

def detect_prefix(keys) -> str | None:
    """The key prefix of a Qwen-Image 2.1 transformer's weights, or ``None``."""
    return marker_prefix(keys, PREFIXES, MARKERS)


def to_diffusers(sd: dict) -> dict:
    """ComfyUI's layout (fused ``img_mlp.gate_up``) → diffusers' names; diffusers' layout passes through."""
    out = {}
    for k, v in sd.items():
        if k.endswith("img_mlp.gate_up.weight"):
            gate, up = v.chunk(2, dim=0)
            out[k.replace("gate_up", "gate_layer")] = gate
            out[k.replace("gate_up", "proj")] = up
        else:
            out[k] = v
    return out


def transformer_config(sd: dict) -> dict:
    """``QwenImage21Transformer2DModel`` config from the weights' shapes (diffusers' names)."""
    try:
        img_in = sd["img_in.weight"]
        head_dim = int(sd["transformer_blocks.0.attn.norm_q.weight"].shape[0])
        txt = sd["txt_in.in_layer.weight"]
        mlp = sd["transformer_blocks.0.img_mlp.proj.weight"]
        proj = sd["proj_out.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Qwen-Image 2.1 transformer weights lack {exc.args[0]}") from None
    inner = int(img_in.shape[0])
    layers = count_indices(sd, r"transformer_blocks\.(\d+)\.")
    return {"patch_size": 1, "in_channels": int(img_in.shape[1]), "out_channels": int(proj.shape[0]),
            "num_layers": layers, "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
            "context_in_dim": int(txt.shape[1]), "mlp_ratio": int(mlp.shape[0]) // inner,
            "axes_dims_rope": rope_axes(head_dim), "causal_condition": True}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import QwenImage21Transformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "Qwen-Image 2.1 transformer")
    sd = to_diffusers(sd)
    return _instantiate(QwenImage21Transformer2DModel, transformer_config(sd), sd, dtype,
                        "Qwen-Image 2.1 transformer")


def load_transformer(path, prefix: str, manager, device: str, weight_dtype: str = "default") -> "QwenImage21Model":
    """UNETLoader for a Qwen-Image 2.1 transformer file."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.loading import flow_dtype

    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device),
                                     build_transformer)
    return QwenImage21Model(handle, "qwen_image21", source=str(path))


# -- VAE --------------------------------------------------------------------------------------------

VAE_MARKERS = ("encoder.conv_in.weight", "encoder.down_blocks.0.resnets.0.conv1.weight", "quant_conv.weight",
               "decoder.up_blocks.0.resnets.0.conv1.weight")


def is_vae(keys) -> bool:
    """A Qwen-Image 2.1 VAE: diffusers' names, 64-channel latent, RGBA input (checked on load)."""
    keyset = set(keys)
    return all(m in keyset for m in VAE_MARKERS) and "encoder.down_blocks.0.downsampler.resample.1.weight" in keyset


def vae_config(sd: dict) -> dict:
    """``AutoencoderKLQwenImage21`` config from the weights' shapes."""
    base = int(sd["encoder.conv_in.weight"].shape[0])
    z_dim = int(sd["quant_conv.weight"].shape[0]) // 2
    down = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    mult = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0]) // base for i in down]
    res = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    temporal = [f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in sd for i in down[:-1]]
    dec_base = int(sd["decoder.conv_out.weight"].shape[1])
    mean, std = _latent_stats()
    return {"base_dim": base, "decoder_base_dim": dec_base, "z_dim": z_dim, "dim_mult": mult,
            "num_res_blocks": res, "attn_scales": [], "temperal_downsample": temporal,
            "in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
            "out_channels": int(sd["decoder.conv_out.weight"].shape[0]),
            "latents_mean": list(mean)[:z_dim], "latents_std": list(std)[:z_dim]}


class RgbaVae(torch.nn.Module):
    """The 2.1 VAE seen as an image VAE: 4-D images (RGB gets an opaque alpha) and latents in, one frame inside."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def config(self):
        return self.vae.config

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        return (self.vae.decode(z.unsqueeze(2), return_dict=False)[0][:, :, 0],)

    def encode(self, x: torch.Tensor):
        from nodegraph_nodes.dit.qwen_image import _Encoded, _Mode

        want = int(self.vae.config.in_channels)
        if x.shape[1] < want:  # RGB in [-1, 1]: alpha 1 (opaque)
            x = torch.cat([x, x.new_ones(x.shape[0], want - x.shape[1], *x.shape[2:])], dim=1)
        return _Encoded(_Mode(self.vae.encode(x.unsqueeze(2)).latent_dist.mode()[:, :, 0]))


def build_vae(sd: dict, dtype: torch.dtype) -> RgbaVae:
    from diffusers import AutoencoderKLQwenImage21

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    return RgbaVae(_instantiate(AutoencoderKLQwenImage21, vae_config(sd), sd, dtype, "Qwen-Image 2.1 VAE"))


def load_vae(path, manager, device: str):
    """VAELoader for a Qwen-Image 2.1 VAE file."""
    from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
    from nodegraph_nodes.diffusion.files import read_state_dict
    from nodegraph_nodes.dit.loading import flow_dtype

    dtype = flow_dtype(device)
    handle = manager.load(_manager_key(path, "vae", dtype),
                          lambda: build_vae(read_state_dict(path, allow_pickle=manager.allow_pickle), dtype))
    return VaeModel(handle, 16, 64)


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class QwenImage21Model(FlowModel):
    """MODEL: a Qwen-Image 2.1 transformer; ``cache`` = (device, dtype) of the prefix KV cache."""

    family: str = "qwen_image21"
    cache: tuple[str, str] = ("auto", "default")
    #: an empty latent of another node (EmptyLatentImage: 1/8 of the image) is fitted to 1/16 (ComfyUI's rule)
    empty_latent_scale: float = 0.5

    @property
    def format(self):
        return latent_format()

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.flux_flow, DEFAULT_SHIFT)

    def with_cache(self, device: str, dtype: str) -> "QwenImage21Model":
        return dataclasses.replace(self, cache=(device, dtype))

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, QwenImage21Runner, self.format.process_in, self.cache)

    def lora_patch(self, sd: dict, strength: float, name: str):
        from nodegraph_nodes.dit.qwen_image21_lora import qwen21_lora_patch

        return qwen21_lora_patch(self.handle.get(), sd, strength, name)


def quantize(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization per (token, head) over the head width: int8 values and fp32 scales."""
    qmax = 2 ** (bits - 1) - 1
    scale = t.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    return (t.float() / scale).round().clamp(-qmax, qmax).to(torch.int8), scale


class _Stored:
    """One layer's prefix keys/values as the cache options store them."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, device: str, dtype: str, where: str):
        self.dtype_name = dtype
        self.compute = k.dtype
        bits = {"int8": 8, "int4": 4}.get(dtype)
        self.parts = [quantize(t, bits) if bits else (t, None) for t in (k, v)]
        self.parts = [(q.to(where), None if s is None else s.to(where)) for q, s in self.parts]

    def get(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for q, s in self.parts:
            q = q.to(device)
            out.append(q if s is None else (q.float() * s.to(device)).to(self.compute))
        return out[0], out[1]


class QwenImage21Runner(NetRunner):
    """One run's calls of a ``QwenImage21Transformer2DModel``, with the prefix KV cache per conditioning."""

    def __init__(self, net, device: str, process_in: Callable[[torch.Tensor], torch.Tensor],
                 cache: tuple[str, str] = ("auto", "default")):
        super().__init__(net, device)
        self.process_in = process_in
        self.cache_device, self.cache_dtype = cache
        self.caches: dict = {}

    def _references(self, part: CondPart) -> tuple[list[torch.Tensor], list[tuple[int, int, int]]]:
        packed, shapes = [], []
        for ref in part.extras.get("reference_latents") or ():
            if ref.ndim == 5:
                ref = ref[:, :, 0]
            r = self.process_in(ref[:1].float()).to(self.device, self.dtype)
            if r.shape[-2] % 2 or r.shape[-1] % 2:
                raise ValueError(f"a Qwen-Image 2.1 reference latent needs even sides (images in multiples of 32 px), "
                                 f"got {tuple(r.shape[-2:])}")
            packed.append(_rows(r.flatten(2).transpose(1, 2), part.rows))
            shapes.append((1, r.shape[-2], r.shape[-1]))
        return packed, shapes

    def _kv(self, key, layers: int):
        """The diffusers cache and mode for this call, or ``(None, None)`` with the cache off."""
        from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

        if self.cache_device == "off":
            return None, None
        stored = self.caches.get(key)
        cache = QwenImage21KVCache(layers)
        if stored is None:
            return cache, "extract"
        for i, s in enumerate(stored):
            cache.get_layer(i).store(*s.get(self.device))
        return cache, "cached"

    def _keep(self, key, cache) -> None:
        where = "cpu" if self.cache_device == "cpu" else self.device
        self.caches[key] = [_Stored(*c.get(), self.cache_device, self.cache_dtype, where)
                            for c in cache.layer_caches]

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 4:
            raise ValueError(f"Qwen-Image 2.1 samples image latents [B, 64, h, w], not {tuple(x_in.shape)}")
        b, c, h, w = x_in.shape
        if h % 2 or w % 2:
            raise ValueError(f"Qwen-Image 2.1 needs latents with even sides (images in multiples of 32 px), "
                             f"got {h}x{w} latent pixels")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(b)
        outs, row = [], 0
        for part in parts:
            rows = part.rows
            states = _rows(part.cond.to(self.device, self.dtype), rows)
            pads = part.extras.get("image_pad_mask")
            if pads is None:
                pads = torch.zeros(states.shape[:2], dtype=torch.bool)
            pads = _rows(pads.to(self.device).bool(), rows)
            mask = part.extras.get("attention_mask")
            if mask is not None:
                mask = _rows(mask.to(self.device), rows)
                if bool(mask.all()):
                    mask = None
            xs = x[row:row + rows].flatten(2).transpose(1, 2)
            refs, ref_shapes = self._references(part)
            img_mask = torch.cat([pads, pads.new_ones(rows, xs.shape[1] // 4)], dim=1)
            key = (id(part.cond), rows, tuple(ref.shape for ref in refs))
            cache, mode = self._kv(key, len(self.net.transformer_blocks))
            out = self.net(hidden_states=torch.cat([*refs, xs], dim=1), encoder_hidden_states=states,
                           encoder_hidden_states_mask=mask, timestep=t[row:row + rows],
                           img_shapes=[[*ref_shapes, (1, h, w)]] * rows, img_mask=img_mask,
                           kv_cache=cache, kv_cache_mode=mode, return_dict=False)[0]
            if mode == "extract":
                self._keep(key, cache)
            out = out[:, -xs.shape[1]:]
            outs.append(out.transpose(1, 2).reshape(rows, c, h, w))
            row += rows
        return torch.cat(outs)


def is_vae_file(path, allow_pickle: bool) -> bool:
    """A safetensors file with the 2.1 VAE's names whose ``encoder.conv_in`` reads 4 (RGBA) channels (Wan 2.2's
    diffusers-layout VAE has the same names and reads 12)."""
    from safetensors import safe_open

    from nodegraph_nodes.dit.loading import file_keys

    if not (path.is_file() and path.suffix == ".safetensors" and is_vae(file_keys(path, allow_pickle))):
        return False
    with safe_open(str(path), framework="pt") as f:
        return f.get_slice("encoder.conv_in.weight").get_shape()[1] == 4
