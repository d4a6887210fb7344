"""Chroma: Flux.1 schnell's architecture with the modulation layers pruned and replaced by one
"distilled guidance" approximator (diffusers ``ChromaTransformer2DModel``), a T5-XXL text encoder only
(CLIPLoader type ``chroma``) and Flux.1's VAE.

Facts (ComfyUI's ``Chroma`` model): latent format Flux's (16 channels), sampling Flux's flow with the
exponential time shift 1.15 (``ModelSamplingFlux`` maps it; no resolution dependence by default), network
time = sigma, the conditioning's ``guidance`` defaults to 0, which is what diffusers' transformer feeds its
approximator (a FluxGuidance value on a Chroma model is not used here; ComfyUI would feed it in).
Text: T5 tokens of the prompt and the end token, no padding (ComfyUI's PixArt/Chroma T5 recipe);
negative prompts as written (ComfyUI's templates give an empty or a written negative, CFG ~4).

Key layouts: ComfyUI's / lodestones' single file (``chroma-unlocked-v*.safetensors``, ``Chroma1-HD``:
BFL's Flux names without ``img_mod``/``txt_mod``/``modulation``/``time_in``/``vector_in``, plus
``distilled_guidance_layer.{in_proj,layers.N.{in_layer,out_layer},norms.N.scale,out_proj}``), bare or
under ``model.diffusion_model.``; diffusers' names (``distilled_guidance_layer.layers.N.linear_1``,
``transformer_blocks.N.attn.to_q``) load as they are. Config from the shapes (head width 128, RoPE axes
(16, 56, 56) as Flux.1). Diffusers folders: ``ChromaPipeline`` (CheckpointLoaderSimple).

LoRAs: Flux's layouts (kohya / ComfyUI names of BFL's blocks, diffusers / PEFT names; :mod:`.lora`).

Each conditioning part runs as its own call (its T5 length kept: no padding or repetition, as the
pipeline gives the transformer each prompt separately).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json
from nodegraph_nodes.dit import convert
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.file_loading import diffusers_sub_loader, load_transformer_handle, require_subfolders
from nodegraph_nodes.dit.formats import FLUX
from nodegraph_nodes.dit.model import FlowModel, _rows, image_ids, pack_latents, unpack_latents
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner, pad_even
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 1.15
PREFIXES = ("model.diffusion_model.", "")
COMFY_MARKER = "distilled_guidance_layer.in_proj.weight"
COMFY_MARKERS = (COMFY_MARKER, "img_in.weight", "txt_in.weight")
DIFFUSERS_MARKERS = (COMFY_MARKER, "x_embedder.weight", "context_embedder.weight")
HEAD_DIM = 128
AXES = (16, 56, 56)
PIPELINE = "ChromaPipeline"


def detect_prefix(keys) -> str | None:
    """The key prefix of a Chroma transformer's weights (either layout), or ``None``."""
    keyset = set(keys)
    for prefix in PREFIXES:
        for markers in (COMFY_MARKERS, DIFFUSERS_MARKERS):
            if all(prefix + m in keyset for m in markers):
                return prefix
    return None


_count = count_indices


def to_diffusers(sd: dict) -> dict:
    """``ChromaTransformer2DModel`` names for Chroma weights in either layout (prefix already removed)."""
    if "x_embedder.weight" in sd:
        return sd
    out, rest = {}, {}
    for key, value in sd.items():
        if not key.startswith("distilled_guidance_layer."):
            rest[key] = value
            continue
        name = key[len("distilled_guidance_layer."):]
        if m := re.match(r"layers\.(\d+)\.(in_layer|out_layer)\.(weight|bias)$", name):
            i, layer, kind = m.groups()
            out[f"distilled_guidance_layer.layers.{i}.{'linear_1' if layer == 'in_layer' else 'linear_2'}.{kind}"] = value
        elif m := re.match(r"norms\.(\d+)\.scale$", name):
            out[f"distilled_guidance_layer.norms.{m.group(1)}.weight"] = value
        elif re.match(r"(in_proj|out_proj)\.(weight|bias)$", name):
            out[key] = value
        else:
            raise ModelFileError(f"unexpected Chroma weight {key}")
    modulation = [k for k in rest if re.search(r"(_mod\.lin|modulation\.lin|^time_in\.|^vector_in\.)", k)]
    if modulation:
        raise ModelFileError(f"these Chroma weights hold Flux modulation layers ({modulation[0]}); not a Chroma file")
    out.update(convert.convert_flux(rest))
    return out


