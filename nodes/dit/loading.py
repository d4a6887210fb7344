"""Loading the flow families' files: transformers (UNETLoader), text encoders (CLIPLoader,
DualCLIPLoader, TripleCLIPLoader), all-in-one checkpoints and diffusers folders
(CheckpointLoaderSimple). Everything goes through the engine's model manager (once per file,
component and dtype); nothing is downloaded.

Files and what they hold (detected from the keys, see :mod:`.convert`):

* transformer: SD3/SD3.5 MMDiT or Flux.1 (BFL layout), bare or under ``model.diffusion_model.``;
* text encoders: CLIP-L / CLIP-G in the transformers layout (``text_model.…``; CLIP-G has
  ``text_projection.weight``), T5 (``encoder.block.…``, ``shared.weight``; T5EncoderModel layout);
  inside a checkpoint under ``text_encoders.clip_l|clip_g|t5xxl.transformer.``. CLIP-L or G: a 768-wide
  encoder is L and a 1280-wide one G (the released models); other widths (tiny test models): of two
  CLIP files the wider is G, a single one is L;
* ComfyUI's ``fp8_scaled`` files of any of these (``scale_weight`` per layer) are dequantized on load;
* VAE: the 16-channel AutoencoderKL in the LDM layout (``encoder.down.…``; ``first_stage_model.`` in
  a checkpoint), no quant convs.

Tokenizers (never downloaded): CLIP's vocab.json + merges.txt as for SD
(:func:`~nodegraph_nodes.diffusion.components.find_tokenizer`: ``<file>.tokenizer/`` next to the file,
``models/text_encoders/tokenizer/`` (``tokenizer_2/`` for CLIP-G)); T5's ``tokenizer.json`` or
``spiece.model`` in ``<file>.tokenizer/`` next to the T5 file or ``models/text_encoders/t5_tokenizer/``;
a diffusers folder's own ``tokenizer*/`` folders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from nodegraph.offload import dominant_dtype
from nodegraph_nodes.diffusion import checkpoint as ck
from nodegraph_nodes.diffusion.components import (TextEncoder, VaeModel, _manager_key, find_tokenizer, load_tokenizer)
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json, read_state_dict
from nodegraph_nodes.dit import convert
from nodegraph_nodes.dit.file_loading import (CheckpointWeights, diffusers_sub_loader, load_transformer_handle,
                                               require_subfolders)
from nodegraph_nodes.dit.model import FlowModel
from nodegraph_nodes.dit.text import FlowClip, T5Encoder

#: UNETLoader's weight_dtype choices (ComfyUI's)
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CLIP_PREFIXES = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
                 "t5xxl": "text_encoders.t5xxl.transformer."}


def flow_dtype(device: str) -> torch.dtype:
    """fp32 on CPU and MPS; bf16 on GPUs that have it (fp16 overflows in these transformers and T5)."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.float32


def _stored(manager, sd: dict, dtype: torch.dtype) -> torch.dtype:
    """The dtype to build a model from ``sd`` in: the file's own when the manager streams (``--lowvram`` /
    ``--vram-budget-gb``: no converted copy, blocks cast when placed, see nodegraph.offload), else ``dtype``."""
    return manager.storage_dtype(dominant_dtype(sd.values()), dtype)


def file_keys(path: Path, allow_pickle: bool) -> list[str]:
    """The tensor names of a model file (safetensors: from the header only)."""
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return list(fh.keys())
        except Exception as exc:
            raise ModelFileError(f"{path.name} is not a readable .safetensors file (corrupt or truncated: "
                                 f"{exc}); download it again") from None
    return list(read_state_dict(path, allow_pickle=allow_pickle))


# -- transformers -----------------------------------------------------------------------------------

def _fp8(name: str) -> torch.dtype | None:
    return {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
            "fp8_e5m2": torch.float8_e5m2}.get(name)


def _apply_weight_dtype(net, weight_dtype: str, device: str, compute: torch.dtype):
    fp8 = _fp8(weight_dtype)
    if fp8 is None:
        return net
    if device.startswith("cuda"):
        net.enable_layerwise_casting(storage_dtype=fp8, compute_dtype=compute)
        return net
    with torch.no_grad():  # the CPU cannot compute in fp8: keep fp8's precision, compute in fp32
        for p in net.parameters():
            if p.ndim >= 2:
                p.copy_(p.to(fp8).to(p.dtype))
    return net


