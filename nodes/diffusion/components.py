"""The values that travel on MODEL, CLIP and VAE sockets, and how they are loaded.

Each wraps a :class:`~nodegraph.models.ManagedModel` (the engine's model manager owns the weights,
loads them once per file/component/dtype and places them on devices) plus what the nodes need to use
it: the family, the scheduler config, latent scaling, preview factors, tokenizers and the LoRA patches
to apply. Wrappers are immutable: LoraLoader and CLIPSetLastLayer return changed copies (ComfyUI's
``ModelPatcher.clone()``), the weights stay shared.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.sampling.model import SamplingPatches
from nodegraph_nodes.sampling.model_sampling import ModelSampling, from_scheduler_config
from nodegraph_nodes.diffusion import checkpoint as ck
from nodegraph_nodes.diffusion.bert_encode import read_package_reference
from nodegraph_nodes.diffusion.files import ModelFileError, file_identity, is_diffusers_folder, read_json, read_state_dict


@dataclass(frozen=True)
class LoraPatch:
    """Low-rank deltas for one module: ``{param name: (up, down, scale)}`` times ``strength``.
    ``unmatched``: the LoRA's layer keys this module's reader took as its part but could not apply (no
    such layer, or an ``up``/``down`` matrix missing); LoraLoader reports them as a warning."""

    name: str
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    strength: float
    unmatched: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class DiffusionModel(ManagerOwned):
    """MODEL: a UNet plus how to sample with it."""

    handle: Any  # ManagedModel of a diffusers UNet2DConditionModel
    family: str
    scheduler_config: dict
    latent_scale: float
    latent_channels: int
    rgb_factors: tuple
    rgb_bias: tuple
    patches: tuple[LoraPatch, ...] = ()
    source: str = ""
    #: sampling hooks (IP-Adapter image prompts...): see nodegraph_nodes.diffusion.sampler
    hooks: tuple = ()
    #: a ModelSampling* node's replacement of the sampling the scheduler config describes
    sampling: ModelSampling | None = None
    #: CFG patches (RescaleCFG, CFGNorm, CFGZeroStar, …)
    sampling_patches: SamplingPatches = SamplingPatches()
    #: a fixed class-embedding input of every UNet call (Lotus-D's task embedding, :mod:`.lotus`)
    class_labels: tuple[float, ...] | None = None

    def with_patch(self, patch: LoraPatch) -> "DiffusionModel":
        return dataclasses.replace(self, patches=self.patches + (patch,))

    def with_hooks(self, hooks: tuple) -> "DiffusionModel":
        return dataclasses.replace(self, hooks=tuple(hooks))

    @property
    def is_sdxl(self) -> bool:
        return self.family in ("sdxl", "sdxl_refiner")

    # -- the sampling core's model protocol (nodegraph_nodes.sampling.model) --

    @functools.cached_property
    def model_sampling(self) -> ModelSampling:
        return self.sampling if self.sampling is not None else from_scheduler_config(self.scheduler_config)

    def with_model_sampling(self, ms: ModelSampling) -> "DiffusionModel":
        return dataclasses.replace(self, sampling=ms)

    def with_sampling_patches(self, patches: SamplingPatches) -> "DiffusionModel":
        return dataclasses.replace(self, sampling_patches=patches)

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.latent_scale

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.latent_scale

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor:
        from nodegraph_nodes.diffusion.sampler import latent_preview

        return latent_preview(self, latent)

    def open_runner(self, ctx, latent_shape: tuple):
        from nodegraph_nodes.diffusion.unet_runner import open_unet_runner

        return open_unet_runner(self, ctx, latent_shape)


@dataclass(frozen=True, eq=False)
class TextEncoder:
    """One CLIP text encoder and its tokenizer, with ComfyUI's encoding recipe."""

    handle: Any
    tokenizer: Any
    key: str  # clip_l / clip_g / clip_h: the name used in embedding files
    layer: int  # -1 = last layer, -2 = penultimate …
    layer_norm_hidden_state: bool
    pad_id: int
    projection: bool
    kind: str = "clip"  # "clip", or "bert" for a sentence encoder (:mod:`.bert_encode`)
    max_length: int = 77
    zero_padding: bool = False


