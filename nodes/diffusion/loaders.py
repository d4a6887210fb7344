"""Model loader nodes (ComfyUI names and inputs): checkpoints, VAE, LoRA, text encoders, UNets.

Choices list what is in the models folder now (``Paths.models_dir``: checkpoints/, diffusers/, vae/,
loras/, text_encoders/, diffusion_models/), refreshed on every ask. Weights are loaded through the
engine's model manager (service ``"models"``): once per file, component and dtype. Pickle formats are
refused unless the engine allows them (``--allow-pickle``). See :mod:`nodegraph_nodes.diffusion.components`
for where CLIP tokenizer files are looked for.

``CheckpointLoaderSimple`` also lists the model nodegraph ships, :data:`BUILTIN_SHAPES_GENERATOR` (the
shapes-world text-to-image model of ``nodes/shapes``, a diffusers folder), first, so it is the
choice when a workflow names none.
"""

from __future__ import annotations

import functools

from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import CLIP, MODEL, VAE

from nodegraph_nodes.diffusion.components import (load_checkpoint, load_clip_file, load_unet_file, load_vae_file)
from nodegraph_nodes.diffusion.files import (checkpoint_choices, file_identity, list_model_files, read_state_dict,
                                   resolve_model, ModelFileError)


def _fingerprint(paths: Paths, kind: str, name: str | None, also: tuple[str, ...] = ()) -> Any:
    if not name:
        return None
    try:
        path = resolve_model(paths, kind, name, also=also)
    except ModelFileError:
        return None
    return _path_identity(path)


def _path_identity(path: Path) -> Any:
    """Changes when the file, or any file in the folder, is replaced."""
    if path.is_dir():
        return (str(path), max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0))
    return file_identity(path)


#: The shapes-world text-to-image model shipped with nodegraph, listed when its weights exist.
BUILTIN_SHAPES_GENERATOR = "shapes-world (built-in)"


def _shapes_generator_folder() -> Path:
    from nodegraph_nodes.shapes.generator import DEFAULT_FOLDER

    return DEFAULT_FOLDER


def _ckpt_choices(paths: Paths) -> list[str]:
    builtin = [BUILTIN_SHAPES_GENERATOR] if (_shapes_generator_folder() / "model_index.json").is_file() else []
    return builtin + checkpoint_choices(paths)


def _resolve_checkpoint(paths: Paths, name: str) -> Path:
    if name == BUILTIN_SHAPES_GENERATOR:
        folder = _shapes_generator_folder()
        if not (folder / "model_index.json").is_file():
            raise ModelFileError(f"the built-in model {name!r} is missing from this install ({folder})")
        return folder
    return resolve_model(paths, "checkpoints", name, also=("diffusers",))


def _vae_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, "vae", diffusers_folders=True)


def _lora_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, "loras")


def _text_encoder_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, "text_encoders")


def _unet_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, "diffusion_models") + [
        n for n in list_model_files(paths, "unet") if n not in list_model_files(paths, "diffusion_models")]


