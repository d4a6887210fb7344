"""Stable Audio Open 1.0: the diffusion transformer (diffusers ``StableAudioDiTModel``) with its two seconds
conditioners (``StableAudioProjectionModel``), its T5-base text encoder (CLIPLoader type ``stable_audio``),
its Oobleck VAE (:mod:`.audio_vae`), the MODEL value's runner and the loading of the all-in-one checkpoint
ComfyUI's template names (``stable-audio-open-1.0.safetensors``). Nothing is downloaded.

Facts (ComfyUI's): latents ``[B, 64, T]`` (EmptyLatentAudio: ``T = 2 · round(seconds · 44100 / 2048 / 2)``),
no latent scaling; sampling is continuous v-prediction EDM (``sigma_data`` 1, sigmas 0.03 … 500, network
time ``atan(sigma) · 2 / pi``). Each conditioning entry carries ``seconds_start`` / ``seconds_total``
(ConditioningStableAudio; defaults 0 and ``int(T / 21.53)``): both go through the checkpoint's number
conditioners, are appended to the text states as two tokens and, side by side, form the global token.

Checkpoint layout (stable-audio-tools' names): ``model.model.`` the DiT (``transformer.layers.N.self_attn.
to_qkv``, ``cross_attn.to_kv``, ``pre_norm.gamma``, ``ff.ff.0.proj`` …, ``to_timestep_embed``,
``to_cond_embed``, ``to_global_embed``, ``timestep_features.weight``), ``conditioner.conditioners.
seconds_start|seconds_total.embedder.embedding.`` the number conditioners, ``pretransform.model.`` the VAE.
The text states are used as the T5 gives them: a checkpoint with a prompt projection is refused.

Text encoding (ComfyUI's T5-base recipe, the same as StableAudioPipeline's for prompts up to 128 tokens):
the prompt with the end token, padded to at least 128 tokens, the attention mask applied and the padded
positions zeroed. Tokenizer: T5's (``t5_tokenizer/`` as for SD3 / Flux; the files hold none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.file_loading import CheckpointWeights, load_encoder_handle
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.dit.text import masked_states
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

SAMPLE_RATE = 44100
SIGMA_MIN, SIGMA_MAX = 0.03, 500.0
TEXT_LENGTH = 128
DIT = "model.model."
VAE = "pretransform.model."
CONDITIONERS = "conditioner.conditioners."
MARKERS = (DIT + "transformer.layers.0.self_attn.to_qkv.weight",
           CONDITIONERS + "seconds_start.embedder.embedding.1.weight")


def is_checkpoint(keys) -> bool:
    keyset = set(keys)
    return all(m in keyset for m in MARKERS)


# -- conversion -------------------------------------------------------------------------------------

_BLOCK_NAMES = (("self_attn", "attn1"), ("cross_attn", "attn2"), ("pre_norm", "norm1"),
                ("cross_attend_norm", "norm2"), ("ff_norm", "norm3"), ("ff.ff.", "ff.net."), ("to_out", "to_out.0"),
                ("gamma", "weight"), ("beta", "bias"))
_TOP_NAMES = {"to_timestep_embed": "timestep_proj", "to_global_embed": "global_proj",
              "to_cond_embed": "cross_attention_proj", "transformer.project_in": "proj_in",
              "transformer.project_out": "proj_out"}


def convert_dit(sd: dict) -> dict:
    """stable-audio-tools' DiT names (without ``model.model.``) → ``StableAudioDiTModel``'s."""
    out = {}
    for key, value in sd.items():
        if key.endswith("rotary_pos_emb.inv_freq"):
            continue  # computed by diffusers
        if key == "timestep_features.weight":
            out["time_proj.weight"] = value.reshape(-1)
            continue
        new = key
        if new.startswith("transformer.layers."):
            new = "transformer_blocks." + new[len("transformer.layers."):]
            for old, repl in _BLOCK_NAMES:
                new = new.replace(old, repl)
        else:
            for old, repl in _TOP_NAMES.items():
                if new.startswith(old):
                    new = repl + new[len(old):]
        if ".to_qkv." in new:
            for name, part in zip("qkv", torch.chunk(value, 3, dim=0)):
                out[new.replace("to_qkv", "to_" + name)] = part
        elif ".to_kv." in new:
            for name, part in zip("kv", torch.chunk(value, 2, dim=0)):
                out[new.replace("to_kv", "to_" + name)] = part
        else:
            out[new] = value
    return out


def convert_conditioners(sd: dict) -> dict:
    """The number conditioners (without ``conditioner.conditioners.``) → ``StableAudioProjectionModel``'s."""
    out = {}
    for key, value in sd.items():
        for old, new in (("seconds_start.", "start_number_conditioner."),
                         ("seconds_total.", "end_number_conditioner.")):
            if key.startswith(old):
                out[new + key[len(old):].replace("embedder.embedding", "time_positional_embedding")] = value
    return out