@dataclass(frozen=True, eq=False)
class ClipModel(ManagerOwned):
    """CLIP: one or two text encoders (SDXL: clip_l + clip_g, hidden states concatenated)."""

    encoders: tuple[TextEncoder, ...]
    family: str
    embeddings_dir: Path | None = None
    layer_override: int | None = None
    patches: tuple[tuple[int, LoraPatch], ...] = ()

    def with_layer(self, layer: int) -> "ClipModel":
        return dataclasses.replace(self, layer_override=layer)

    def with_patch(self, index: int, patch: LoraPatch) -> "ClipModel":
        return dataclasses.replace(self, patches=self.patches + ((index, patch),))


@dataclass(frozen=True, eq=False)
class VaeModel(ManagerOwned):
    handle: Any  # ManagedModel of a diffusers AutoencoderKL
    scale_factor: int = 8
    latent_channels: int = 4


# -- dtype ---------------------------------------------------------------------------------------

def compute_dtype(device: str, component: str = "unet") -> torch.dtype:
    """fp32 on CPU; fp16 on GPUs (the VAE in bf16 where supported, as fp16 VAEs overflow)."""
    if device.startswith("cuda"):
        if component == "vae":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.float16
    if device == "mps":
        return torch.float16 if component != "vae" else torch.float32
    return torch.float32


# -- tokenizers ----------------------------------------------------------------------------------

def find_tokenizer(models_dir: Path, near: Path, second: bool = False) -> Path:
    """Where the CLIP tokenizer files (vocab.json + merges.txt) are.

    Looked for, in order: ``tokenizer/`` (``tokenizer_2/`` for SDXL's second encoder) inside a diffusers
    folder or next to the model file, a folder named like the model file plus ``.tokenizer``,
    then ``models/text_encoders/tokenizer`` (``…/tokenizer_2``). The second encoder falls back to the
    first tokenizer (the CLIP BPE vocabulary is the same; only the padding differs).
    """
    names = ("tokenizer_2", "tokenizer") if second else ("tokenizer",)
    base = near if near.is_dir() else near.parent
    candidates = [base / n for n in names]
    if not near.is_dir():
        candidates.insert(0, near.with_name(near.stem + ".tokenizer"))
    candidates += [Path(models_dir) / "text_encoders" / n for n in names]
    for c in candidates:
        if (c / "vocab.json").is_file() and (c / "merges.txt").is_file():
            return c
    raise ModelFileError(
        "no CLIP tokenizer found (vocab.json + merges.txt). Models hold no tokenizer files and this engine "
        "never downloads: copy the 'tokenizer' folder of the model's diffusers release (for SD 1.x: "
        "openai/clip-vit-large-patch14) into models/text_encoders/tokenizer")


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


# -- loading -------------------------------------------------------------------------------------

def _manager_key(path: Path, component: str, dtype: torch.dtype) -> tuple:
    if path.is_dir():
        ident = (str(path.resolve()), 0, max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0))
    else:
        ident = file_identity(path)
    return (*ident, component, str(dtype))


class CheckpointReader:
    """Reads a single file once and hands out its parts (used inside loader callables)."""

    def __init__(self, path: Path, allow_pickle: bool) -> None:
        self.path = path
        self.allow_pickle = allow_pickle
        self._sd: dict | None = None

    @property
    def sd(self) -> dict:
        if self._sd is None:
            self._sd = read_state_dict(self.path, allow_pickle=self.allow_pickle)
        return self._sd

    def drop(self) -> None:
        self._sd = None


