"""HiDream I1 (Full / Dev / Fast): the sparse (mixture-of-experts) DiT, diffusers
``HiDreamImageTransformer2DModel``, its MODEL and runner, and UNETLoader's file detection.

Facts (ComfyUI's): latent format Flux's (16 channels, Flux.1's VAE ``ae.safetensors``); flow sampling with
multiplier 1000 and, unless the workflow sets one, shift 1 (ComfyUI's model config sets none; the official
templates put ``ModelSamplingSD3`` shift 3.0 for Full and 6.0 for Dev / Fast before the sampler). The network
gets ``timestep`` = sigma · 1000 and predicts the negated velocity (ComfyUI and diffusers' pipeline negate it).

Conditioning (ComfyUI's HiDream recipe, :mod:`.hidream_text`): the entry's states are T5's, ``pooled_output``
is CLIP-L's ++ CLIP-G's projected pooled outputs and ``conditioning_llama3`` Llama 3.1's hidden states of
all layers, ``[rows, layers, tokens, width]``.

HiDream E1 (editing; the same network): InstructPixToPixConditioning's ``concat_latent_image`` is put to
the right of the latent (width axis) and the output cropped back, as ComfyUI does; there is no diffusers
pipeline for E1 in diffusers' core to compare with.

Key layout: ComfyUI's repackaged ``hidream_i1_{full,dev,fast}_*.safetensors`` use diffusers' names (bare or
under ``model.diffusion_model.``, diffusers' single-file converter only strips that prefix). The config
comes from the shapes, except what the weights do not hold: the head width (the released 128 when the
width is a multiple of 128 of at least 1024, else two heads: tiny test models), the activated experts (2,
as released), RoPE axes (head/2, head/4, head/4: the released 64, 32, 32) and which Llama layer feeds each
block: ComfyUI's ``[0 … 31, 31, …]`` is block *i* ← layer ``min(i, last)``; the runner picks them from the
conditioning's layers, so a Llama with another depth (tiny test models) works the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices, marker_prefix
from nodegraph_nodes.dit.formats import FLUX
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.qwen_image import open_runner, refuse_integer_weights
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 1.0
MARKERS = ("caption_projection.0.linear.weight", "double_stream_blocks.0.block.adaLN_modulation.1.bias")
PREFIXES = ("model.diffusion_model.", "")


def detect_prefix(keys) -> str | None:
    """The key prefix of a HiDream transformer's weights, or ``None``."""
    return marker_prefix(keys, PREFIXES, MARKERS)


def head_dim(inner: int) -> int:
    return 128 if inner >= 1024 and inner % 128 == 0 else inner // 2


def transformer_config(sd: dict) -> dict:
    """``HiDreamImageTransformer2DModel`` config from its weights (see the module docstring)."""
    try:
        x_emb = sd["x_embedder.proj.weight"]
        pooled = sd["p_embedder.pooled_embedder.linear_1.weight"]
        final = sd["final_layer.linear.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the HiDream transformer weights lack {exc.args[0]}") from None

    def count(pattern: str) -> int:
        return count_indices(sd, pattern)

    inner = int(x_emb.shape[0])
    hd = head_dim(inner)
    double, single = count(r"double_stream_blocks\.(\d+)\."), count(r"single_stream_blocks\.(\d+)\.")
    total = double + single
    projections = count(r"caption_projection\.(\d+)\.")
    if projections != total + 1:
        raise ModelFileError(f"the HiDream transformer has {projections} caption projections for {total} blocks "
                             f"(expected one per block and one for T5)")
    experts = count(r"double_stream_blocks\.0\.block\.ff_i\.experts\.(\d+)\.")
    patch = 2
    return {"patch_size": patch, "in_channels": int(x_emb.shape[1]) // (patch * patch),
            "out_channels": int(final.shape[0]) // (patch * patch), "num_layers": double,
            "num_single_layers": single, "attention_head_dim": hd, "num_attention_heads": inner // hd,
            "caption_channels": [int(sd[f"caption_projection.{total}.linear.weight"].shape[1]),
                                 int(sd["caption_projection.0.linear.weight"].shape[1])],
            "text_emb_dim": int(pooled.shape[1]), "num_routed_experts": experts, "num_activated_experts": 2,
            "axes_dims_rope": (hd // 2, hd // 4, hd // 4), "max_resolution": (128, 128),
            "llama_layers": list(range(total))}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import HiDreamImageTransformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "HiDream transformer")
    return _instantiate(HiDreamImageTransformer2DModel, transformer_config(sd), sd, dtype, "HiDream transformer")