class CheckpointLoaderSimple(Node):
    """Loads a checkpoint: a single file (SD 1.x / 2.x / SDXL; SD3 / SD3.5 / Flux.1 all-in-one files, whose
    CLIP output is None when the file holds no text encoders) or a diffusers folder."""

    category = "loaders"
    display_name = "Load Checkpoint"
    ckpt_name = Input(COMBO, choices=_ckpt_choices, default=BUILTIN_SHAPES_GENERATOR,
                      tooltip="The checkpoint (model) to load.")
    outputs = (Output(MODEL), Output(CLIP), Output(VAE))

    @classmethod
    def fingerprint(cls, paths: Paths, ckpt_name: str | None = None, **_: Any) -> Any:
        if ckpt_name == BUILTIN_SHAPES_GENERATOR:
            return _path_identity(_shapes_generator_folder())
        return _fingerprint(paths, "checkpoints", ckpt_name, also=("diffusers",))

    def execute(self, ckpt_name: str) -> tuple:
        paths = self.ctx.paths
        path = _resolve_checkpoint(paths, ckpt_name)
        manager = self.ctx.service("models")
        from nodegraph_nodes.dit import llm_loading
        from nodegraph_nodes.dit.loading import is_flow_checkpoint, load_flow_any

        from nodegraph_nodes.dit import wan

        if path.is_dir() and wan.is_wan_folder(path):  # WanPipeline folders
            return wan.load_diffusers_folder(path, manager, self.ctx.device)
        from nodegraph_nodes.dit import chroma

        if path.is_dir() and chroma.is_chroma_folder(path):  # ChromaPipeline folders
            return chroma.load_diffusers_folder(path, manager, self.ctx.device, Path(paths.models_dir))
        from nodegraph_nodes.dit import lumina2

        if path.is_dir() and lumina2.is_lumina2_folder(path):  # Lumina2Pipeline folders
            return lumina2.load_diffusers_folder(path, manager, self.ctx.device, Path(paths.models_dir))
        if path.is_file() and path.suffix.lower() in (".safetensors", ".sft"):
            from nodegraph_nodes.dit.loading import file_keys
            from nodegraph_nodes.mask import sam3_loading

            keys = file_keys(path, manager.allow_pickle)  # the header, read once for the checks below
            if sam3_loading.is_checkpoint(keys):  # SAM 3 / 3.1 (detector, its CLIP)
                return sam3_loading.load_checkpoint(path, manager, self.ctx.device, Path(paths.models_dir))
            if lumina2.is_checkpoint(keys):  # Lumina 2 all-in-one
                return lumina2.load_checkpoint(path, manager, self.ctx.device, Path(paths.models_dir))
            from nodegraph_nodes.dit import hidream_o1_loading

            if hidream_o1_loading.is_checkpoint(keys):  # HiDream-O1 all-in-one
                return hidream_o1_loading.load_checkpoint(path, manager, self.ctx.device, Path(paths.models_dir))
            from nodegraph_nodes.dit import ltx2

            if ltx2.is_checkpoint(keys):  # LTX-2 all-in-one (CLIP: None)
                return ltx2.load_checkpoint(path, manager, self.ctx.device, Path(paths.models_dir))
            from nodegraph_nodes.dit import audio_loading

            loaded = audio_loading.load_checkpoint(path, manager, self.ctx.device, Path(paths.models_dir))
            if loaded is not None:  # Stable Audio, ACE-Step 1.5 (nodegraph_nodes.dit.audio_loading)
                return loaded
        from nodegraph_nodes.dit import flux2_loading

        from nodegraph_nodes.dit import hidream_folder

        if hidream_folder.is_hidream_folder(path):  # HiDreamImagePipeline folders
            return hidream_folder.load_diffusers_folder(path, manager, self.ctx.device, Path(paths.models_dir))
        if path.is_dir() and flux2_loading.is_diffusers_flux2(path):  # Flux2Pipeline folders
            return flux2_loading.load_diffusers_folder(path, manager, self.ctx.device)
        from nodegraph_nodes.dit import qwen_image21_folder

        if qwen_image21_folder.is_folder(path):  # QwenImage21Pipeline folders
            return qwen_image21_folder.load_diffusers_folder(path, manager, self.ctx.device)
        from nodegraph_nodes.dit import flux3_folder

        if flux3_folder.is_folder(path):  # FLUX.3 (modular) pipeline folders
            return flux3_folder.load_diffusers_folder(path, manager, self.ctx.device)
        if path.is_dir() and llm_loading.diffusers_family(path) is not None:  # Qwen-Image, Z-Image folders
            return llm_loading.load_diffusers_folder(path, self.ctx.service("models"), self.ctx.device,
                                                     Path(paths.models_dir))
        if is_flow_checkpoint(path, manager.allow_pickle):
            return load_flow_any(path, manager, self.ctx.device, Path(paths.models_dir))
        return load_checkpoint(path, manager, self.ctx.device, Path(paths.models_dir))