def load_transformer_file(path: Path, manager, device: str, weight_dtype: str = "default") -> FlowModel:
    """UNETLoader for an SD3/SD3.5 or Flux.1 transformer file."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelFileError(f"UNETLoader.weight_dtype: unknown {weight_dtype!r}; use one of {WEIGHT_DTYPES}")
    kind = convert.detect_transformer(file_keys(path, manager.allow_pickle))
    if kind is None:
        raise ModelFileError(f"{path.name} is not an SD3 or Flux.1 transformer")

    handle = load_transformer_handle(path, kind.prefix, manager, device, weight_dtype, flow_dtype(device),
                                     lambda sd, stored: convert.build_transformer(kind, sd, stored))
    return FlowModel(handle, kind.family, kind.variant, source=str(path))


# -- text encoders ----------------------------------------------------------------------------------

def _clip_width(sd: dict) -> int:
    for key in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight"):
        if key in sd:
            return int(sd[key].shape[1])
    raise ModelFileError("the CLIP weights have no token embedding")


def text_encoder_kind(sd: dict) -> str | None:
    """``t5``, ``clip`` or ``None`` for a bare text-encoder state dict."""
    if "encoder.final_layer_norm.weight" in sd and any(k.startswith("encoder.block.") for k in sd):
        return "t5"
    if any(k.endswith("embeddings.token_embedding.weight") for k in sd):
        return "clip"
    return None


def t5_config(sd: dict) -> dict:
    shared = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if shared is None:
        raise ModelFileError("the T5 weights have no token embedding (shared.weight)")
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = int(bias.shape[1])
    q = sd["encoder.block.0.layer.0.SelfAttention.q.weight"]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    wi = sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight" if gated else "encoder.block.0.layer.1.DenseReluDense.wi.weight"]
    return {"vocab_size": int(shared.shape[0]), "d_model": int(shared.shape[1]), "d_kv": int(q.shape[0]) // heads,
            "d_ff": int(wi.shape[0]), "num_layers": layers, "num_heads": heads,
            "relative_attention_num_buckets": int(bias.shape[0]), "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu" if gated else "relu", "is_encoder_decoder": False,
            "use_cache": False, "dropout_rate": 0.0, "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False}


def build_t5(sd: dict, dtype: torch.dtype):
    from transformers import T5Config, T5EncoderModel

    sd = dict(sd)
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    if "encoder.embed_tokens.weight" not in sd and "shared.weight" in sd:
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return ck._instantiate(T5EncoderModel, T5Config(**t5_config(sd)), sd, dtype, "T5 text encoder",
                           is_transformers=True)


def find_t5_tokenizer(models_dir: Path, near: Path) -> Path:
    """Where the T5 tokenizer is (see the module docstring)."""
    base = near if near.is_dir() else near.parent
    candidates = [] if near.is_dir() else [near.with_name(near.stem + ".tokenizer")]
    candidates += [base / "t5_tokenizer", Path(models_dir) / "text_encoders" / "t5_tokenizer"]
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file():
            return c
    raise ModelFileError(
        "no T5 tokenizer found (tokenizer.json or spiece.model). Model files hold no tokenizer and this "
        "engine never downloads: copy the 'tokenizer_3' folder of the SD3 diffusers release (or "
        "'tokenizer_2' of Flux's, or google/t5-v1_1-xxl's tokenizer files) into models/text_encoders/t5_tokenizer")


def load_t5_tokenizer(folder: Path):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)


def _clip_encoder(hf: dict, key: str, family: str, manager, manager_key: tuple, tokenizer, dtype) -> TextEncoder:
    is_g = key == "clip_g"
    if is_g and "text_projection.weight" not in hf:
        raise ModelFileError("the CLIP-G weights have no text_projection; SD3 needs the projected pooled output")
    pad = 0 if is_g else int(tokenizer.eos_token_id)

    def loader():
        template = ck.family_config("sdxl", "text_encoder_2.json") if is_g else ck.family_config("sd1", "text_encoder.json")
        cfg = ck.infer_clip_config(hf, template)
        cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        return ck.build_clip(hf, cfg, _stored(manager, hf, dtype), projection=is_g)

    handle = manager.load(manager_key, loader, compute_dtype=dtype)
    layer = -1 if family == "flux" else -2
    return TextEncoder(handle, tokenizer, key, layer, False, pad, is_g)


def _hf_clip(sd: dict) -> dict:
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}


def _classify_clips(found: list[tuple[Path, dict]]) -> dict[str, tuple[Path, dict]]:
    widths = [(_clip_width(sd), path, sd) for path, sd in found]
    out: dict[str, tuple[Path, dict]] = {}
    unknown = []
    for width, path, sd in widths:
        if width == 768:
            out.setdefault("clip_l", (path, sd))
        elif width == 1280:
            out.setdefault("clip_g", (path, sd))
        else:
            unknown.append((width, path, sd))
    unknown.sort(key=lambda item: item[0])
    if len(unknown) >= 2 and unknown[0][0] != unknown[-1][0]:
        out.setdefault("clip_l", unknown[0][1:])
        out.setdefault("clip_g", unknown[-1][1:])
    elif unknown:
        out.setdefault("clip_g" if "clip_l" in out else "clip_l", unknown[0][1:])
    return out


def load_text_encoders(paths: list[Path], family: str, manager, device: str, models_dir: Path,
                       where: str) -> FlowClip:
    """A FlowClip of ``family`` (``sd3`` / ``flux``) from text-encoder files (any order)."""
    dtype = flow_dtype(device)
    clips: list[tuple[Path, dict]] = []
    t5 = None
    for path in paths:
        sd = convert.dequantize_scaled_fp8(read_state_dict(path, allow_pickle=manager.allow_pickle))
        if any(k.startswith("text_encoders.") for k in sd):
            raise ModelFileError(f"{where}: {path.name} is a checkpoint's text encoder bundle; load it with "
                                 "CheckpointLoaderSimple")
        kind = text_encoder_kind(sd)
        if kind == "t5":
            if t5 is not None:
                raise ModelFileError(f"{where}: two T5 encoders given ({t5[0].name}, {path.name})")
            t5 = (path, sd)
        elif kind == "clip":
            clips.append((path, _hf_clip(sd)))
        else:
            raise ModelFileError(f"{where}: {path.name} is not a CLIP or T5 text encoder: it looks like "
                                 f"{ck.describe_contents(sd)}")
    named = _classify_clips(clips)
    if len(named) < len(clips):
        raise ModelFileError(f"{where}: two CLIP encoders of the same kind given")
    encoders: dict[str, Any] = {}
    for key, (path, sd) in named.items():
        tokenizer = load_tokenizer(find_tokenizer(models_dir, path, second=key == "clip_g"))
        encoders[key] = _clip_encoder(sd, key, family, manager, _manager_key(path, key, dtype), tokenizer, dtype)
    if t5 is not None:
        path, sd = t5
        tokenizer = load_t5_tokenizer(find_t5_tokenizer(models_dir, path))
        handle = manager.load(_manager_key(path, "t5xxl", dtype), lambda sd=sd: build_t5(sd, _stored(manager, sd, dtype)),
                              compute_dtype=dtype)
        encoders["t5"] = T5Encoder(handle, tokenizer)
    if family == "flux" and ("t5" not in encoders or "clip_l" not in encoders or "clip_g" in encoders):
        raise ModelFileError(f"{where}: Flux takes a CLIP-L and a T5 encoder; got "
                             f"{', '.join(sorted(encoders)) or 'none'}")
    return FlowClip(family, encoders.get("clip_l"), encoders.get("clip_g"), encoders.get("t5"),
                    Path(models_dir) / "embeddings")


# -- checkpoints and folders ------------------------------------------------------------------------

def load_flow_checkpoint(path: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP (``None`` when the file has no text encoders) and VAE of an all-in-one file."""
    keys = file_keys(path, manager.allow_pickle)
    kind = convert.detect_transformer(keys)
    if kind is None:
        raise ModelFileError(f"{path.name} is not an SD3 or Flux.1 checkpoint")
    dtype = flow_dtype(device)
    sd = CheckpointWeights(path, manager)

    handle = manager.load(_manager_key(path, "transformer:default", dtype),
                          lambda: convert.build_transformer(kind, convert.strip_prefix(sd(), kind.prefix),
                                                            _stored(manager, sd(), dtype)), compute_dtype=dtype)
    model = FlowModel(handle, kind.family, kind.variant, source=str(path))
    if not any(k.startswith(ck.VAE_PREFIX) for k in keys):
        raise ModelFileError(f"{path.name} holds a transformer but no VAE; put it in models/diffusion_models and "
                             "load it with UNETLoader (and the VAE with VAELoader)")
    vae_handle = manager.load(_manager_key(path, "vae", dtype),
                              lambda: ck.build_vae(ck.vae_weights(sd()), "sd1", dtype)[0])
    vae = vae_model(vae_handle)
    clip = None
    present = {name for name, prefix in CLIP_PREFIXES.items() if any(k.startswith(prefix) for k in keys)}
    if present:
        encoders: dict[str, Any] = {}
        for name in sorted(present):
            sub = convert.strip_prefix(sd(), CLIP_PREFIXES[name])
            if name == "t5xxl":
                tokenizer = load_t5_tokenizer(find_t5_tokenizer(models_dir, path))
                t5_handle = manager.load(_manager_key(path, "t5xxl", dtype),
                                         lambda sub=sub: build_t5(sub, _stored(manager, sub, dtype)), compute_dtype=dtype)
                encoders["t5"] = T5Encoder(t5_handle, tokenizer)
            else:
                tokenizer = load_tokenizer(find_tokenizer(models_dir, path, second=name == "clip_g"))
                encoders[name] = _clip_encoder(_hf_clip(sub), name, kind.family, manager,
                                               _manager_key(path, name, dtype), tokenizer, dtype)
        clip = FlowClip(kind.family, encoders.get("clip_l"), encoders.get("clip_g"), encoders.get("t5"),
                        Path(models_dir) / "embeddings")
    sd.clear()
    return model, clip, vae


