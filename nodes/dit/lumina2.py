"""Lumina Image 2.0: the NextDiT transformer (diffusers ``Lumina2Transformer2DModel``), its Gemma 2 2B
text encoder (CLIPLoader type ``lumina2`` with a Gemma 2 file) and Flux.1's VAE.

Facts (ComfyUI's ``Lumina2`` model): latent format Flux's (16 channels), sampling flow with shift 6
(``ModelSamplingAuraFlow`` sets another; network time = sigma, multiplier 1). The network runs on reversed
time ``1 - sigma`` and predicts the negated velocity; the runner turns both back. Text: Gemma 2 over
``<bos>`` + the prompt's tokens (no end token, no padding), the second-to-last hidden states;
CLIPTextEncodeLumina2 writes ``"{system prompt} <Prompt Start> {prompt}"`` and RenormCFG caps the guided
prediction (:mod:`.lumina2_nodes`). Prompt weights ``(word:1.2)`` are not parsed (the text goes to Gemma
as written).
LoRAs: ComfyUI's / kohya's NextDiT names and diffusers / PEFT names (:func:`lora_patch`).

Key layouts: ComfyUI's repackaged ``lumina_2_model_bf16.safetensors`` (Lumina's NextDiT names:
``layers.N.attention.qkv``, ``attention.out``, ``q_norm``/``k_norm``, ``feed_forward.w1..w3``,
``attention_norm1/2``, ``ffn_norm1/2``, ``adaLN_modulation.1``, ``cap_embedder``, ``t_embedder.mlp``,
``x_embedder``, ``final_layer``, no pad tokens — that is Z-Image), bare or under
``model.diffusion_model.``; diffusers' names load as they are. Config from the shapes (head width from
``q_norm``; RoPE axes: the released head width 96 uses (32, 32, 32), others a near-even split).
Text encoder files: ``gemma_2_2b_fp16.safetensors`` (``model.layers.N.…`` with
``pre_feedforward_layernorm``; Gemma 2's head width 256 is not in the weights). Tokenizer (never
downloaded): a folder with ``tokenizer.json`` + ``tokenizer_config.json`` — ``<file>.tokenizer/`` next to
the encoder, else ``models/text_encoders/gemma2_tokenizer/`` (the ``tokenizer`` folder of
Alpha-VLLM/Lumina-Image-2.0's diffusers release). Diffusers folders: ``Lumina2Pipeline``.
All-in-one checkpoints (ComfyUI's ``lumina_2.safetensors``, ``NetaYumev35_pretrained_all_in_one``;
CheckpointLoaderSimple): the NextDiT under ``model.diffusion_model.``, Flux's VAE (LDM names) under
``vae.``, Gemma 2 under ``text_encoders.gemma2_2b.transformer.``; the SentencePiece model such files
carry (``text_encoders.gemma2_2b.spiece_model``) is not read (that needs the sentencepiece package): the
tokenizer comes from the folders above.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json, read_state_dict
from nodegraph_nodes.dit import convert
from nodegraph_nodes.dit.file_loading import (CheckpointWeights, diffusers_sub_loader, load_transformer_handle,
                                               require_subfolders)
from nodegraph_nodes.dit.formats import FLUX
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner, pad_even
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 6.0
PREFIXES = ("model.diffusion_model.", "")
COMFY_MARKERS = ("cap_embedder.0.weight", "layers.0.attention.qkv.weight", "x_embedder.weight")
DIFFUSERS_MARKERS = ("time_caption_embed.caption_embedder.0.weight", "layers.0.attn.to_q.weight", "x_embedder.weight")
PIPELINE = "Lumina2Pipeline"
GEMMA2_HEAD_DIM = 256
#: RoPE table sizes (caption + image row, rows, columns). The release's config says (300, 512, 512), which
#: caps prompts at 299 tokens in diffusers; ComfyUI computes positions without a cap. A position's angles do
#: not depend on the table size, so a longer first axis changes nothing below 300 and lifts the cap.
AXES_LENS = (8192, 512, 512)
TOKENIZER_FOLDER = "gemma2_tokenizer"
SYSTEM_PROMPTS = {
    "superior": "You are an assistant designed to generate superior images with the superior degree of "
                "image-text alignment based on textual prompts or user prompts.",
    "alignment": "You are an assistant designed to generate high-quality images with the highest degree of "
                 "image-text alignment based on textual prompts.",
}


# -- transformer ------------------------------------------------------------------------------------

def detect_prefix(keys) -> str | None:
    """The key prefix of a Lumina 2 transformer's weights (either layout), or ``None`` (Z-Image's files,
    the same NextDiT names, also hold ``cap_pad_token``)."""
    keyset = set(keys)
    for prefix in PREFIXES:
        if prefix + "cap_pad_token" in keyset or prefix + "x_pad_token" in keyset:
            continue
        for markers in (COMFY_MARKERS, DIFFUSERS_MARKERS):
            if all(prefix + m in keyset for m in markers):
                return prefix
    return None


_RENAMES = (("cap_embedder.", "time_caption_embed.caption_embedder."),
            ("t_embedder.mlp.0.", "time_caption_embed.timestep_embedder.linear_1."),
            ("t_embedder.mlp.2.", "time_caption_embed.timestep_embedder.linear_2."),
            ("final_layer.adaLN_modulation.1.", "norm_out.linear_1."), ("final_layer.linear.", "norm_out.linear_2."))
_BLOCK = {"attention.out": "attn.to_out.0", "attention.q_norm": "attn.norm_q", "attention.k_norm": "attn.norm_k",
          "feed_forward.w1": "feed_forward.linear_1", "feed_forward.w2": "feed_forward.linear_2",
          "feed_forward.w3": "feed_forward.linear_3", "adaLN_modulation.1": "norm1.linear",
          "attention_norm2": "norm2", "ffn_norm1": "ffn_norm1", "ffn_norm2": "ffn_norm2"}


def to_diffusers(sd: dict, dim: int | None = None) -> dict:
    """``Lumina2Transformer2DModel`` names for Lumina 2 weights in either layout (prefix removed); ``dim``
    (the model width, to split a fused qkv) is read from ``x_embedder`` unless given (LoRA ``up`` parts)."""
    if "time_caption_embed.caption_embedder.0.weight" in sd:
        return sd
    dim = int(sd["x_embedder.weight"].shape[0]) if dim is None else dim
    out = {}
    for key, value in sd.items():
        if key == "norm_final.weight":  # in the original files, unused
            continue
        if key.startswith("x_embedder."):
            out[key] = value
            continue
        renamed = next((new + key[len(old):] for old, new in _RENAMES if key.startswith(old)), None)
        if renamed is not None:
            out[renamed] = value
            continue
        m = re.match(r"(layers|noise_refiner|context_refiner)\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m is None:
            raise ModelFileError(f"unexpected Lumina 2 weight {key}")
        group, i, name, kind = m.groups()
        base = f"{group}.{i}."
        if name == "attention.qkv":
            kv = (value.shape[0] - dim) // 2
            for n, part in zip(("to_q", "to_k", "to_v"), torch.split(value, (dim, kv, kv), dim=0)):
                out[f"{base}attn.{n}.{kind}"] = part
        elif name == "attention_norm1":
            out[f"{base}{'norm1' if group == 'context_refiner' else 'norm1.norm'}.{kind}"] = value
        elif name in _BLOCK:
            out[f"{base}{_BLOCK[name]}.{kind}"] = value
        else:
            raise ModelFileError(f"unexpected Lumina 2 weight {key}")
    return out


def rope_axes(head_dim: int) -> list[int]:
    if head_dim == 96:
        return [32, 32, 32]
    a = (head_dim // 3) // 2 * 2
    b = (head_dim - a) // 2 // 2 * 2
    return [a, b, head_dim - a - b]


def transformer_config(sd: dict) -> dict:
    """``Lumina2Transformer2DModel`` config from diffusers-layout weights."""
    try:
        x_emb = sd["x_embedder.weight"]
        head = int(sd["layers.0.attn.norm_q.weight"].shape[0])
        k = sd["layers.0.attn.to_k.weight"]
        cap = sd["time_caption_embed.caption_embedder.1.weight"]
        ffn = int(sd["layers.0.feed_forward.linear_1.weight"].shape[0])
        out = sd["norm_out.linear_2.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Lumina 2 transformer weights lack {exc.args[0]}") from None
    dim = int(x_emb.shape[0])
    patch_in = int(x_emb.shape[1])
    in_channels = patch_in // 4

    def count(prefix: str) -> int:
        return len({int(m.group(1)) for key in sd if (m := re.match(prefix + r"\.(\d+)\.", key))})

    return {"sample_size": 128, "patch_size": 2, "in_channels": in_channels,
            "out_channels": int(out.shape[0]) // 4 if int(out.shape[0]) != patch_in else None,
            "hidden_size": dim, "num_layers": count("layers"), "num_refiner_layers": count("noise_refiner"),
            "num_attention_heads": dim // head, "num_kv_heads": int(k.shape[0]) // head, "multiple_of": ffn,
            "ffn_dim_multiplier": None if ffn >= 4 * dim else ffn / (4 * dim), "norm_eps": 1e-5,
            "scaling_factor": 1.0, "axes_dim_rope": rope_axes(head), "axes_lens": AXES_LENS,
            "cap_feat_dim": int(cap.shape[1])}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import Lumina2Transformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    sd = to_diffusers(sd)
    return _instantiate(Lumina2Transformer2DModel, transformer_config(sd), sd, dtype, "Lumina 2 transformer")


@dataclass(frozen=True, eq=False)
class Lumina2Model(FlowModel):
    """MODEL: a Lumina 2 transformer."""

    family: str = "lumina2"

    def lora_patch(self, sd: dict, strength: float, name: str):
        return lora_patch(self.handle.get(), sd, strength, name)

    @property
    def format(self):
        return FLUX

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT, 1.0)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, Lumina2Runner)


class Lumina2Runner(NetRunner):
    """One run's calls of a ``Lumina2Transformer2DModel`` (one call per conditioning part)."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        h, w = x_in.shape[-2:]
        x = pad_even(x_in.to(self.device, self.dtype))
        t = 1.0 - timestep.to(self.device, torch.float32).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for p in parts:
            states = _rows(p.cond.to(self.device, self.dtype), p.rows)
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=self.device)
            out = self.net(hidden_states=x[row:row + p.rows], timestep=t[row:row + p.rows].to(self.dtype),
                           encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=False)[0]
            outs.append(-out.float())
            row += p.rows
        return torch.cat(outs)[..., :h, :w].to(self.dtype)


