"""Wan Animate 2 (Wan-Video's end-to-end character animation): the transformer (diffusers
``WanAnimate2Transformer3DModel``), its loading from ComfyUI's repackaged file and the MODEL value's runner.

The model (facts from diffusers' ``transformer_wan_animate_2.py`` and its modular pipeline): a Wan 2.1-style DiT
with 36 input channels whose self-attention also sees a *pose* (driving video) stream. The pose latents go
through the network once at a fixed timestep 1 (the "extract" pass: the pose prompt's text states, the CLIP
vision states of the pose video's first frame, the pose latents as input and, as condition channels, an
all-ones 4-channel mask and the pose latents again); every block keeps its self-attention keys and values
(before RoPE). In the generation pass (the noisy latent with the reference image's latent as frame 0 and the
continuation frames after it in the condition channels) the tokens of generated frame ``f`` attend to every
generated token plus the cached pose tokens of pose frame ``f - 1`` (generation RoPE positions start at 0, the
pose keys' at ``(1, 0, pose grid width)`` with the block's ``refer_stride`` on time). The unconditional branch of
classifier-free guidance skips block 9.

diffusers runs that attention as flex attention over a block mask; the runner here computes the same sets
of keys with dense scaled-dot-product attention, one generated frame at a time (no flex, no compile).

Key layouts (both read by diffusers' ``convert_wan_animate_2_transformer_to_diffusers``):

* Comfy-Org's repackaged files (``wan_animate_2_{bf16,int8_convrot}.safetensors``, ``wan_animate_2_distill_*``):
  a Wan 2.1 I2V 14B file's names (``blocks.N.self_attn.q.weight``, ``img_emb.proj.…``, ``cross_attn.k_img`` …,
  bare or under ``model.diffusion_model.``) — the weights alone cannot tell it from Wan 2.1 I2V — recognised by
  the safetensors ``__metadata__`` entry ``config`` = JSON with ``transformer.model_type == "animate2"`` (as
  ComfyUI's detection; the int8 files' ``comfy_quant`` layers are dequantised as read);
* Wan-AI's release: the same names with every block wrapped, ``blocks.N.block.self_attn.q.weight`` (ComfyUI does
  not load these; nodegraph does).

nodegraph's choices where ComfyUI's behaviour is not documented in detail (all neutral at their defaults,
which the templates use): ``pose_strength`` scales the pose tokens' values; ``reference_image_strength`` adds
``log(strength)`` to the generated frames' attention logits on the reference image's latent frame (0 removes
it); outside ``pose_start_percent`` … ``pose_end_percent`` the pose tokens are left out. With context windows
(:mod:`nodegraph_nodes.sampling.context_windows`) each window's pose frames (``frame - 1`` of its frames) get
their own extract pass, positions counted from the window's start.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.model import _rows
from nodegraph_nodes.dit.qwen_image import open_runner
from nodegraph_nodes.dit.runner_common import NetRunner
from nodegraph_nodes.dit.wan import WanModel
from nodegraph_nodes.dit.wan_variant import build_variant, latent_in, load_variant
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.sampling.model import CondPart

MARKER = "blocks.0.block.self_attn.q.weight"
PREFIXES = ("model.diffusion_model.", "")
CLIP_WIDTH = 1280  # diffusers' image projection input (CLIP vision H)
UNCOND_SKIP_BLOCK = 9
DEFAULT_SHIFT = 5.0  # ComfyUI's WAN_Animate2 sampling settings


def is_animate2_metadata(metadata: dict) -> bool:
    """Whether a safetensors ``__metadata__`` declares Wan Animate 2 (``config``: ``{"transformer": {"model_type":
    "animate2"}}``)."""
    try:
        config = json.loads(metadata.get("config") or "{}")
    except (TypeError, ValueError):
        return False
    transformer = config.get("transformer") if isinstance(config, dict) else None
    return isinstance(transformer, dict) and transformer.get("model_type") == "animate2"


def detect_prefix(keys, path: Path | None = None) -> str | None:
    """The key prefix of a Wan Animate 2 file (Wan-AI's wrapped blocks, or Wan 2.1 names with Comfy-Org's
    metadata in the file at ``path``), else ``None``."""
    keyset = set(keys)
    for prefix in PREFIXES:
        if prefix + MARKER in keyset and prefix + "patch_embedding.weight" in keyset:
            return prefix
    if path is None:
        return None
    from nodegraph_nodes.dit.ltx2_iclora import safetensors_metadata
    from nodegraph_nodes.dit.wan import detect_transformer

    found = detect_transformer(keyset)
    if found is None or found[0] != "original" or not is_animate2_metadata(safetensors_metadata(path)):
        return None
    return found[1]


def transformer_config(sd: dict) -> dict:
    """``WanAnimate2Transformer3DModel`` config (plus ``image_dim``) from diffusers-layout weights' shapes."""
    try:
        patch = sd["patch_embedding.weight"]
        head = sd["head.head.weight"]
        ffn = sd["blocks.0.ffn.0.weight"]
        text = sd["text_embedding.0.weight"]
        time = sd["time_embedding.0.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Wan Animate 2 transformer weights lack {exc.args[0]}") from None
    dim = int(patch.shape[0])
    size = tuple(int(s) for s in patch.shape[2:])
    image = sd.get("img_emb.proj.0.weight")
    return {"patch_size": size, "in_dim": int(patch.shape[1]), "dim": dim, "ffn_dim": int(ffn.shape[0]),
            "freq_dim": int(time.shape[1]), "text_dim": int(text.shape[1]),
            "out_dim": int(head.shape[0]) // math.prod(size), "num_heads": dim // 128 if dim % 128 == 0 else 1,
            "num_layers": count_indices(sd, r"blocks\.(\d+)\."), "cross_attn_norm": "blocks.0.norm3.weight" in sd,
            "use_img_emb": image is not None, "image_dim": int(image.shape[0]) if image is not None else CLIP_WIDTH}


