"""FLUX.3 Image (Klein base and its step-distilled model): the transformer (diffusers ``Flux3Transformer2DModel``),
the Qwen3-VL text encoder's CLIP value, the MODEL value and its runner. The VAE is Flux.2's
(``flux2-vae.safetensors``, :mod:`.flux2`), its LATENTs too (``[B, 128, H/16, W/16]``, EmptyFlux2LatentImage).

Facts used (diffusers' FLUX.3 modular pipeline, ``modular_pipelines/flux3``; ComfyUI's FLUX.3 code is not at
hand, so where it may differ it is said):

* **Tokens**: one per latent pixel in raster order; position ids ``(t, h, w, l)`` — the image ``(0, 0.5·row,
  0.5·col, 0)``, reference ``i`` ``(0, 0.5·row, 0.5·col, -(1+i))``, the text ``(0, 0, 0, n)``. Reference
  latents (ReferenceLatent / ReferenceMultiLatent) go in as ``image_cond_hidden_states``, clean, at time 0.
* **Time**: network time = sigma (``timestep`` in [0, 1]); output = velocity (flow, ``x0 = x - sigma·v``).
  Default sampling: the pipeline's constant shift 6.93 on SD3's shift ``a·t / (1 + (a-1)·t)`` (``sd3_flow``
  with multiplier 1; ModelSamplingAuraFlow sets another). ComfyUI's own default for FLUX.3 is not established
  here; the templates sample KSampler euler/simple (base, cfg 3.5) and er_sde/simple (distilled, cfg 1).
* **Distilled (flow map)**: the transformer has ``target_timestep_embedder`` (BFL's ``ref_time_in``) and takes
  the time each step jumps to: the next sigma of the run's schedule below the current one (0 after the last),
  as the pipeline's loop does. The runner gets the schedule from the sampling core (``set_schedule``).
* **Text** (CLIPLoader type ``flux3``, ``qwen3vl_4b*.safetensors``): the prompt as Qwen3-VL's user turn
  ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``, right-padded with the pad token to a
  multiple of 80 tokens (at most 8192; masked in the encoder, its position ids 1 as in transformers 4.57, not in
  the transformer, which attends to the padding), the hidden states ``hidden_states[4, 8, …, 32]`` stacked per
  token (``[1, L, 8·D]``, 20480 wide for the 4B).

LoRAs: :mod:`.flux3_lora`. Key layouts: BFL's / ComfyUI's single file (``emb_in.image``, ``early_stream_modulations.image.lin``,
``content_mode_blocks.image.N.q_proj``, ``time_in``, ``ref_time_in`` …, bare or under ``model.diffusion_model.``)
converted with diffusers' FLUX.3 converter; diffusers' names load as they are. Config from the shapes; RoPE axes
head width / 4 each (released: 32 ×4), theta 10000 (diffusers' default; not in the weights). The templates'
ConvRot INT8 files (``*_int8_convrot``) are dequantised as they are read (:mod:`nodegraph_nodes.diffusion.quantized`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from nodegraph.models import ManagerOwned

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices, marker_prefix
from nodegraph_nodes.dit.flux2 import FLUX2
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.qwen_image import refuse_integer_weights
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 6.93
IMAGE_ROPE_SCALE = 0.5
TEXT_LAYERS = (4, 8, 12, 16, 20, 24, 28, 32)
PAD_MULTIPLE, MAX_TOKENS = 80, 8192
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"

# -- transformer ------------------------------------------------------------------------------------

PREFIXES = ("model.diffusion_model.", "")
BFL_MARKERS = ("early_stream_modulations.image.lin.weight", "emb_in.image.weight")
DIFFUSERS_MARKERS = ("early_stream_modulations.image.linear.weight", "x_embedders.image.weight")


def detect_prefix(keys) -> str | None:
    """The key prefix of a FLUX.3 transformer's weights (either layout), or ``None``."""
    return marker_prefix(keys, PREFIXES, BFL_MARKERS) if marker_prefix(keys, PREFIXES, BFL_MARKERS) is not None \
        else marker_prefix(keys, PREFIXES, DIFFUSERS_MARKERS)


def to_diffusers(sd: dict) -> dict:
    if "x_embedders.image.weight" in sd:
        return sd
    from diffusers.loaders.single_file_utils import convert_flux3_transformer_checkpoint_to_diffusers

    return convert_flux3_transformer_checkpoint_to_diffusers(dict(sd))