def dit_config(sd: dict) -> dict:
    """``StableAudioDiTModel`` config from diffusers-layout weights' shapes. The head width is not in the
    weights: 64 (Stable Audio Open) when the width is a multiple of 64, else one head."""
    try:
        proj_in = sd["proj_in.weight"]
        cross = sd["cross_attention_proj.0.weight"]
        glob = sd["global_proj.0.weight"]
        time = sd["timestep_proj.0.weight"]
        k = sd["transformer_blocks.0.attn2.to_k.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Stable Audio transformer weights lack {exc.args[0]}") from None
    inner = int(proj_in.shape[0])
    head = 64 if inner % 64 == 0 else inner
    return {"in_channels": int(proj_in.shape[1]), "out_channels": int(sd["proj_out.weight"].shape[0]),
            "num_layers": len({int(m.group(1)) for key in sd if (m := re.match(r"transformer_blocks\.(\d+)\.", key))}),
            "attention_head_dim": head, "num_attention_heads": inner // head,
            "num_key_value_attention_heads": int(k.shape[0]) // head, "cross_attention_dim": int(cross.shape[0]),
            "cross_attention_input_dim": int(cross.shape[1]), "global_states_input_dim": int(glob.shape[1]),
            "time_proj_dim": int(time.shape[1])}


class StableAudioNet(torch.nn.Module):
    """The DiT and the seconds conditioners, loaded and placed together."""

    def __init__(self, transformer, projection):
        super().__init__()
        self.transformer = transformer
        self.projection = projection

    @property
    def config(self):
        return self.transformer.config


def build_net(sd: dict, dtype: torch.dtype) -> StableAudioNet:
    """``StableAudioNet`` from a checkpoint's weights (all prefixes present)."""
    from diffusers import StableAudioDiTModel, StableAudioProjectionModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.convert import strip_prefix

    dit = convert_dit(strip_prefix({k: v for k, v in sd.items() if k.startswith(DIT)}, DIT))
    transformer = _instantiate(StableAudioDiTModel, dit_config(dit), dit, dtype, "Stable Audio transformer")
    cond = convert_conditioners(strip_prefix({k: v for k, v in sd.items() if k.startswith(CONDITIONERS)}, CONDITIONERS))
    if any(k.startswith(CONDITIONERS + "prompt.") for k in sd):
        raise ModelFileError("this Stable Audio checkpoint has a prompt projection; nodegraph takes the T5 states "
                             "as they are (Stable Audio Open's layout)")
    width = int(cond["start_number_conditioner.time_positional_embedding.1.weight"].shape[0])
    projection = _instantiate(StableAudioProjectionModel, {"text_encoder_dim": width, "conditioning_dim": width,
                                                           "min_value": 0, "max_value": 512},
                              cond, dtype, "Stable Audio seconds conditioners")
    return StableAudioNet(transformer, projection).eval().requires_grad_(False)


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AudioLatentFormat:
    """Audio latents ``[B, C, T]`` kept as the VAE gives them; the preview is the latent as a grey image."""

    channels: int

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def preview(self, latent: torch.Tensor) -> torch.Tensor:
        x = latent[0].float()
        x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)
        return x[..., None].expand(-1, -1, 3).cpu()


@dataclass(frozen=True, eq=False)
class StableAudioModel(FlowModel):
    """MODEL: Stable Audio's DiT with its seconds conditioners (``[B, 64, T]`` latents)."""

    family: str = "stable_audio"

    @property
    def format(self):
        return AudioLatentFormat(64)

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling if self.sampling is not None else msl.continuous_v(SIGMA_MIN, SIGMA_MAX, 1.0)

    def lora_patch(self, sd: dict, strength: float, name: str):
        raise ModelFileError(f"LoRA {name}: LoRAs for Stable Audio are not supported")

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, StableAudioRunner)