class _Factory:
    """``from_config`` for :func:`_instantiate`: diffusers' class, its image projection sized to the file's CLIP
    width (1280 in every release; the tiny test models use narrower ones)."""

    @staticmethod
    def from_config(config: dict):
        from diffusers import WanAnimate2Transformer3DModel
        from diffusers.models.transformers.transformer_wan_animate_2 import MLPProj

        config = dict(config)
        image_dim = config.pop("image_dim", CLIP_WIDTH)
        net = WanAnimate2Transformer3DModel.from_config(config)
        if net.config.use_img_emb and image_dim != CLIP_WIDTH:
            net.img_emb = MLPProj(image_dim, net.config.dim)
        return net


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers.loaders.single_file_utils import convert_wan_animate_2_transformer_to_diffusers

    return build_variant(sd, dtype, "Wan Animate 2 transformer",
                         lambda sd: convert_wan_animate_2_transformer_to_diffusers(dict(sd)), transformer_config,
                         _Factory)


def load_transformer(path: Path, prefix: str, manager, device: str,
                     weight_dtype: str = "default") -> "WanAnimate2Model":
    """UNETLoader for a Wan Animate 2 file."""
    return load_variant(path, prefix, manager, device, weight_dtype, build_transformer, WanAnimate2Model)


# -- conditioning -----------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PoseStream:
    """What WanAnimate2ToVideo puts on the conditionings for the pose branch: the pose video's latent
    ``[1, 16, frames, h, w]`` (VAE space), the pose prompt's text states, the CLIP vision output of the pose
    video's first frame, the pose strength and the sampling window in which the branch is used."""

    latent: torch.Tensor
    text: torch.Tensor
    clip_vision: Any
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0


@dataclass(frozen=True)
class CacheSettings:
    """WanAnimate2Cache: where the pose branch's keys and values are kept between steps and how."""

    device: str = "cpu"
    dtype: str = "default"


# -- the pose keys' cache -----------------------------------------------------------------------------------