class VAELoader(Node):
    """Loads a VAE (a VAE file, the VAE inside a checkpoint, or a diffusers VAE folder)."""

    category = "loaders"
    display_name = "Load VAE"
    vae_name = Input(COMBO, choices=_vae_choices)
    outputs = (Output(VAE),)

    @classmethod
    def fingerprint(cls, paths: Paths, vae_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, "vae", vae_name)

    def execute(self, vae_name: str) -> tuple:
        path = resolve_model(self.ctx.paths, "vae", vae_name)
        from nodegraph_nodes.dit import llm_loading

        manager = self.ctx.service("models")
        from nodegraph_nodes.dit import flux2_loading

        from nodegraph_nodes.dit import audio_loading

        if (audio_vae := audio_loading.load_vae(path, manager, self.ctx.device)) is not None:
            return (audio_vae,)  # Stable Audio's / ACE-Step 1.5's Oobleck (nodegraph_nodes.dit.audio_loading)
        from nodegraph_nodes.dit import qwen_image21

        if qwen_image21.is_vae_file(path, manager.allow_pickle):  # Qwen-Image 2.1's RGBA VAE
            return (qwen_image21.load_vae(path, manager, self.ctx.device),)
        if flux2_loading.is_vae_file(path, manager.allow_pickle):  # Flux.2's VAE (with its bn statistics)
            return (flux2_loading.load_vae(path, manager, self.ctx.device),)
        from nodegraph_nodes.dit import wan22_5b

        if wan22_5b.is_vae_file(path, manager.allow_pickle):  # Wan 2.2's 48-channel VAE (before Wan 2.1's check)
            return (wan22_5b.load_vae(path, manager, self.ctx.device),)
        if llm_loading.is_vae_file(path, manager.allow_pickle):  # Qwen-Image's (Wan 2.1) VAE
            return (llm_loading.load_vae(path, manager, self.ctx.device),)
        from nodegraph_nodes.dit import hunyuan_video15

        if hunyuan_video15.is_vae_file(path, manager.allow_pickle):  # HunyuanVideo 1.5's 32-channel VAE
            return (hunyuan_video15.load_vae(path, manager, self.ctx.device),)
        return (load_vae_file(path, manager, self.ctx.device),)


@contextmanager
def _named_errors(where: str):
    """A model-file error raised inside, with the node and input it concerns in front."""
    try:
        yield
    except ModelFileError as exc:
        raise ModelFileError(f"{where}: {exc}") from exc


def _read_lora(ctx, name: str) -> dict:
    from nodegraph_nodes.diffusion.lora import count_lora_keys

    path = resolve_model(ctx.paths, "loras", name)
    sd = read_state_dict(path, allow_pickle=ctx.service("models").allow_pickle)
    if not count_lora_keys(sd):
        from nodegraph_nodes.diffusion.checkpoint import describe_contents

        raise ModelFileError(f"{name} is not a LoRA (no lora_up/lora_down weights): it looks like "
                             f"{describe_contents(sd)}")
    return sd


def _patch_model(ctx, model, sd: dict, name: str, strength: float):
    from nodegraph_nodes.diffusion.lora import UNET_PREFIXES, lora_patch

    """The patched model, the number of weights patched and the LoRA keys not applied."""
    from nodegraph_nodes.diffusion.lora_report import unread_forms

    own = getattr(model, "lora_patch", None)
    if own is not None:  # a family with its own key layouts (SD3 / Flux: nodegraph_nodes.dit.lora)
        patch = own(sd, strength, name)
        return model.with_patch(patch), len(patch.deltas), list(patch.unmatched) + unread_forms(sd, text=False)
    if not hasattr(model, "with_patch"):
        raise ModelFileError(f"LoRA {name}: LoRAs for {getattr(model, 'family', type(model).__name__)} models are "
                             "not supported")

    unet = model.handle.get()
    patch = lora_patch(sd, unet, UNET_PREFIXES, strength, name, style="unet")
    return model.with_patch(patch), len(patch.deltas), list(patch.unmatched) + unread_forms(sd, text=False)