class StableAudioRunner(NetRunner):
    """One run's calls of the DiT: one call per conditioning part, its seconds embedded per part."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        from diffusers.models.embeddings import get_1d_rotary_pos_embed

        if x_in.ndim != 3:
            raise ValueError(f"Stable Audio samples audio latents [B, 64, T]; this latent is {list(x_in.shape)} "
                             "(make it with EmptyLatentAudio)")
        cfg = self.net.transformer.config
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        rotary = get_1d_rotary_pos_embed(cfg.attention_head_dim // 2, x.shape[2] + 1, use_real=True,
                                         repeat_interleave_real=False)
        rotary = tuple(r.to(self.device) for r in rotary)
        outs, row = [], 0
        for part in parts:
            states = _rows(part.cond.to(self.device, self.dtype), part.rows)
            if states.shape[-1] != cfg.cross_attention_input_dim:
                raise ValueError(f"this Stable Audio model takes {cfg.cross_attention_input_dim}-wide text states; "
                                 f"these are {states.shape[-1]} wide (encode with its T5-base: CLIPLoader type "
                                 "stable_audio)")
            start = float(part.extras.get("seconds_start", 0.0))
            total = float(part.extras.get("seconds_total", int(x.shape[2] / 21.53)))
            proj = self.net.projection
            s = proj.start_number_conditioner(torch.tensor([start], device=self.device))
            e = proj.end_number_conditioner(torch.tensor([total], device=self.device))
            s, e = s.to(self.dtype).expand(part.rows, -1, -1), e.to(self.dtype).expand(part.rows, -1, -1)
            text = torch.cat([proj.text_projection(states), s, e], dim=1)
            outs.append(self.net.transformer(x[row:row + part.rows], t[row:row + part.rows],
                                             encoder_hidden_states=text, global_hidden_states=torch.cat([s, e], dim=2),
                                             rotary_embedding=rotary, return_dict=False)[0])
            row += part.rows
        return torch.cat(outs)


# -- text encoder -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class T5BaseClip(ManagerOwned):
    """CLIP for Stable Audio: a T5-base encoder (``handle``) and its tokenizer."""

    handle: Any
    tokenizer: Any
    source: str = ""
    family: str = "stable_audio"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "T5BaseClip":
        if layer != -1:
            raise ValueError("CLIPSetLastLayer: Stable Audio's T5 encoder uses its last layer only")
        return self

    def describe(self) -> str:
        return "stable_audio text encoder (T5-base)"

    def encode_text(self, ctx, text: str) -> list:
        n = len(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        tok = self.tokenizer(text, padding="max_length", max_length=max(TEXT_LENGTH, n), truncation=False,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return [[masked_states(ctx, self.handle, tok), {}]]


def load_text_encoder(path: Path, manager, device: str, models_dir: Path, where: str = "CLIPLoader") -> T5BaseClip:
    """CLIPLoader type ``stable_audio``: a T5 (base) encoder file."""
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import build_t5, file_keys, find_t5_tokenizer, flow_dtype

    keys = file_keys(path, manager.allow_pickle)
    if "encoder.final_layer_norm.weight" not in keys or not any(k.startswith("encoder.block.") for k in keys):
        raise ModelFileError(f"{where}.type stable_audio takes a T5 encoder (t5-base.safetensors); {path.name} "
                             "is not one")
    tokenizer = load_llm_tokenizer(find_t5_tokenizer(models_dir, path))
    dtype = flow_dtype(device)

    return T5BaseClip(load_encoder_handle(path, "t5base", manager, dtype, build_t5), tokenizer, source=str(path))


# -- checkpoint -------------------------------------------------------------------------------------

def load_checkpoint(path: Path, manager, device: str):
    """CheckpointLoaderSimple for ``stable-audio-open-1.0.safetensors``: MODEL, no CLIP (ComfyUI loads
    T5-base with CLIPLoader type stable_audio), VAE."""
    from nodegraph_nodes.dit.audio_vae import load_vae_sd
    from nodegraph_nodes.dit.convert import strip_prefix
    from nodegraph_nodes.dit.loading import _stored, flow_dtype

    dtype = flow_dtype(device)
    weights = CheckpointWeights(path, manager)

    def loader():
        sd = weights()
        return build_net(sd, _stored(manager, sd, dtype))

    handle = manager.load(_manager_key(path, "stable_audio_dit", dtype), loader, compute_dtype=dtype)
    model = StableAudioModel(handle, "stable_audio", source=str(path))
    vae = load_vae_sd(path, "stable_audio_vae", lambda: strip_prefix(
        {k: v for k, v in weights().items() if k.startswith(VAE)}, VAE), manager, device, SAMPLE_RATE,
        "stable_audio")
    return model, None, vae