def _quantize(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-vector (last axis) absmax quantization: integer codes and scales."""
    top = 2 ** (bits - 1) - 1
    scale = t.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / top
    return torch.round(t.float() / scale).clamp(-top, top).to(torch.int8), scale


class _LayerStore:
    """One block's pose keys / values (the ``store`` / ``get`` interface diffusers' processor writes to),
    optionally quantized and kept on another device."""

    def __init__(self, settings: CacheSettings | None, compute_device):
        self.settings = settings
        self.compute_device = compute_device
        self.items: tuple | None = None

    def store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        s = self.settings
        if s is None or s.dtype == "default":
            where = self.compute_device if s is None or s.device == "gpu" else "cpu"
            self.items = ("plain", key.to(where), value.to(where), key.dtype)
            return
        bits = 8 if s.dtype == "int8" else 4
        where = self.compute_device if s.device == "gpu" else "cpu"
        kq, ks = _quantize(key, bits)
        vq, vs = _quantize(value, bits)
        self.items = ("quant", (kq.to(where), ks.to(where)), (vq.to(where), vs.to(where)), key.dtype)

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.items is None:
            raise RuntimeError("Wan Animate 2: the pose branch's cache is empty (no extract pass ran)")
        kind, k, v, dtype = self.items
        if kind == "plain":
            return k.to(self.compute_device), v.to(self.compute_device)
        return tuple((q.to(self.compute_device).float() * s.to(self.compute_device)).to(dtype) for q, s in (k, v))


@dataclass
class PoseKV:
    """The pose branch of one window: per block stores, the pose grid (frames, h, w after patching)."""

    layers: list
    grid: torch.Tensor


# -- attention --------------------------------------------------------------------------------------------

@dataclass
class _GenerationAttention:
    """The generation pass's self-attention (diffusers' ``WanAnimate2AttnProcessor`` "cached" mode without
    flex attention): ``pose_frame[f]``: the local pose frame generated frame ``f`` attends to (-1: none);
    ``reference_frame``: the local index of the reference image's latent frame (-1: not in this window)."""

    pose_frame: list[int]
    reference_frame: int = -1
    pose_strength: float = 1.0
    reference_strength: float = 1.0
    extract: Any = None  # diffusers' processor, for the extract pass

    def __call__(self, attn, hidden_states, rotary_emb, grid_sizes, kv_cache, kv_cache_mode, rope_stride=1,
                 reference_rotary_emb=None, reference_grid_sizes=None, reference_rope_stride=1, **_unused):
        from diffusers.models.transformers.transformer_wan_animate_2 import _get_qkv_projections, rope_apply

        if kv_cache_mode == "extract":
            return self.extract(attn, hidden_states, rotary_emb, grid_sizes, kv_cache, kv_cache_mode, rope_stride)
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (u.unflatten(2, (attn.heads, -1)) for u in (query, key, value))
        query = rope_apply(query, grid_sizes, rotary_emb, rope_stride).type_as(value)
        key = rope_apply(key, grid_sizes, rotary_emb, rope_stride).type_as(value)
        frames, h, w = (int(v) for v in grid_sizes[0].tolist())
        hw = h * w
        b, _, heads, dim = query.shape
        q = query.transpose(1, 2)  # [b, heads, tokens, dim]
        k, v = key.transpose(1, 2), value.transpose(1, 2)
        ref_k = ref_v = None
        if kv_cache is not None:
            key_ref, value_ref = kv_cache.get()
            key_ref = rope_apply(key_ref, reference_grid_sizes, reference_rotary_emb,
                                 reference_rope_stride).type_as(value)
            ref_hw = int(reference_grid_sizes[0][1]) * int(reference_grid_sizes[0][2])
            ref_k, ref_v = key_ref.transpose(1, 2), value_ref.to(value.dtype).transpose(1, 2)
            if ref_k.shape[0] != b:  # one pose branch for every row of the batch
                ref_k, ref_v = ref_k.expand(b, -1, -1, -1), ref_v.expand(b, -1, -1, -1)
            if self.pose_strength != 1.0:
                ref_v = ref_v * self.pose_strength
        out = torch.empty_like(q)
        for f in range(frames):
            qf = q[:, :, f * hw:(f + 1) * hw]
            keys, values = k, v
            bias = None
            if self.reference_frame >= 0 and f != self.reference_frame and self.reference_strength != 1.0:
                bias = torch.zeros(keys.shape[2], device=q.device, dtype=q.dtype)
                r = self.reference_frame
                bias[r * hw:(r + 1) * hw] = (math.log(self.reference_strength) if self.reference_strength > 0
                                             else float("-inf"))
            j = self.pose_frame[f] if f < len(self.pose_frame) else -1
            if ref_k is not None and j >= 0:
                keys = torch.cat([keys, ref_k[:, :, j * ref_hw:(j + 1) * ref_hw]], dim=2)
                values = torch.cat([values, ref_v[:, :, j * ref_hw:(j + 1) * ref_hw]], dim=2)
                if bias is not None:
                    bias = torch.cat([bias, bias.new_zeros(ref_hw)])
            out[:, :, f * hw:(f + 1) * hw] = torch.nn.functional.scaled_dot_product_attention(
                qf, keys, values, attn_mask=bias.view(1, 1, 1, -1) if bias is not None else None)
        tail = q.shape[2] - frames * hw
        if tail:  # padded positions (none in practice) pass through, as diffusers'
            out[:, :, frames * hw:] = q[:, :, frames * hw:]
        hidden = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden))