LORA_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_", "lora_transformer_", "")


def lora_patch(net: torch.nn.Module, sd: dict, strength: float, name: str):
    """The deltas of LoRA ``sd`` on a Lumina 2 transformer: ComfyUI / musubi names of the NextDiT layout
    (``diffusion_model.layers.N.attention.qkv``: the fused ``up`` split by rows into ``to_q``/``to_k``/
    ``to_v`` with the shared ``down``), kohya's (``lora_unet_layers_N_attention_qkv``) and diffusers / PEFT
    names (``transformer.layers.N.attn.to_q``); ``strength · alpha/rank · up @ down``."""
    from nodegraph_nodes.diffusion.lora import _module_names
    from nodegraph_nodes.dit.lora_common import TEXT_PREFIXES, finish, lora_layers

    modules = _module_names(net, "unet")
    dim = int(net.config.hidden_size)
    original = {}
    for group in ("layers", "noise_refiner", "context_refiner"):
        for i in range(len(getattr(net, group))):
            for layer in ("attention.qkv", "attention.out", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                          "adaLN_modulation.1"):
                dotted = f"{group}.{i}.{layer}"
                original[dotted] = original[dotted.replace(".", "_")] = dotted
    for layer in ("x_embedder", "cap_embedder.1", "t_embedder.mlp.0", "t_embedder.mlp.2", "final_layer.linear",
                  "final_layer.adaLN_modulation.1"):
        original[layer] = original[layer.replace(".", "_")] = layer
    deltas, unread = {}, []
    for key, up, down, scale in lora_layers(sd):
        for prefix in LORA_PREFIXES:
            if not key.startswith(prefix):
                continue
            layer = key[len(prefix):]
            if layer in modules:
                deltas[modules[layer] + ".weight"] = (up, down, scale)
                break
            if layer in original:
                for target, part in to_diffusers({original[layer] + ".weight": up}, dim).items():
                    deltas[modules[target[:-len(".weight")]] + ".weight"] = (part, down, scale)
                break
        else:
            if not key.startswith(TEXT_PREFIXES):
                unread.append(key)
    return finish(name, "Lumina 2", deltas, unread, strength, sd)