def transformer_config(sd: dict) -> dict:
    """``Flux3Transformer2DModel`` config from diffusers-layout weights."""
    try:
        x_emb = sd["x_embedders.image.weight"]
        cond = sd["x_embedders.image_cond.weight"]
        head = int(sd["single_transformer_blocks.0.attn.norm_q.weight"].shape[0])
        ctx = sd["context_embedder.weight"]
        ff_in = sd["single_transformer_blocks.0.ff.linear_in.weight"]
        t_in = sd["timestep_embedder.linear_1.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the FLUX.3 transformer weights lack {exc.args[0]}") from None
    inner = int(x_emb.shape[0])
    return {"in_channels": int(x_emb.shape[1]), "cond_in_channels": int(cond.shape[1]),
            "num_layers": count_indices(sd, r"mode_blocks\.image\.(\d+)\."),
            "num_single_layers": count_indices(sd, r"single_transformer_blocks\.(\d+)\."),
            "attention_head_dim": head, "num_attention_heads": inner // head, "joint_attention_dim": int(ctx.shape[1]),
            "timestep_channels": int(t_in.shape[1]), "mlp_ratio": int(ff_in.shape[0]) / 2 / inner,
            "axes_dims_rope": (head // 4,) * 4, "rope_theta": 10000,
            "flow_map": "target_timestep_embedder.linear_1.weight" in sd}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import Flux3Transformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "FLUX.3 transformer")
    sd = to_diffusers(sd)
    return _instantiate(Flux3Transformer2DModel, transformer_config(sd), sd, dtype, "FLUX.3 transformer")


# -- text encoder (Qwen3-VL) ------------------------------------------------------------------------

def text_tokens(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """The chat-formatted prompt's token ids right-padded to a multiple of 80 (at most 8192), and its mask."""
    ids = tokenizer(TEMPLATE.format(prompt))["input_ids"][:MAX_TOKENS]
    length = min(math.ceil(len(ids) / PAD_MULTIPLE) * PAD_MULTIPLE, MAX_TOKENS)
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ModelFileError("the FLUX.3 text encoder's tokenizer has no pad token (Qwen3-VL's is <|endoftext|>)")
    return ids + [pad] * (length - len(ids)), [1] * len(ids) + [0] * (length - len(ids))


@dataclass(frozen=True, eq=False)
class Flux3Clip(ManagerOwned):
    """CLIP for FLUX.3: a Qwen3-VL model (``handle``) and its tokenizer (the recipe in the module docstring)."""

    handle: Any
    tokenizer: Any
    source: str = ""
    family: str = "flux3"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def describe(self) -> str:
        return "flux3 text encoder (Qwen3-VL)"

    def encode_text(self, ctx, text: str) -> list:
        ids, mask = text_tokens(self.tokenizer, text)
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            input_ids = torch.tensor([ids], device=ctx.device)
            attention = torch.tensor([mask], device=ctx.device)
            positions = torch.arange(len(ids), device=ctx.device)[None].masked_fill(attention == 0, 1)
            out = module(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         output_hidden_states=True, use_cache=False)
            if len(out.hidden_states) <= max(TEXT_LAYERS):
                raise ValueError(f"{self.describe()} has {len(out.hidden_states) - 1} layers; FLUX.3 reads the "
                                 f"hidden states {TEXT_LAYERS}")
            states = torch.stack([out.hidden_states[k] for k in TEXT_LAYERS], dim=2).float().cpu()
        return [[states.reshape(1, states.shape[1], -1), {}]]


def load_text_encoder(path, manager, device: str, models_dir):
    """CLIPLoader type ``flux3``: a Qwen3-VL file (tokenizer as for Qwen-Image 2.1: ``qwen3vl_tokenizer/``)."""
    from pathlib import Path

    from nodegraph_nodes.dit import qwen_image21_text
    from nodegraph_nodes.dit.file_loading import load_encoder_handle
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import file_keys, flow_dtype

    path = Path(path)
    if not qwen_image21_text.is_qwen3vl(file_keys(path, manager.allow_pickle)):
        raise ModelFileError(f"CLIPLoader.type flux3 takes FLUX.3's Qwen3-VL text encoder (qwen3vl_4b*.safetensors); "
                             f"{path.name} is not a Qwen3-VL model (FLUX.3's Qwen 3.5 prompt upsampler is not "
                             f"supported yet)")
    tokenizer = load_llm_tokenizer(qwen_image21_text.find_tokenizer(Path(models_dir), path))
    dtype = flow_dtype(device)
    handle = load_encoder_handle(path, "qwen3vl", manager, dtype,
                                 lambda sd, store: qwen_image21_text.build_encoder(sd, tokenizer, store))
    return Flux3Clip(handle, tokenizer, source=str(path))


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Flux3Model(FlowModel):
    """MODEL: a FLUX.3 transformer (base or step-distilled)."""

    family: str = "flux3"

    @property
    def format(self):
        return FLUX2

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT, 1.0)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, Flux3Runner)

    def lora_patch(self, sd: dict, strength: float, name: str):
        from nodegraph_nodes.dit.flux3_lora import flux3_lora_patch

        return flux3_lora_patch(self.handle.get(), sd, strength, name)