def transformer_config(sd: dict) -> dict:
    """``ChromaTransformer2DModel`` config from diffusers-layout weights."""
    try:
        x_emb = sd["x_embedder.weight"]
        ctx = sd["context_embedder.weight"]
        approx = sd["distilled_guidance_layer.in_proj.weight"]
        out = sd["proj_out.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Chroma transformer weights lack {exc.args[0]}") from None
    inner = int(x_emb.shape[0])
    if inner % HEAD_DIM:
        raise ModelFileError(f"the Chroma width {inner} is not a multiple of {HEAD_DIM}")
    return {"patch_size": 1, "in_channels": int(x_emb.shape[1]),
            "out_channels": int(out.shape[0]) if int(out.shape[0]) != int(x_emb.shape[1]) else None,
            "num_layers": _count(sd, r"transformer_blocks\.(\d+)\."),
            "num_single_layers": _count(sd, r"single_transformer_blocks\.(\d+)\."),
            "attention_head_dim": HEAD_DIM, "num_attention_heads": inner // HEAD_DIM,
            "joint_attention_dim": int(ctx.shape[1]), "axes_dims_rope": list(AXES),
            "approximator_num_channels": int(approx.shape[1]), "approximator_hidden_dim": int(approx.shape[0]),
            "approximator_layers": _count(sd, r"distilled_guidance_layer\.layers\.(\d+)\.")}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import ChromaTransformer2DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    sd = to_diffusers(sd)
    return _instantiate(ChromaTransformer2DModel, transformer_config(sd), sd, dtype, "Chroma transformer")


# -- the MODEL --------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ChromaModel(FlowModel):
    """MODEL: a Chroma transformer."""

    family: str = "chroma"

    def lora_patch(self, sd: dict, strength: float, name: str):
        """LoRAs in Flux's block names (kohya / ComfyUI ``lora_unet_double_blocks_…``, diffusers / PEFT):
        Chroma's blocks are Flux's (:mod:`.lora`)."""
        from nodegraph_nodes.dit.lora import flow_lora_patch

        return flow_lora_patch("flux", self.handle.get(), sd, strength, name)

    @property
    def format(self):
        return FLUX

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.flux_flow, DEFAULT_SHIFT)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, ChromaRunner)


class ChromaRunner(NetRunner):
    """One run's calls of a ``ChromaTransformer2DModel``: Flux's packing and position ids, one call per
    conditioning part."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        h, w = x_in.shape[-2:]
        x = pad_even(x_in.to(self.device, self.dtype))
        hh, ww = x.shape[-2:]
        tokens, ids = pack_latents(x), image_ids(hh, ww, self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for p in parts:
            states = _rows(p.cond.to(self.device, self.dtype), p.rows)
            txt_ids = torch.zeros(states.shape[1], 3, device=self.device, dtype=self.dtype)
            out = self.net(hidden_states=tokens[row:row + p.rows], encoder_hidden_states=states,
                           timestep=t[row:row + p.rows], img_ids=ids, txt_ids=txt_ids, return_dict=False)[0]
            outs.append(out)
            row += p.rows
        return unpack_latents(torch.cat(outs), hh, ww)[..., :h, :w]


# -- loading ----------------------------------------------------------------------------------------

def load_transformer(path: Path, keys, manager, device: str, weight_dtype: str = "default") -> ChromaModel:
    """UNETLoader for a Chroma transformer file."""
    from nodegraph_nodes.dit.loading import WEIGHT_DTYPES, flow_dtype

    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelFileError(f"UNETLoader.weight_dtype: unknown {weight_dtype!r}; use one of {WEIGHT_DTYPES}")
    handle = load_transformer_handle(path, detect_prefix(keys), manager, device, weight_dtype, flow_dtype(device),
                                     build_transformer)
    return ChromaModel(handle, "chroma", source=str(path))


def load_text_encoder(path: Path, manager, device: str, models_dir: Path, where: str = "CLIPLoader"):
    """CLIPLoader type ``chroma``: a T5-XXL file (its tokenizer as for SD3/Flux: ``t5_tokenizer/``)."""
    from nodegraph_nodes.dit.loading import file_keys, load_text_encoders

    keys = file_keys(path, manager.allow_pickle)
    if not any(k.startswith("encoder.block.") for k in keys):
        raise ModelFileError(f"{where}.type chroma takes a T5-XXL encoder (t5xxl_fp16.safetensors …); "
                             f"{path.name} is not one")
    return load_text_encoders([path], "chroma", manager, device, models_dir, where)


def is_chroma_folder(folder: Path) -> bool:
    return is_diffusers_folder(folder) and read_json(folder / "model_index.json").get("_class_name") == PIPELINE


def load_diffusers_folder(folder: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP, VAE of a ``ChromaPipeline`` diffusers folder."""
    from diffusers import AutoencoderKL, ChromaTransformer2DModel
    from transformers import T5EncoderModel

    from nodegraph_nodes.dit.loading import flow_dtype, load_t5_tokenizer, vae_model
    from nodegraph_nodes.dit.text import FlowClip, T5Encoder

    dtype = flow_dtype(device)
    require_subfolders(folder, ("transformer", "vae", "text_encoder", "tokenizer"))
    sub_loader = diffusers_sub_loader(folder, manager, dtype)

    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(ChromaTransformer2DModel, "transformer", placed=True), compute_dtype=dtype)
    model = ChromaModel(handle, "chroma", source=str(folder))
    vae = vae_model(manager.load(_manager_key(folder / "vae", "vae", dtype), sub_loader(AutoencoderKL, "vae")))
    t5 = manager.load(_manager_key(folder / "text_encoder", "text_encoder", dtype),
                      sub_loader(T5EncoderModel, "text_encoder", placed=True), compute_dtype=dtype)
    clip = FlowClip("chroma", t5=T5Encoder(t5, load_t5_tokenizer(folder / "tokenizer")),
                    embeddings_dir=Path(models_dir) / "embeddings")
    return model, clip, vae