def _patch_clip(ctx, clip, sd: dict, name: str, strength: float):
    """The patched CLIP, the number of weights patched and the LoRA's text-encoder keys not applied (those
    of no encoder this CLIP has, e.g. an LLM encoder's, included)."""
    from nodegraph_nodes.diffusion.lora import TE_PREFIXES, TEXT_KEY_STARTS, _group, lora_patch
    from nodegraph_nodes.diffusion.lora_report import unread_forms

    total, unmatched, covered = 0, [], ()
    for index, enc in enumerate(clip.encoders):
        prefixes = TE_PREFIXES[index] if len(clip.encoders) > 1 else TE_PREFIXES[0]
        if len(clip.encoders) == 1 and clip.family == "sdxl_refiner":
            prefixes = TE_PREFIXES[1]
        patch = lora_patch(sd, enc.handle.get(), prefixes, strength, name, style="text")
        covered += tuple(prefixes)
        unmatched += patch.unmatched
        if patch.deltas:
            clip = clip.with_patch(index, patch)
            total += len(patch.deltas)
    unmatched += [k for k in _group(sd) if k.startswith(TEXT_KEY_STARTS) and not k.startswith(covered)]
    unmatched += [k for k in unread_forms(sd, text=True) if k.startswith(TEXT_KEY_STARTS)]
    return clip, total, unmatched


class LoraLoader(Node):
    """Applies a LoRA to the diffusion model and the text encoder, each with its own strength."""

    category = "loaders"
    display_name = "Load LoRA"
    model = Input(MODEL)
    clip = Input(CLIP)
    lora_name = Input(COMBO, choices=_lora_choices)
    strength_model = Input(FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01)
    strength_clip = Input(FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01)
    outputs = (Output(MODEL), Output(CLIP))

    @classmethod
    def fingerprint(cls, paths: Paths, lora_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, "loras", lora_name)

    def execute(self, model, clip, lora_name: str, strength_model: float, strength_clip: float) -> tuple:
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        from nodegraph_nodes.diffusion.lora_report import warn_unmatched

        with _named_errors("LoraLoader.lora_name"):
            sd = _read_lora(self.ctx, lora_name)
            new_model, n_model, model_left = _patch_model(self.ctx, model, sd, lora_name, strength_model)
            new_clip, n_clip, clip_left = _patch_clip(self.ctx, clip, sd, lora_name, strength_clip)
            if n_model + n_clip == 0:
                raise ModelFileError(f"LoRA {lora_name} has no weights matching this model's or text encoder's "
                                     f"layers (e.g. {(model_left + clip_left or list(sd))[0]}); it was made for "
                                     "another model family")
        warn_unmatched(self.ctx, lora_name,
                       (model_left if strength_model else []) + (clip_left if strength_clip else []))
        return new_model, new_clip


class LoraLoaderModelOnly(Node):
    """Applies a LoRA to the diffusion model only."""

    category = "loaders"
    model = Input(MODEL)
    lora_name = Input(COMBO, choices=_lora_choices)
    strength_model = Input(FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01)
    outputs = (Output(MODEL),)

    @classmethod
    def fingerprint(cls, paths: Paths, lora_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, "loras", lora_name)

    def execute(self, model, lora_name: str, strength_model: float) -> tuple:
        if strength_model == 0:
            return (model,)
        from nodegraph_nodes.diffusion.lora_report import warn_unmatched

        with _named_errors("LoraLoaderModelOnly.lora_name"):
            sd = _read_lora(self.ctx, lora_name)
            new_model, n, left = _patch_model(self.ctx, model, sd, lora_name, strength_model)
            if n == 0:
                raise ModelFileError(f"LoRA {lora_name} has no weights matching this diffusion model's layers "
                                     f"(e.g. {(left or list(sd))[0]}); it was made for another model")
        warn_unmatched(self.ctx, lora_name, left)
        return (new_model,)


#: ComfyUI's CLIPLoader types in its order (nodes.py, Comfy-Org/ComfyUI 02217e3), then the newer ones the
#: official templates (comfyui-workflow-templates-json 0.1.123) save (``moss_image``, ``fibo2``, ``flux3``:
#: their place in ComfyUI's list is not known here), then nodegraph's ``sd2`` (OpenCLIP-H for SD 2.x).
#: Types outside LOADED_CLIP_TYPES validate and fail at run time with an error naming the type.
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
              "longcat_image", "cogvideox", "lens", "pixeldit", "ideogram4", "boogu", "krea2", "joyimage", "mage",
              "minimax", "yue2", "moss_image", "fibo2", "flux3", "sd2"]