# -- Gemma 2 text encoder ---------------------------------------------------------------------------

def is_gemma2(keys) -> bool:
    keyset = set(keys)
    return any(p + "layers.0.pre_feedforward_layernorm.weight" in keyset for p in ("model.", ""))


def build_gemma2(sd: dict, dtype: torch.dtype):
    from transformers import Gemma2Config, Gemma2Model

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    if any(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    try:
        emb = sd["embed_tokens.weight"]
        q = sd["layers.0.self_attn.q_proj.weight"]
        k = sd["layers.0.self_attn.k_proj.weight"]
        ffn = sd["layers.0.mlp.gate_proj.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Gemma 2 weights lack {exc.args[0]}") from None
    layers = len({int(m.group(1)) for key in sd if (m := re.match(r"layers\.(\d+)\.", key))})
    cfg = Gemma2Config(vocab_size=int(emb.shape[0]), hidden_size=int(emb.shape[1]),
                       intermediate_size=int(ffn.shape[0]), num_hidden_layers=layers, head_dim=GEMMA2_HEAD_DIM,
                       num_attention_heads=int(q.shape[0]) // GEMMA2_HEAD_DIM,
                       num_key_value_heads=int(k.shape[0]) // GEMMA2_HEAD_DIM, query_pre_attn_scalar=GEMMA2_HEAD_DIM,
                       hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
                       attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096,
                       max_position_embeddings=8192, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    return _instantiate(Gemma2Model, cfg, sd, dtype, "Gemma 2 text encoder", is_transformers=True)


@dataclass(frozen=True, eq=False)
class Lumina2Clip(ManagerOwned):
    """CLIP for Lumina 2: a Gemma 2 model (``handle``) and its tokenizer."""

    handle: Any
    tokenizer: Any
    source: str = ""
    layer_override: int | None = None
    family: str = "lumina2"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "Lumina2Clip":
        return dataclasses.replace(self, layer_override=layer)

    def describe(self) -> str:
        return "lumina2 text encoder (Gemma 2)"

    def encode_text(self, ctx, text: str) -> list:
        layer = -2 if self.layer_override is None else self.layer_override
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        ids = ([int(bos)] if bos is not None else []) + list(ids)
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            input_ids = torch.tensor([ids], device=ctx.device)
            out = module(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=True)
            hidden = out.hidden_states[layer].float().cpu()
        return [[hidden, {}]]


def find_tokenizer(models_dir: Path, near: Path) -> Path:
    for c in (near.with_name(near.stem + ".tokenizer"), near.parent / TOKENIZER_FOLDER,
              Path(models_dir) / "text_encoders" / TOKENIZER_FOLDER):
        if (c / "tokenizer.json").is_file() or (c / "tokenizer.model").is_file():
            return c
    raise ModelFileError(
        f"no tokenizer found for {near.name} (tokenizer.json or tokenizer.model, with tokenizer_config.json). "
        f"Model files hold no tokenizer and this engine never downloads: copy the 'tokenizer' folder of "
        f"Alpha-VLLM/Lumina-Image-2.0's diffusers release into models/text_encoders/{TOKENIZER_FOLDER}")


def load_text_encoder(path: Path, manager, device: str, models_dir: Path) -> Lumina2Clip:
    """CLIPLoader type ``lumina2`` with a Gemma 2 file."""
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import _stored, flow_dtype

    tokenizer = load_llm_tokenizer(find_tokenizer(models_dir, path))
    dtype = flow_dtype(device)

    def loader():
        sd = convert.dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
        return build_gemma2(sd, _stored(manager, sd, dtype))

    handle = manager.load(_manager_key(path, "gemma2", dtype), loader, compute_dtype=dtype)
    return Lumina2Clip(handle, tokenizer, source=str(path))


# -- files and folders ------------------------------------------------------------------------------

def load_transformer(path: Path, keys, manager, device: str, weight_dtype: str = "default") -> Lumina2Model:
    """UNETLoader for a Lumina 2 transformer file."""
    from nodegraph_nodes.dit.loading import WEIGHT_DTYPES, flow_dtype

    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelFileError(f"UNETLoader.weight_dtype: unknown {weight_dtype!r}; use one of {WEIGHT_DTYPES}")
    handle = load_transformer_handle(path, detect_prefix(keys), manager, device, weight_dtype, flow_dtype(device),
                                     build_transformer)
    return Lumina2Model(handle, "lumina2", source=str(path))


def is_lumina2_folder(folder: Path) -> bool:
    return is_diffusers_folder(folder) and read_json(folder / "model_index.json").get("_class_name") == PIPELINE


def load_diffusers_folder(folder: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP, VAE of a ``Lumina2Pipeline`` diffusers folder (shift from its scheduler config)."""
    from diffusers import AutoencoderKL, Lumina2Transformer2DModel
    from transformers import Gemma2Model

    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype, vae_model

    dtype = flow_dtype(device)
    require_subfolders(folder, ("transformer", "vae", "text_encoder", "tokenizer"))
    sub_loader = diffusers_sub_loader(folder, manager, dtype)

    shift = None
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        shift = float(read_json(sched).get("shift", DEFAULT_SHIFT))
    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(Lumina2Transformer2DModel, "transformer", placed=True), compute_dtype=dtype)
    model = Lumina2Model(handle, "lumina2", source=str(folder), default_shift=shift)
    vae = vae_model(manager.load(_manager_key(folder / "vae", "vae", dtype), sub_loader(AutoencoderKL, "vae")))
    te = manager.load(_manager_key(folder / "text_encoder", "text_encoder", dtype),
                      sub_loader(Gemma2Model, "text_encoder", placed=True), compute_dtype=dtype)
    clip = Lumina2Clip(te, load_llm_tokenizer(folder / "tokenizer"), source=str(folder))
    return model, clip, vae


# -- all-in-one checkpoints -------------------------------------------------------------------------

CKPT_VAE_PREFIX = "vae."
CKPT_GEMMA_PREFIX = "text_encoders.gemma2_2b.transformer."


def is_checkpoint(keys) -> bool:
    """Whether a checkpoint file's keys are a Lumina 2 all-in-one file (transformer + VAE)."""
    keys = list(keys)
    return detect_prefix(keys) == "model.diffusion_model." and any(k.startswith(CKPT_VAE_PREFIX) for k in keys)


def load_checkpoint(path: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP (``None`` without the Gemma part) and VAE of a Lumina 2 all-in-one file."""
    from nodegraph_nodes.diffusion import checkpoint as ck
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import _stored, file_keys, flow_dtype, vae_model

    keys = file_keys(path, manager.allow_pickle)
    dtype = flow_dtype(device)
    sd = CheckpointWeights(path, manager)

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sd().items() if k.startswith(prefix)}

    def net_loader():
        weights = part("model.diffusion_model.")
        return build_transformer(weights, _stored(manager, weights, dtype))

    handle = manager.load(_manager_key(path, "transformer:default", dtype), net_loader, compute_dtype=dtype,
                          placed=True)
    model = Lumina2Model(handle, "lumina2", source=str(path))
    vae = vae_model(manager.load(_manager_key(path, "vae", dtype),
                                 lambda: ck.build_vae(part(CKPT_VAE_PREFIX), "sd1", dtype)[0]))
    clip = None
    if any(k.startswith(CKPT_GEMMA_PREFIX) for k in keys):
        tokenizer = load_llm_tokenizer(find_tokenizer(models_dir, path))

        def te_loader():
            weights = {k: v for k, v in part(CKPT_GEMMA_PREFIX).items() if isinstance(v, torch.Tensor)
                       and k.startswith("model.")}
            return build_gemma2(weights, _stored(manager, weights, dtype))

        clip = Lumina2Clip(manager.load(_manager_key(path, "gemma2", dtype), te_loader, compute_dtype=dtype),
                           tokenizer, source=str(path))
    return model, clip, vae
