"""Flux.2: the transformer (diffusers ``Flux2Transformer2DModel``), its VAE (``AutoencoderKLFlux2``), the
Mistral text encoder's CLIP value and the MODEL value's runner.

Facts (ComfyUI's):

* **Latents**: a LATENT is ``[B, 128, H/16, W/16]`` — the VAE's 32-channel latents folded into 2×2
  patches and normalised with the VAE's batch-norm statistics (``bn.running_mean`` / ``running_var``,
  eps from the config); the model works on them as they are (no scale or shift). The VAE wrapper does the
  folding and normalising (as ComfyUI's Flux.2 VAE and diffusers' ``Flux2Pipeline`` do).
* **Sampling**: Flux-type flow, default shift 2.02, network time = sigma; ``Flux2Scheduler`` gives the
  empirical resolution/steps schedule of BFL's reference code (the one ``Flux2Pipeline`` uses).
* **Text** (CLIPLoader type ``flux2``): the prompt in ``[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]{}[/INST]``
  after the BOS token, no padding; the hidden states entering layers 10, 20 and 30 (transformers'
  ``hidden_states[10/20/30]``) concatenated per token (``[1, L, 3·D]``). The model is given them
  left-padded with zeros to 512 tokens (ComfyUI's Flux.2 model does this; diffusers' pipeline instead pads
  the tokens, so its text states differ from ComfyUI's — parity tests give the pipeline ComfyUI's states).
* **Klein** (Qwen3 4B / 8B files under CLIPLoader type ``flux2``): ComfyUI's Klein recipe — Qwen3's chat
  template without thinking, padded on the right to 512 tokens with ``<|endoftext|>`` (masked), the
  states entering layers 9, 18, 27; Klein transformers have no guidance embedding (CFGGuider).
* **Guidance**: the conditioning's ``guidance`` (FluxGuidance; ComfyUI's default 3.5) for models with a
  guidance embedding (dev); Klein models have none.

Key layouts: ComfyUI's repackaged ``flux2_dev*.safetensors`` / the official ``flux2-dev.safetensors``
(BFL names: ``img_in``, ``double_blocks.N.img_attn.qkv``, ``single_stream_modulation.lin`` …, bare or
under ``model.diffusion_model.``) are converted with diffusers' Flux.2 converter; the diffusers layout
loads as is. Config from the shapes; RoPE axes: head width / 4 each (released: 32 ×4), theta 2000.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.formats import FLUX_DEFAULT_GUIDANCE
from nodegraph_nodes.dit.llm_text import LlmClip
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.qwen_image import open_runner, refuse_integer_weights
from nodegraph_nodes.dit.runner_common import NetRunner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 2.02
TEXT_LENGTH = 512
TEXT_LAYERS = (10, 20, 30)
SYSTEM_PROMPT = ("You are an AI that reasons about image descriptions. You give structured responses focusing on "
                 "object relationships, object\nattribution and actions without speculation.")
TEMPLATE = "[SYSTEM_PROMPT]" + SYSTEM_PROMPT + "[/SYSTEM_PROMPT][INST]{}[/INST]"
#: Flux.2 Klein (Qwen3 4B / 8B encoders): Qwen3's chat template without thinking, states entering layers
#: 9, 18, 27, the tokens padded on the right to 512 with ``<|endoftext|>`` (masked)
KLEIN_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
KLEIN_LAYERS = (9, 18, 27)

# -- latent format ----------------------------------------------------------------------------------

RGB_FACTORS = (
    (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
    (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
    (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
    (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
    (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
    (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
)
RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, 4C, H/2, W/2]`` (each channel's 2×2 patch in row order)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)


@dataclass(frozen=True)
class Flux2LatentFormat:
    """128 channels at 1/16 of the image; the model space is the LATENT itself."""

    channels: int = 128

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def preview(self, latent: torch.Tensor) -> torch.Tensor:
        x = unpatchify(latent[:1].float())[0]
        factors = torch.tensor(RGB_FACTORS, dtype=torch.float32, device=x.device)
        rgb = torch.einsum("chw,cr->hwr", x, factors) + torch.tensor(RGB_BIAS, device=x.device)
        return ((rgb + 1) / 2).clamp(0, 1).cpu()


FLUX2 = Flux2LatentFormat()

# -- transformer ------------------------------------------------------------------------------------

PREFIXES = ("model.diffusion_model.", "")
BFL_MARKERS = ("img_in.weight", "single_stream_modulation.lin.weight", "double_stream_modulation_img.lin.weight")
DIFFUSERS_MARKERS = ("x_embedder.weight", "single_stream_modulation.linear.weight",
                     "double_stream_modulation_img.linear.weight")


def detect_prefix(keys) -> str | None:
    """The key prefix of a Flux.2 transformer's weights (either layout), or ``None``."""
    keyset = set(keys)
    for prefix in PREFIXES:
        for markers in (BFL_MARKERS, DIFFUSERS_MARKERS):
            if all(prefix + m in keyset for m in markers):
                return prefix
    return None