def load_checkpoint(path: Path, manager, device: str, models_dir: Path) -> tuple[DiffusionModel, ClipModel, VaeModel]:
    """MODEL, CLIP, VAE of a single-file checkpoint or a diffusers folder."""
    if is_diffusers_folder(path):
        return load_diffusers_folder(path, manager, device, models_dir)
    if path.is_dir():
        raise ModelFileError(f"{path.name} is a folder without model_index.json; not a diffusers model")
    reader = CheckpointReader(path, manager.allow_pickle)
    sd = reader.sd
    family = ck.detect_family(sd)
    if family is None or not any(k.startswith(ck.UNET_PREFIX) for k in sd):
        raise ModelFileError(f"{path.name} is not a Stable Diffusion checkpoint of a supported family "
                             f"(SD 1.x, SD 2.x, SDXL): it looks like {ck.describe_contents(sd)}")
    spec = ck.family_config(family, "family.json")
    unet_dtype, vae_dtype = compute_dtype(device, "unet"), compute_dtype(device, "vae")
    unet_sd = {k[len(ck.UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(ck.UNET_PREFIX)}
    holder: dict[str, Any] = {}
    pooled_dim = ck.pooled_dim_of(sd)

    def unet_loader():
        module, cfg = ck.build_unet(unet_sd, family, unet_dtype, pooled_dim)
        holder["unet_cfg"] = cfg
        return module

    unet_handle = manager.load(_manager_key(path, "unet", unet_dtype), unet_loader)
    sched = ck.family_config(family, "scheduler.json")
    if family == "sd2":
        sched["prediction_type"] = ck.sd2_prediction_type(unet_sd)
    vae_sd = ck.vae_weights(sd)
    vae_handle = manager.load(_manager_key(path, "vae", vae_dtype),
                              lambda: ck.build_vae(vae_sd, family, vae_dtype)[0])
    vae_cfg = vae_handle.get().config
    model = DiffusionModel(unet_handle, family, sched, float(vae_cfg.scaling_factor),
                           int(unet_handle.get().config.out_channels),
                           tuple(map(tuple, spec["latent_rgb_factors"])), tuple(spec["latent_rgb_bias"]),
                           source=str(path))
    encoders = []
    clip_parts = None
    for index, enc in enumerate(spec["clip"]):
        tok_path = find_tokenizer(models_dir, path, second=index > 0)
        tokenizer = load_tokenizer(tok_path)

        def clip_loader(index=index, enc=enc, tokenizer=tokenizer):
            nonlocal clip_parts
            if clip_parts is None:
                clip_parts = ck.clip_from_checkpoint(reader.sd, family)
            hf, cfg = clip_parts[index]
            cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=_pad_id(enc, tokenizer))
            return ck.build_clip(hf, cfg, unet_dtype, projection=enc.get("projection", False))

        handle = manager.load(_manager_key(path, f"clip{index}", unet_dtype), clip_loader)
        encoders.append(TextEncoder(handle, tokenizer, enc["key"], enc["layer"], enc["layer_norm_hidden_state"],
                                    _pad_id(enc, tokenizer), enc.get("projection", False)))
    reader.drop()
    clip = ClipModel(tuple(encoders), family, Path(models_dir) / "embeddings")
    vae = VaeModel(vae_handle, 2 ** (len(vae_cfg.block_out_channels) - 1), int(vae_cfg.latent_channels))
    return model, clip, vae


def _pad_id(enc: dict, tokenizer) -> int:
    if enc["pad"] == "eos":
        return int(tokenizer.eos_token_id)
    return int(enc["pad"])


def _diffusers_family(folder: Path) -> str:
    index = read_json(folder / "model_index.json")
    cls = index.get("_class_name", "")
    if "XL" in cls:
        return "sdxl_refiner" if "text_encoder" not in index or index.get("text_encoder", [None])[0] is None else "sdxl"
    unet_cfg = read_json(folder / "unet" / "config.json")
    return "sd2" if unet_cfg.get("use_linear_projection") else "sd1"


def load_diffusers_folder(folder: Path, manager, device: str, models_dir: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    for part in ("unet", "vae", "scheduler"):
        if not (folder / part).is_dir():
            raise ModelFileError(f"diffusers folder {folder.name} has no '{part}' subfolder")
    family = _diffusers_family(folder)
    spec = ck.family_config(family, "family.json")
    unet_dtype, vae_dtype = compute_dtype(device, "unet"), compute_dtype(device, "vae")

    def load_module(cls, sub, dtype):
        def loader():
            try:
                return cls.from_pretrained(str(folder / sub), torch_dtype=dtype, local_files_only=True,
                                           use_safetensors=None if manager.allow_pickle else True).eval().requires_grad_(False)
            except Exception as exc:
                raise ModelFileError(f"could not load {folder.name}/{sub}: {exc}") from None
        return loader

    unet = manager.load(_manager_key(folder / "unet", "unet", unet_dtype), load_module(UNet2DConditionModel, "unet", unet_dtype))
    vae = manager.load(_manager_key(folder / "vae", "vae", vae_dtype), load_module(AutoencoderKL, "vae", vae_dtype))
    sched = read_json(folder / "scheduler" / "scheduler_config.json")
    vae_cfg = vae.get().config
    model = with_lotus_settings(DiffusionModel(
        unet, family, sched, float(vae_cfg.scaling_factor), int(unet.get().config.out_channels),
        tuple(map(tuple, spec["latent_rgb_factors"])), tuple(spec["latent_rgb_bias"]), source=str(folder)))
    reference = read_package_reference(folder)
    if reference is not None:  # a sentence encoder from an installed package (e.g. the shapes world's)
        return model, _package_clip(reference, manager, unet_dtype, family, models_dir), \
            VaeModel(vae, 2 ** (len(vae_cfg.block_out_channels) - 1), int(vae_cfg.latent_channels))
    encoders = []
    subs = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]
    if family == "sdxl_refiner":
        subs = [("text_encoder_2", "tokenizer_2")]
    for enc, (te, tk) in zip(spec["clip"], subs):
        cls = CLIPTextModelWithProjection if enc.get("projection") else CLIPTextModel
        tok_dir = folder / tk if (folder / tk / "vocab.json").is_file() else find_tokenizer(models_dir, folder, tk.endswith("2"))
        tokenizer = load_tokenizer(tok_dir)
        handle = manager.load(_manager_key(folder / te, te, unet_dtype), load_module(cls, te, unet_dtype))
        encoders.append(TextEncoder(handle, tokenizer, enc["key"], enc["layer"], enc["layer_norm_hidden_state"],
                                    _pad_id(enc, tokenizer), enc.get("projection", False)))
    clip = ClipModel(tuple(encoders), family, Path(models_dir) / "embeddings")
    return model, clip, VaeModel(vae, 2 ** (len(vae_cfg.block_out_channels) - 1), int(vae_cfg.latent_channels))


def _package_clip(reference, manager, dtype: torch.dtype, family: str, models_dir: Path) -> ClipModel:
    from nodegraph_nodes.diffusion.bert_encode import load_bert, load_bert_tokenizer

    te_folder = reference.folder()
    tokenizer = load_bert_tokenizer(te_folder)
    handle = manager.load(_manager_key(te_folder, "text_encoder", dtype), lambda: load_bert(te_folder, dtype))
    enc = TextEncoder(handle, tokenizer, reference.package, -1, False, int(tokenizer.pad_token_id or 0), False,
                      kind="bert", max_length=reference.max_length, zero_padding=reference.zero_padding)
    return ClipModel((enc,), family, Path(models_dir) / "embeddings")


def load_vae_file(path: Path, manager, device: str) -> VaeModel:
    dtype = compute_dtype(device, "vae")
    if is_diffusers_folder(path) or (path.is_dir() and (path / "config.json").is_file()):
        from diffusers import AutoencoderKL

        sub = path / "vae" if (path / "vae").is_dir() else path
        handle = manager.load(_manager_key(sub, "vae", dtype),
                              lambda: AutoencoderKL.from_pretrained(str(sub), torch_dtype=dtype, local_files_only=True).eval())
    else:
        def loader():
            sd = read_state_dict(path, allow_pickle=manager.allow_pickle)
            weights = ck.vae_weights(sd)
            if "encoder.conv_in.weight" not in weights and "decoder.conv_in.weight" not in weights:
                raise ModelFileError(f"{path.name} is not a VAE: it looks like {ck.describe_contents(sd)}")
            family = "sd1"
            return ck.build_vae(weights, family, dtype)[0]

        handle = manager.load(_manager_key(path, "vae", dtype), loader)
    cfg = handle.get().config
    return VaeModel(handle, 2 ** (len(cfg.block_out_channels) - 1), int(cfg.latent_channels))


def load_unet_file(path: Path, manager, device: str) -> DiffusionModel:
    dtype = compute_dtype(device, "unet")
    sd_holder: dict[str, Any] = {}

    def unet_sd():
        if "sd" not in sd_holder:
            sd = read_state_dict(path, allow_pickle=manager.allow_pickle)
            if any(k.startswith(ck.UNET_PREFIX) for k in sd):
                sd = {k[len(ck.UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(ck.UNET_PREFIX)}
            if ck.is_diffusers_unet(sd):  # diffusers' names (a diffusers folder's unet/ weights as one file)
                family = ck.diffusers_unet_family(sd)
            else:
                family = ck.detect_unet_family(sd)
            if family is None:
                raise ModelFileError(f"{path.name} is not a UNet of a supported family: it looks like "
                                     f"{ck.describe_contents(sd)}")
            sd_holder.update(sd=sd, family=family)
        return sd_holder["sd"], sd_holder["family"]

    def loader():
        sd, family = unet_sd()
        if ck.is_diffusers_unet(sd):
            return ck.build_diffusers_unet(sd, family, dtype)
        return ck.build_unet(sd, family, dtype)[0]

    key = _manager_key(path, "unet", dtype)
    handle = manager.load(key, loader)
    family = sd_holder.get("family") or _family_from_unet_config(handle.get().config)
    spec = ck.family_config(family, "family.json")
    sched = ck.family_config(family, "scheduler.json")
    vae_cfg = ck.family_config(family, "vae.json")
    model = DiffusionModel(handle, family, sched, float(vae_cfg["scaling_factor"]), int(handle.get().config.out_channels),
                           tuple(map(tuple, spec["latent_rgb_factors"])), tuple(spec["latent_rgb_bias"]), source=str(path))
    return with_lotus_settings(model)


def with_lotus_settings(model: DiffusionModel) -> DiffusionModel:
    """A Lotus-D UNet (a 4-wide class embedding, :func:`checkpoint.is_lotus_unet`) gets its task embedding
    on every call and ComfyUI's ``IMG_TO_IMG`` sampling (input unscaled, output the prediction itself);
    any other model is returned as it is."""
    from nodegraph_nodes.diffusion.lotus import LOTUS_DEPTH_TASK, lotus_sampling

    cfg = model.handle.get().config
    if cfg.class_embed_type != "projection" or cfg.projection_class_embeddings_input_dim != ck.LOTUS_TASK_WIDTH:
        return model
    return dataclasses.replace(model, class_labels=LOTUS_DEPTH_TASK, sampling=lotus_sampling(model.scheduler_config))


def _family_from_unet_config(cfg) -> str:
    if cfg.addition_embed_type == "text_time":
        return "sdxl_refiner" if len(cfg.block_out_channels) == 4 else "sdxl"
    return "sd2" if cfg.use_linear_projection else "sd1"


def load_clip_file(path: Path, manager, device: str, models_dir: Path, clip_type: str) -> ClipModel:
    """A standalone text encoder (HF CLIPTextModel layout or SD1 LDM prefix) for CLIPLoader."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    dtype = compute_dtype(device, "unet")
    holder: dict[str, Any] = {}

    def weights():
        if "hf" not in holder:
            sd = read_state_dict(path, allow_pickle=manager.allow_pickle)
            if any(k.startswith(("cond_stage_model.", "conditioner.")) for k in sd):
                sd = convert_ldm_clip_checkpoint(sd)
            open_clip_names = any(".resblocks." in k for k in sd)
            if open_clip_names:
                sd = ck.convert_open_clip({"m." + k: v for k, v in sd.items()}, "m.")
            if not any(k.endswith("token_embedding.weight") for k in sd):
                raise ModelFileError(f"{path.name} is not a CLIP text encoder: it looks like {ck.describe_contents(sd)}")
            holder["hf"] = sd
            holder["drop"] = clip_type == "sd2" and ck.sd2_drops_last_layer(open_clip_names, sd)
        return holder["hf"]

    tokenizer = load_tokenizer(find_tokenizer(models_dir, path))
    family = "sd2" if clip_type == "sd2" else "sd1"
    spec = ck.family_config(family, "family.json")["clip"][0]

    def loader():
        hf = weights()
        template = ck.family_config(family, "text_encoder.json")
        cfg = ck.infer_clip_config(hf, template, drop_last_layer=holder["drop"])  # SD2: its penultimate layer
        cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=_pad_id(spec, tokenizer))
        return ck.build_clip(hf, cfg, dtype, projection="text_projection.weight" in hf)

    handle = manager.load(_manager_key(path, "clip", dtype), loader)
    enc = TextEncoder(handle, tokenizer, spec["key"], spec["layer"], spec["layer_norm_hidden_state"],
                      _pad_id(spec, tokenizer), hasattr(handle.get(), "text_projection"))
    return ClipModel((enc,), family, Path(models_dir) / "embeddings")