LOADED_CLIP_TYPES = ("stable_diffusion", "sd2", "sd3", "qwen_image", "lumina2", "flux2", "wan", "chroma", "hidream",
                     "stable_audio", "flux3")
#: Types nodegraph does not load whose Qwen3 files ComfyUI loads as Z-Image's Qwen3 encoder (its ``sd.py``:
#: a Qwen3-4B file is Flux.2 Klein's under flux/flux2, Z-Image's under any other type of its list then), e.g.
#: the ``llm_qwen3_text_gen`` template's ``ltxv`` for TextGenerate. Newer families' types are not assumed.
QWEN3_FALLBACK_TYPES = ("stable_cascade", "mochi", "ltxv", "pixart", "cosmos", "ace", "omnigen2", "hunyuan_image")


class CLIPLoader(Node):
    """Loads a standalone text encoder from models/text_encoders: ``stable_diffusion`` (CLIP-L), ``sd2``
    (OpenCLIP-H), ``sd3`` (one of CLIP-L, CLIP-G, T5-XXL; the others' parts of the conditioning are zeros),
    ``qwen_image`` (Qwen2.5-VL, Qwen-Image's), ``lumina2`` with a Gemma 2 file (Lumina 2's) or a Qwen3 file (Z-Image's), ``wan`` (UMT5-XXL), ``chroma`` (T5-XXL), ``stable_audio`` (T5-base),
    ``flux2`` (Mistral Small 3, Flux.2 dev's; a Qwen3 file: Flux.2 Klein's), ``hidream`` (one of HiDream's four
    encoders; the others' parts are zeros as in ComfyUI), ``flux3`` (Qwen3-VL, FLUX.3's). A Qwen 3.5 file
    loads under any type, for TextGenerate (ComfyUI tells it by its keys). The other types of ComfyUI's list are refused with a clear error until their families load."""

    category = "advanced/loaders"
    display_name = "Load CLIP"
    clip_name = Input(COMBO, choices=_text_encoder_choices)
    type = Input(COMBO, choices=CLIP_TYPES)
    device = Input(COMBO, choices=["default", "cpu"], optional=True, default="default")
    outputs = (Output(CLIP),)

    @classmethod
    def fingerprint(cls, paths: Paths, clip_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, "text_encoders", clip_name)

    def execute(self, clip_name: str, type: str, device: str = "default") -> tuple:
        path = resolve_model(self.ctx.paths, "text_encoders", clip_name)
        from nodegraph_nodes.dit.loading import file_keys

        # the file's tensor names, read at most once for the checks below
        keys = functools.cache(lambda: file_keys(path, self.ctx.service("models").allow_pickle))
        if path.is_file() and path.suffix.lower() in (".safetensors", ".sft"):  # Qwen 3.5, by its keys, any type
            from nodegraph_nodes.dit import qwen35_text

            if qwen35_text.is_qwen35(keys()):
                target = "cpu" if device == "cpu" else self.ctx.device
                return (qwen35_text.load_text_encoder(path, self.ctx.service("models"), target,
                                                      Path(self.ctx.paths.models_dir)),)
        if type == "qwen_image" and path.is_file():  # Qwen3-VL: Qwen-Image 2.1's encoder
            from nodegraph_nodes.dit import qwen_image21_text

            if qwen_image21_text.is_qwen3vl(keys()):
                target = "cpu" if device == "cpu" else self.ctx.device
                return (qwen_image21_text.load_text_encoder(path, self.ctx.service("models"), target,
                                                            Path(self.ctx.paths.models_dir)),)
        if type in QWEN3_FALLBACK_TYPES and path.is_file():
            from nodegraph_nodes.dit.llm_loading import encoder_kind

            if encoder_kind(keys()) == "qwen3":
                type = "lumina2"  # ComfyUI: a Qwen3 file under a type without a Qwen3 recipe is Z-Image's encoder
        if type not in LOADED_CLIP_TYPES:
            raise ValueError(f"CLIPLoader.type: {type!r} is not supported yet; nodegraph loads "
                             f"{', '.join(LOADED_CLIP_TYPES)} (Flux: DualCLIPLoader type flux)")
        target = "cpu" if device == "cpu" else self.ctx.device
        if type == "hidream":  # one of CLIP-L/G, T5-XXL, Llama 3.1 (nodegraph_nodes.dit.hidream_text)
            from nodegraph_nodes.dit.hidream_text import load_clip as load_hidream_clip

            return (load_hidream_clip([path], self.ctx.service("models"), target, Path(self.ctx.paths.models_dir),
                                      "CLIPLoader"),)
        if type == "stable_audio":  # T5-base (nodegraph_nodes.dit.stable_audio)
            from nodegraph_nodes.dit.stable_audio import load_text_encoder as load_t5_base

            return (load_t5_base(path, self.ctx.service("models"), target, Path(self.ctx.paths.models_dir)),)
        if type == "wan":  # UMT5-XXL
            from nodegraph_nodes.dit.wan import load_text_encoder as load_umt5

            return (load_umt5(path, self.ctx.service("models"), target, Path(self.ctx.paths.models_dir)),)
        if type == "chroma":  # T5-XXL (nodegraph_nodes.dit.chroma)
            from nodegraph_nodes.dit.chroma import load_text_encoder as load_chroma_t5

            return (load_chroma_t5(path, self.ctx.service("models"), target, Path(self.ctx.paths.models_dir)),)
        if type == "flux3":  # Qwen3-VL (FLUX.3, nodegraph_nodes.dit.flux3)
            from nodegraph_nodes.dit import flux3

            return (flux3.load_text_encoder(path, self.ctx.service("models"), target,
                                            Path(self.ctx.paths.models_dir)),)
        if type == "flux2":  # Mistral (Flux.2)
            from nodegraph_nodes.dit import flux2_loading

            return (flux2_loading.load_text_encoder(path, self.ctx.service("models"), target,
                                                    Path(self.ctx.paths.models_dir), "CLIPLoader"),)
        if type == "lumina2" and path.is_file():  # Gemma 2 (Lumina 2); a Qwen3 file goes on to Z-Image's
            from nodegraph_nodes.dit import lumina2

            if lumina2.is_gemma2(keys()):
                return (lumina2.load_text_encoder(path, self.ctx.service("models"), target,
                                                  Path(self.ctx.paths.models_dir)),)
        if type in ("qwen_image", "lumina2"):  # Qwen2.5-VL (Qwen-Image), Qwen3 (Z-Image)
            from nodegraph_nodes.dit.llm_loading import load_text_encoder

            return (load_text_encoder(path, type, self.ctx.service("models"), target,
                                      Path(self.ctx.paths.models_dir), "CLIPLoader"),)
        if type == "sd3":
            from nodegraph_nodes.dit.loading import load_text_encoders

            return (load_text_encoders([path], "sd3", self.ctx.service("models"), target,
                                       Path(self.ctx.paths.models_dir), "CLIPLoader"),)
        return (load_clip_file(path, self.ctx.service("models"), target, Path(self.ctx.paths.models_dir), type),)