@contextmanager
def _processors(net, processor) -> Iterator[None]:
    saved = [block.self_attn.processor for block in net.blocks]
    try:
        for block in net.blocks:
            block.self_attn.processor = processor
        yield
    finally:
        for block, old in zip(net.blocks, saved):
            block.self_attn.processor = old


def _embeddings(net, t: torch.Tensor, text: torch.Tensor, clip: torch.Tensor | None):
    cfg = net.config
    temb = net.time_embedding(net.timesteps_proj(t).to(dtype=next(net.time_embedding.parameters()).dtype))
    proj = net.time_projection(temb).unflatten(1, (6, cfg.dim))
    if text.shape[1] < cfg.text_len:
        text = torch.cat([text, text.new_zeros(text.shape[0], cfg.text_len - text.shape[1], text.shape[2])], 1)
    states = net.text_embedding(text)
    image = net.img_emb(clip) if cfg.use_img_emb else None
    return temb, proj, states, image


def _patchify(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = net.patch_embedding(x)
    grid = torch.tensor([list(x.shape[2:])] * x.shape[0], dtype=torch.long)
    return x.flatten(2).transpose(1, 2), grid


def _reference_offsets(net, grid: torch.Tensor) -> tuple[int, int, int]:
    cfg = net.config
    return tuple(o if o >= 0 else int(grid[0][axis])
                 for axis, o in enumerate((cfg.refer_offset_t, cfg.refer_offset_h, cfg.refer_offset_w)))


def extract_pose(net, pose_latent: torch.Tensor, text: torch.Tensor, clip: torch.Tensor | None,
                 settings: CacheSettings | None, device) -> PoseKV:
    """The extract pass over ``pose_latent`` ``[n, 16, frames, h, w]`` (model space): every block's pose
    keys / values."""
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2AttnProcessor

    n = pose_latent.shape[0]
    mask = torch.ones(n, 4, *pose_latent.shape[2:], device=pose_latent.device, dtype=pose_latent.dtype)
    hidden, grid = _patchify(net, torch.cat([pose_latent, mask, pose_latent], dim=1))
    t = torch.ones(n, device=hidden.device, dtype=hidden.dtype)
    _, proj, states, image = _embeddings(net, t, text, clip)
    freqs = net._rope_freqs(_reference_offsets(net, grid), hidden.device)
    layers = [_LayerStore(settings, device) for _ in net.blocks]
    processor = _GenerationAttention([], extract=WanAnimate2AttnProcessor())
    with _processors(net, processor):
        for block, store in zip(net.blocks, layers):
            hidden = block(hidden, temb=proj, encoder_hidden_states=states, encoder_hidden_states_image=image,
                           kv_cache=store, kv_cache_mode="extract", rotary_emb=freqs, grid_sizes=grid)
    return PoseKV(layers, grid)


def generate(net, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, clip: torch.Tensor | None,
             pose: PoseKV | None, attention: _GenerationAttention, negative: bool) -> torch.Tensor:
    """One generation-pass call: ``x`` ``[n, 36, frames, h, w]`` (noisy latent and condition channels)."""
    hidden, grid = _patchify(net, x)
    temb, proj, states, image = _embeddings(net, t, text, clip)
    kwargs = {"rotary_emb": net._rope_freqs((0, 0, 0), hidden.device), "grid_sizes": grid}
    if pose is not None:
        kwargs.update(reference_rotary_emb=net._rope_freqs(_reference_offsets(net, pose.grid), hidden.device),
                      reference_grid_sizes=pose.grid)
    with _processors(net, attention):
        for idx, block in enumerate(net.blocks):
            if negative and idx == UNCOND_SKIP_BLOCK:
                continue
            hidden = block(hidden, temb=proj, encoder_hidden_states=states, encoder_hidden_states_image=image,
                           kv_cache=pose.layers[idx] if pose is not None else None, kv_cache_mode="cached", **kwargs)
    hidden = net.head(hidden, temb)
    return torch.stack(net.unpatchify(hidden, grid))


# -- MODEL and runner -------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class WanAnimate2Model(WanModel):
    """MODEL: a Wan Animate 2 transformer (Wan 2.1 latents; WanAnimate2ToVideo's conditioning);
    ``pose_cache``: WanAnimate2Cache's settings (the pose branch runs once per run and window, else every step)."""

    pose_cache: CacheSettings | None = field(default=None)

    @property
    def model_sampling(self):
        """ComfyUI's WAN_Animate2 default: SD3 flow with shift 5 (Wan's is 8)."""
        from nodegraph_nodes.sampling import model_sampling as msl

        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, WanAnimate2Runner, self.pose_cache)

    def lora_patch(self, sd: dict, strength: float, name: str):
        """LoraLoader: Wan LoRAs in original or diffusers names (:mod:`.wan_animate2_lora`)."""
        from nodegraph_nodes.dit.wan_animate2_lora import animate2_lora_patch

        return animate2_lora_patch(self.handle.get(), sd, strength, name)