def to_diffusers(sd: dict) -> dict:
    if "x_embedder.weight" in sd:
        return sd
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    return convert_flux2_transformer_checkpoint_to_diffusers(dict(sd))


def _count(sd: dict, prefix: str) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))})


def transformer_config(sd: dict) -> dict:
    """``Flux2Transformer2DModel`` config from diffusers-layout weights."""
    try:
        x_emb = sd["x_embedder.weight"]
        head = int(sd["transformer_blocks.0.attn.norm_q.weight"].shape[0])
        ctx = sd["context_embedder.weight"]
        ff_in = sd["transformer_blocks.0.ff.linear_in.weight"]
        t_in = sd["time_guidance_embed.timestep_embedder.linear_1.weight"]
        proj = sd["proj_out.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Flux.2 transformer weights lack {exc.args[0]}") from None
    inner = int(x_emb.shape[0])
    return {"patch_size": 1, "in_channels": int(x_emb.shape[1]), "out_channels": int(proj.shape[0]),
            "num_layers": _count(sd, "transformer_blocks"), "num_single_layers": _count(sd, "single_transformer_blocks"),
            "attention_head_dim": head, "num_attention_heads": inner // head, "joint_attention_dim": int(ctx.shape[1]),
            "timestep_guidance_channels": int(t_in.shape[1]), "mlp_ratio": int(ff_in.shape[0]) / 2 / inner,
            "axes_dims_rope": (head // 4,) * 4, "rope_theta": 2000,
            "guidance_embeds": "time_guidance_embed.guidance_embedder.linear_1.weight" in sd}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import Flux2Transformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "Flux.2 transformer")
    sd = to_diffusers(sd)
    return _instantiate(Flux2Transformer2DModel, transformer_config(sd), sd, dtype, "Flux.2 transformer")


# -- VAE --------------------------------------------------------------------------------------------

BN_KEYS = ("bn.running_mean", "bn.running_var")


def is_flux2_vae(keys) -> bool:
    keyset = set(keys)
    return all(k in keyset for k in BN_KEYS) and ("encoder.conv_in.weight" in keyset)


def vae_config(sd: dict) -> dict:
    """``AutoencoderKLFlux2`` config from diffusers-layout weights."""
    levels = _count(sd, "encoder.down_blocks")
    widths = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in range(levels)]
    per_block = _count(sd, "encoder.down_blocks.0.resnets")
    # BFL's full_encoder_small_decoder VAE has a narrower decoder: up_blocks run from the widest level
    decoder = [int(sd[f"decoder.up_blocks.{i}.resnets.0.conv2.weight"].shape[0]) for i in range(levels)][::-1]
    return {"block_out_channels": widths, "layers_per_block": per_block,
            "decoder_block_out_channels": decoder if decoder != widths else None,
            "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "latent_channels": int(sd["encoder.conv_out.weight"].shape[0]) // 2,
            "norm_num_groups": 32,  # not in the weights; every released Flux VAE
            "use_quant_conv": "quant_conv.weight" in sd, "use_post_quant_conv": "post_quant_conv.weight" in sd}