class UNETLoader(Node):
    """Loads a bare diffusion model from models/diffusion_models: an SD UNet (LDM layout), or an SD3 /
    SD3.5 / Flux.1 transformer (original layouts, detected from the keys). ``weight_dtype`` fp8: the
    transformer's weights are stored in fp8 on GPUs (computed in bf16) and rounded through fp8 on the CPU
    (computed in fp32); SD UNets take ``default`` only (an error otherwise, where ComfyUI would cast)."""

    category = "advanced/loaders"
    display_name = "Load Diffusion Model"
    unet_name = Input(COMBO, choices=_unet_choices)
    weight_dtype = Input(COMBO, choices=["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])
    outputs = (Output(MODEL),)

    @classmethod
    def fingerprint(cls, paths: Paths, unet_name: str | None = None, **_: Any) -> Any:
        return _fingerprint(paths, "diffusion_models", unet_name, also=("unet",))

    def execute(self, unet_name: str, weight_dtype: str = "default") -> tuple:
        path = resolve_model(self.ctx.paths, "diffusion_models", unet_name, also=("unet",))
        manager = self.ctx.service("models")
        from nodegraph_nodes.dit import llm_loading
        from nodegraph_nodes.dit.loading import file_keys, is_flow_transformer, load_transformer_file

        keys = file_keys(path, manager.allow_pickle) if path.is_file() else []
        from nodegraph_nodes.dit import wan, wan_dancer

        if (prefix := wan_dancer.detect_prefix(keys)) is not None:  # Wan-Dancer (before Wan 2.1: the same names)
            return (wan_dancer.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)

        from nodegraph_nodes.dit import hidream

        if (prefix := hidream.detect_prefix(keys)) is not None:  # HiDream I1
            return (hidream.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import hunyuan_video15

        if (prefix := hunyuan_video15.detect_transformer(keys)) is not None:  # HunyuanVideo 1.5
            return (hunyuan_video15.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import wan_animate2, wan_s2v

        if (prefix := wan_animate2.detect_prefix(keys, path)) is not None:  # Wan Animate 2 (metadata / wrapped)
            return (wan_animate2.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        if (prefix := wan_s2v.detect_prefix(keys)) is not None:  # Wan 2.2 S2V (before Wan 2.1: the same names)
            return (wan_s2v.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        if wan.detect_transformer(keys) is not None:  # Wan 2.1
            return (wan.load_transformer(path, keys, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import ltx2

        if (prefix := ltx2.detect_transformer(keys)) is not None:  # LTX-2 (transformer-only files)
            return (ltx2.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import audio_loading

        audio_model = audio_loading.load_transformer(path, keys, manager, self.ctx.device, weight_dtype)
        if audio_model is not None:  # ACE-Step 1.5 (nodegraph_nodes.dit.audio_loading)
            return (audio_model,)
        from nodegraph_nodes.dit import chroma

        if chroma.detect_prefix(keys) is not None:  # Chroma (before Flux: the same block names)
            return (chroma.load_transformer(path, keys, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import lumina2

        if lumina2.detect_prefix(keys) is not None:  # Lumina 2 (NextDiT without Z-Image's pad tokens)
            return (lumina2.load_transformer(path, keys, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import flux2_loading

        if flux2_loading.detect_transformer(keys) is not None:  # Flux.2
            return (flux2_loading.load_transformer(path, keys, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import flux3

        if (prefix := flux3.detect_prefix(keys)) is not None:  # FLUX.3
            return (flux3.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        from nodegraph_nodes.dit import qwen_image21

        if (prefix := qwen_image21.detect_prefix(keys)) is not None:  # Qwen-Image 2.1
            return (qwen_image21.load_transformer(path, prefix, manager, self.ctx.device, weight_dtype),)
        if llm_loading.detect_transformer(keys) is not None:  # Qwen-Image, Z-Image
            return (llm_loading.load_transformer(path, keys, manager, self.ctx.device, weight_dtype),)
        if is_flow_transformer(path, manager.allow_pickle):
            return (load_transformer_file(path, manager, self.ctx.device, weight_dtype),)
        if weight_dtype != "default":
            raise ValueError(f"UNETLoader.weight_dtype: {weight_dtype} is offered for SD3/Flux transformers; "
                             f"{unet_name} is an SD UNet, load it with 'default'")
        return (load_unet_file(path, manager, self.ctx.device),)


class CLIPSetLastLayer(Node):
    """Uses the hidden state of an earlier CLIP layer (-1 = last, -2 = penultimate: 'clip skip')."""

    category = "conditioning"
    display_name = "CLIP Set Last Layer"
    clip = Input(CLIP)
    stop_at_clip_layer = Input(INT, default=-1, min=-24, max=-1, step=1)
    outputs = (Output(CLIP),)

    def execute(self, clip, stop_at_clip_layer: int) -> tuple:
        return (clip.with_layer(stop_at_clip_layer),)