def vae_model(handle) -> VaeModel:
    cfg = handle.get().config
    return VaeModel(handle, 2 ** (len(cfg.block_out_channels) - 1), int(cfg.latent_channels))


FLOW_PIPELINES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}


def diffusers_family(folder: Path) -> str | None:
    """``sd3`` / ``flux`` for a diffusers folder of those pipelines, else ``None``."""
    if not is_diffusers_folder(folder):
        return None
    return FLOW_PIPELINES.get(read_json(folder / "model_index.json").get("_class_name", ""))


def load_flow_diffusers_folder(folder: Path, manager, device: str, models_dir: Path):
    """MODEL, CLIP, VAE of an SD3 / Flux diffusers folder."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    family = diffusers_family(folder)
    dtype = flow_dtype(device)
    index = read_json(folder / "model_index.json")

    sub_loader = diffusers_sub_loader(folder, manager, dtype)

    require_subfolders(folder, ("transformer", "vae"))
    net_cls = SD3Transformer2DModel if family == "sd3" else FluxTransformer2DModel
    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(net_cls, "transformer", placed=True), compute_dtype=dtype)
    shift = None
    sched = folder / "scheduler" / "scheduler_config.json"
    if family == "sd3" and sched.is_file():
        shift = float(read_json(sched).get("shift", 3.0))
    variant = "sd3"
    if family == "flux":
        variant = "dev" if handle.get().config.guidance_embeds else "schnell"
    model = FlowModel(handle, family, variant, source=str(folder), default_shift=shift)
    vae = vae_model(manager.load(_manager_key(folder / "vae", "vae", dtype), sub_loader(AutoencoderKL, "vae")))
    slots = ([("clip_l", "text_encoder", "tokenizer"), ("clip_g", "text_encoder_2", "tokenizer_2"),
              ("t5", "text_encoder_3", "tokenizer_3")] if family == "sd3"
             else [("clip_l", "text_encoder", "tokenizer"), ("t5", "text_encoder_2", "tokenizer_2")])
    encoders: dict[str, Any] = {}
    for key, te, tk in slots:
        if index.get(te, [None])[0] is None or not (folder / te).is_dir():
            continue
        if key == "t5":
            handle_t5 = manager.load(_manager_key(folder / te, te, dtype), sub_loader(T5EncoderModel, te, placed=True),
                                     compute_dtype=dtype)
            encoders["t5"] = T5Encoder(handle_t5, load_t5_tokenizer(folder / tk))
            continue
        is_g = key == "clip_g"
        cls = CLIPTextModelWithProjection if is_g else CLIPTextModel
        tokenizer = load_tokenizer(folder / tk if (folder / tk / "vocab.json").is_file()
                                   else find_tokenizer(models_dir, folder, is_g))
        pad = 0 if is_g else int(tokenizer.eos_token_id)
        enc_handle = manager.load(_manager_key(folder / te, te, dtype), sub_loader(cls, te, placed=True),
                                  compute_dtype=dtype)
        encoders[key] = TextEncoder(enc_handle, tokenizer, key, -1 if family == "flux" else -2, False, pad, is_g)
    clip = FlowClip(family, encoders.get("clip_l"), encoders.get("clip_g"), encoders.get("t5"),
                    Path(models_dir) / "embeddings")
    return model, clip, vae


# -- dispatch (the diffusion family's shared loaders ask these) -------------------------------------

def is_flow_transformer(path: Path, allow_pickle: bool) -> bool:
    """Whether a diffusion_models file is an SD3 / Flux.1 transformer."""
    return path.is_file() and convert.detect_transformer(file_keys(path, allow_pickle)) is not None


def is_flow_checkpoint(path: Path, allow_pickle: bool) -> bool:
    """Whether a checkpoint (file or diffusers folder) is of an SD3 / Flux.1 family."""
    if path.is_dir():
        return diffusers_family(path) is not None
    return is_flow_transformer(path, allow_pickle)


def load_flow_any(path: Path, manager, device: str, models_dir: Path):
    if path.is_dir():
        return load_flow_diffusers_folder(path, manager, device, models_dir)
    return load_flow_checkpoint(path, manager, device, models_dir)