def load_transformer(path: Path, prefix: str, manager, device: str, weight_dtype: str = "default") -> "HiDreamModel":
    """UNETLoader for a HiDream transformer file."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.loading import flow_dtype

    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device), build_transformer)
    return HiDreamModel(handle, "hidream", source=str(path))


@dataclass(frozen=True, eq=False)
class HiDreamModel(FlowModel):
    """MODEL: a HiDream transformer."""

    family: str = "hidream"

    @property
    def format(self):
        return FLUX

    @property
    def model_sampling(self) -> msl.ModelSampling:
        if self.sampling is not None:
            return self.sampling
        return msl.sd3_flow(DEFAULT_SHIFT if self.default_shift is None else self.default_shift, 1000.0)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, HiDreamRunner)

    def lora_patch(self, sd: dict, strength: float, name: str):
        """LoRAs in the transformer's own (diffusers') names: ComfyUI's ``diffusion_model.…``, diffusers /
        PEFT ``transformer.…``, kohya ``lora_unet_…`` (:mod:`.llm_lora`)."""
        from nodegraph_nodes.dit.llm_lora import llm_lora_patch

        return llm_lora_patch(self.family, self.handle.get(), sd, strength, name)


def llama_for_blocks(states: torch.Tensor, llama_layers: list[int]) -> torch.Tensor:
    """``[rows, layers, tokens, width]`` → what the network indexes with ``llama_layers``
    (``[max + 1, rows, tokens, width]``, entry *k* = layer ``min(k, last)``)."""
    layers = states.movedim(1, 0)
    last = layers.shape[0] - 1
    index = torch.tensor([min(k, last) for k in range(max(llama_layers) + 1)], device=layers.device)
    return layers.index_select(0, index)


class HiDreamRunner:
    """One run's calls of a ``HiDreamImageTransformer2DModel``; each conditioning part is its own call."""

    def __init__(self, net, device: str):
        self.net = net
        self.device = device
        self.dtype = next(net.parameters()).dtype
        self.llama_layers = list(net.config.llama_layers)

    def begin_step(self, sigma: torch.Tensor, in_range: Callable[[float, float], bool]) -> None:
        pass

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        h, w = x_in.shape[-2:]
        t = timestep.to(self.device, torch.float32).reshape(-1).expand(x_in.shape[0])
        outs, row = [], 0
        for p in parts:
            x = self._input(x_in[row:row + p.rows].to(self.device, self.dtype), p)
            pooled, llama = p.extras.get("pooled_output"), p.extras.get("conditioning_llama3")
            if pooled is None or llama is None:
                raise ValueError("this conditioning lacks HiDream's pooled output or Llama states; encode the "
                                 "prompt with QuadrupleCLIPLoader's CLIP (CLIP-L, CLIP-G, T5-XXL, Llama 3.1)")
            t5 = _rows(p.cond.to(self.device, self.dtype), p.rows)
            llama = llama_for_blocks(_rows(llama.to(self.device, self.dtype), p.rows), self.llama_layers)
            out = self.net(hidden_states=x, timesteps=t[row:row + p.rows],
                           encoder_hidden_states_t5=t5, encoder_hidden_states_llama3=llama,
                           pooled_embeds=_rows(pooled.to(self.device, self.dtype), p.rows), return_dict=False)[0]
            outs.append(-out.float()[..., :h, :w])
            row += p.rows
        return torch.cat(outs).to(self.dtype)

    def _input(self, x: torch.Tensor, p: CondPart) -> torch.Tensor:
        """The latent, with (HiDream E1) the entry's ``concat_latent_image`` (InstructPixToPixConditioning) in
        the model's latent space placed to its right, padded (circularly) to even sides."""
        image = p.extras.get("concat_latent_image")
        if image is not None:
            image = FLUX.process_in(_rows(image.to(self.device, torch.float32), p.rows)).to(self.dtype)
            if image.shape[-2] != x.shape[-2]:
                raise ValueError(f"HiDream E1: the image latent is {image.shape[-2]} high, the sampled latent "
                                 f"{x.shape[-2]}; encode the image at the output size")
            x = torch.cat([x, image], dim=-1)
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="circular")
        return x