class Flux2Vae(torch.nn.Module):
    """``AutoencoderKLFlux2`` seen with ComfyUI's Flux.2 LATENTs: 2×2 folding and batch-norm statistics."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def config(self):
        return self.vae.config

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        mean, std = self._stats(z)
        return (self.vae.decode(unpatchify(z * std + mean), return_dict=False)[0],)

    def encode(self, x: torch.Tensor):
        from nodegraph_nodes.dit.qwen_image import _Encoded, _Mode

        z = patchify(self.vae.encode(x).latent_dist.mode())
        mean, std = self._stats(z)
        return _Encoded(_Mode((z - mean) / std))


def build_vae(sd: dict, dtype: torch.dtype) -> Flux2Vae:
    from diffusers import AutoencoderKLFlux2

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    if "encoder.down.0.block.0.conv1.weight" in sd:  # BFL / ComfyUI (LDM) layout
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        levels = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        bn = {k: sd[k] for k in sd if k.startswith("bn.")}
        per_block = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
        sd = convert_ldm_vae_checkpoint(dict(sd), {"down_block_types": [None] * levels,
                                                   "up_block_types": [None] * levels, "layers_per_block": per_block})
        sd.update(bn)
    cfg = vae_config(sd)
    return Flux2Vae(_instantiate(AutoencoderKLFlux2, cfg, sd, dtype, "Flux.2 VAE"))


# -- text encoder (Mistral) -------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Flux2Clip(LlmClip):
    """CLIP for Flux.2 (``family`` ``flux2``): a Mistral language model and its tokenizer (ComfyUI's
    recipe, module docstring)."""

    def describe(self) -> str:
        return "flux2 Klein text encoder (Qwen3)" if self.family == "flux2_klein" else "flux2 text encoder (Mistral)"

    def _tokens(self, text: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        if self.family == "flux2_klein":
            ids = tok(KLEIN_TEMPLATE.format(text), add_special_tokens=False)["input_ids"]
            pad = tok.convert_tokens_to_ids("<|endoftext|>")
            if not isinstance(pad, int) or pad == tok.unk_token_id:
                pad = tok.pad_token_id
            missing = max(0, TEXT_LENGTH - len(ids))
            return ids + [pad] * missing, [1] * len(ids) + [0] * missing
        bos = tok.bos_token_id if tok.bos_token_id is not None else 1
        ids = [bos] + tok(TEMPLATE.format(text), add_special_tokens=False)["input_ids"]
        return ids, [1] * len(ids)

    def encode_text(self, ctx, text: str) -> list:
        ids, mask = self._tokens(text)
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            input_ids = torch.tensor([ids], device=ctx.device)
            out = module(input_ids=input_ids, attention_mask=torch.tensor([mask], device=ctx.device),
                         output_hidden_states=True, use_cache=False)
            layers = KLEIN_LAYERS if self.family == "flux2_klein" else TEXT_LAYERS
            if len(out.hidden_states) <= max(layers) + 1:  # the last entry is after the final norm
                raise ValueError(f"{self.describe()} has {len(out.hidden_states) - 1} layers; Flux.2 takes the "
                                 f"states entering layers {layers}")
            states = torch.stack([out.hidden_states[k] for k in layers], dim=2).float().cpu()
        return [[states.reshape(1, states.shape[1], -1), {}]]


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Flux2Model(FlowModel):
    """MODEL: a Flux.2 transformer."""

    family: str = "flux2"

    @property
    def format(self):
        return FLUX2

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.flux_flow, DEFAULT_SHIFT)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, Flux2Runner)

    def lora_patch(self, sd: dict, strength: float, name: str):
        from nodegraph_nodes.dit.flux2_lora import flux2_lora_patch

        return flux2_lora_patch(self.handle.get(), sd, strength, name)


def pad_text(states: torch.Tensor, length: int = TEXT_LENGTH) -> torch.Tensor:
    """ComfyUI's Flux.2 text input: left-padded with zeros to ``length`` tokens (longer stays as is)."""
    if states.shape[1] >= length:
        return states
    return torch.nn.functional.pad(states, (0, 0, length - states.shape[1], 0))


def image_ids(h: int, w: int, t: int = 0) -> torch.Tensor:
    """Position ids ``(t, row, column, 0)`` of an ``h × w`` latent's tokens."""
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    return torch.stack([torch.full_like(rows, t), rows, cols, torch.zeros_like(rows)], dim=-1)


class Flux2Runner(NetRunner):
    """One run's calls of a ``Flux2Transformer2DModel``: one call per conditioning part."""

    def __init__(self, net, device: str):
        super().__init__(net, device)
        self.guidance_embeds = bool(getattr(net.config, "guidance_embeds", False))

    def _references(self, part: CondPart) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """ReferenceLatent's latents (Flux.2 edit): their tokens and ids, time 10, 20, … (ComfyUI's ``index``
        placement with Flux.2's scale 10, as BFL's and diffusers' code). The other placements of
        FluxKontextMultiReferenceLatentMethod are refused (not checked against a reference yet)."""
        tokens, ids = [], []
        method = part.extras.get("reference_latents_method", "index")
        if part.extras.get("reference_latents") and method != "index":
            raise ValueError(f"Flux.2: reference_latents_method {method!r} is not supported yet (index is, the "
                             "Flux.2 default)")
        for i, ref in enumerate(part.extras.get("reference_latents") or ()):
            r = ref.to(self.device, self.dtype)
            tokens.append(_rows(r[:1].flatten(2).transpose(1, 2), part.rows))
            ids.append(image_ids(r.shape[-2], r.shape[-1], 10 + 10 * i))
        return tokens, ids

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        b, c, h, w = x_in.shape
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(b)
        img_ids = image_ids(h, w).to(self.device)
        outs, row = [], 0
        for p in parts:
            states = pad_text(_rows(p.cond.to(self.device, self.dtype), p.rows))
            length = states.shape[1]
            txt_ids = torch.stack([torch.zeros(length, dtype=torch.long)] * 3 + [torch.arange(length)], -1)
            tokens = x[row:row + p.rows].flatten(2).transpose(1, 2)
            refs, ref_ids = self._references(p)
            ids = torch.cat([img_ids, *[r.to(self.device) for r in ref_ids]])
            guidance = None
            if self.guidance_embeds:
                guidance = torch.full((p.rows,), float(p.extras.get("guidance", FLUX_DEFAULT_GUIDANCE)),
                                      device=self.device, dtype=torch.float32)
            out = self.net(hidden_states=torch.cat([tokens, *refs], dim=1), encoder_hidden_states=states,
                           timestep=t[row:row + p.rows], img_ids=ids.unsqueeze(0).expand(p.rows, -1, -1),
                           txt_ids=txt_ids.to(self.device).unsqueeze(0).expand(p.rows, -1, -1), guidance=guidance,
                           return_dict=False)[0]
            outs.append(out[:, :h * w].transpose(1, 2).reshape(p.rows, c, h, w))
            row += p.rows
        return torch.cat(outs)