def load_transformer(path, prefix: str, manager, device: str, weight_dtype: str = "default") -> Flux3Model:
    """UNETLoader for a FLUX.3 transformer file."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.loading import flow_dtype

    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device), build_transformer)
    return Flux3Model(handle, "flux3", source=str(path))


def image_ids(h: int, w: int, layer: int = 0) -> torch.Tensor:
    """Position ids ``(0, 0.5·row, 0.5·col, layer)`` of an ``h × w`` latent's tokens (float)."""
    rows = torch.arange(h).repeat_interleave(w).float()
    cols = torch.arange(w).repeat(h).float()
    return torch.stack([torch.zeros_like(rows), rows * IMAGE_ROPE_SCALE, cols * IMAGE_ROPE_SCALE,
                        torch.full_like(rows, float(layer))], dim=-1)


def text_ids(length: int) -> torch.Tensor:
    zeros = torch.zeros(length)
    return torch.stack([zeros, zeros, zeros, torch.arange(length).float()], dim=-1)


class Flux3Runner(NetRunner):
    """One run's calls of a ``Flux3Transformer2DModel``: one call per conditioning part."""

    def __init__(self, net, device: str):
        super().__init__(net, device)
        self.flow_map = bool(getattr(net.config, "flow_map", False))
        self.schedule: torch.Tensor | None = None

    def set_schedule(self, sigmas: torch.Tensor) -> None:
        """The run's sigmas (the sampling core calls this before the first step)."""
        self.schedule = sigmas.detach().float().cpu()

    def target_time(self, t: float) -> float:
        """The distilled model's jump target: the schedule's next sigma below ``t`` (0 after the last)."""
        if self.schedule is None:
            raise ValueError("the step-distilled FLUX.3 model needs the run's sigma schedule (sample it with "
                             "KSampler / SamplerCustom*)")
        below = self.schedule[self.schedule < t - 1e-6]
        return float(below.max()) if below.numel() else 0.0

    def _references(self, part: CondPart) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        tokens, ids = [], []
        for i, ref in enumerate(part.extras.get("reference_latents") or ()):
            r = ref.to(self.device, self.dtype)
            tokens.append(_rows(r[:1].flatten(2).transpose(1, 2), part.rows))
            ids.append(image_ids(r.shape[-2], r.shape[-1], -(1 + i)))
        if not tokens:
            return None, None
        return torch.cat(tokens, dim=1), torch.cat(ids).to(self.device)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        b, c, h, w = x_in.shape
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(b)
        img = image_ids(h, w).to(self.device)
        outs, row = [], 0
        for p in parts:
            states = _rows(p.cond.to(self.device, self.dtype), p.rows)
            refs, ref_ids = self._references(p)
            kwargs = {}
            if self.flow_map:
                target = self.target_time(float(t[row]))
                kwargs["target_timestep"] = torch.full((p.rows,), target, device=self.device, dtype=self.dtype)
            out = self.net(hidden_states=x[row:row + p.rows].flatten(2).transpose(1, 2), encoder_hidden_states=states,
                           timestep=t[row:row + p.rows], img_ids=img, txt_ids=text_ids(states.shape[1]).to(self.device),
                           image_cond_hidden_states=refs, image_cond_ids=ref_ids, return_dict=False, **kwargs)[0]
            outs.append(out.transpose(1, 2).reshape(p.rows, c, h, w))
            row += p.rows
        return torch.cat(outs)