class WanAnimate2Runner(NetRunner):
    """One run's calls of a Wan Animate 2 transformer: one generation call per conditioning part, the pose
    branch's extract pass before it (once per step and window, or once per run and window with
    WanAnimate2Cache)."""

    def __init__(self, net, device: str, cache: CacheSettings | None = None):
        super().__init__(net, device)
        self.cache = cache
        self.kept: dict = {}
        self.in_range = None

    def begin_step(self, sigma, in_range) -> None:
        self.in_range = in_range
        if self.cache is None:
            self.kept.clear()

    def _pose(self, stream: PoseStream, frames: list[int]) -> tuple[PoseKV, list[int]]:
        """The pose branch for generated global ``frames``: its keys and each local frame's pose frame."""
        pose_frames = [g - 1 for g in frames if 1 <= g <= stream.latent.shape[2]]
        local = {g: i for i, g in enumerate(pose_frames)}
        mapping = [local.get(g - 1, -1) for g in frames]
        key = (id(stream), tuple(pose_frames))
        if key not in self.kept:
            latent = latent_in(stream.latent[:, :, pose_frames], 1, self.device, self.dtype)
            text = stream.text.to(self.device, self.dtype)[:1]
            clip = self._clip(stream.clip_vision, 1)
            self.kept[key] = extract_pose(self.net, latent, text, clip, self.cache, self.device)
        return self.kept[key], mapping

    def _clip(self, output, rows: int) -> torch.Tensor | None:
        if not self.net.config.use_img_emb:
            return None
        if output is None:
            raise ValueError("this Wan Animate 2 model needs CLIP vision outputs: connect CLIPVisionEncode to "
                             "WanAnimate2ToVideo.clip_vision_output")
        return _rows(output.penultimate_hidden_states.to(self.device, self.dtype), rows)

    def _condition(self, part: CondPart, xs: torch.Tensor) -> torch.Tensor:
        image = part.extras.get("concat_latent_image")
        mask = part.extras.get("concat_mask")
        if image is None or mask is None or tuple(image.shape[2:]) != tuple(xs.shape[2:]):
            raise ValueError(f"Wan Animate 2 samples the latent WanAnimate2ToVideo gives, with its conditioning; "
                             f"this latent is {list(xs.shape)}")
        cond = latent_in(image, xs.shape[0], self.device, self.dtype)
        known = _rows(1.0 - mask.float(), xs.shape[0]).to(self.device, self.dtype)
        return torch.cat([known, cond], dim=1)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 5:
            raise ValueError(f"Wan Animate 2 samples video latents [B, 16, frames, h, w]; this latent is "
                             f"{list(x_in.shape)} (make it with WanAnimate2ToVideo)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part in parts:
            n = part.rows
            xs = x[row:row + n]
            window = part.extras.get("context_window")
            frames = list(window.frames) if window is not None else list(range(xs.shape[2]))
            stream: PoseStream | None = part.extras.get("wan_animate2_pose")
            strength = float(part.extras.get("wan_animate2_reference_strength", 1.0))
            pose = None
            mapping: list[int] = []
            if stream is not None and (self.in_range is None
                                       or self.in_range(stream.start_percent, stream.end_percent)):
                pose, mapping = self._pose(stream, frames)
            attention = _GenerationAttention(mapping, frames.index(0) if 0 in frames else -1,
                                             stream.strength if stream is not None else 1.0, strength)
            inputs = torch.cat([xs, self._condition(part, xs)], dim=1)
            states = _rows(part.cond.to(self.device, self.dtype), n)
            outs.append(generate(self.net, inputs, t[row:row + n], states,
                                 self._clip(part.extras.get("clip_vision_output"), n), pose, attention,
                                 bool(part.negative)))
            row += n
        return torch.cat(outs)
