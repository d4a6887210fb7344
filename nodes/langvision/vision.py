"""Vision-understanding nodes: captioning, visual question answering, CLIP vision and CLIP scoring.

* CaptionerLoader (``models/captioners/<folder>``): BLIP (``BlipForConditionalGeneration`` /
  ``BlipForQuestionAnswering``) or ``VisionEncoderDecoderModel`` folders → CAPTIONER.
  ImageCaption writes one caption per image (a list); VQA answers a question about each image.
* CLIPVisionLoader / CLIPVisionEncode (ComfyUI's names): a CLIP vision tower from ``models/clip_vision``
  (a transformers folder, or one ``.safetensors`` file in ComfyUI's key layout) → CLIP_VISION, and its
  output for an image → CLIP_VISION_OUTPUT (``image_embeds``, ``last_hidden_state``,
  ``penultimate_hidden_states``).
* CLIPModelLoader (a full ``CLIPModel`` folder in ``models/clip_vision``) → CLIP_MODEL; ImageTextScore
  gives CLIP similarity (100 × cosine) per image; RankImages orders images by it and keeps the best k.

Images are preprocessed as tensors (resize, center crop, normalise with the folder's
``preprocessor_config.json``), so nothing round-trips through PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph.context import Paths
from nodegraph.node import Input, Node, Output
from nodegraph.types import BOOLEAN, COMBO, FLOAT, IMAGE, INT, STRING

from nodegraph.value_checks import check_image, check_text, validate_text
from nodegraph_nodes.langvision import siglip
from nodegraph_nodes.langvision.common import (LOAD_LOCK, DTYPE_CHOICES, ModelFolderError, folder_fingerprint,
                                image_settings, list_model_folders, load_tokenizer, manager_key, pick_dtype,
                                preprocess, read_config, resolve_model_path)

CAPTIONER = "CAPTIONER"
CLIP_VISION = "CLIP_VISION"
CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
CLIP_MODEL = "CLIP_MODEL"

CAPTION_ARCHS = {"BlipForConditionalGeneration": "blip_caption", "BlipForQuestionAnswering": "blip_vqa",
                 "VisionEncoderDecoderModel": "vision_encoder_decoder"}


@dataclass(frozen=True, eq=False)
class VisionTextModel(ManagerOwned):
    """CAPTIONER: a captioning or VQA model with its tokenizer and image settings."""

    handle: Any
    tokenizer: Any
    kind: str  # blip_caption / blip_vqa / vision_encoder_decoder / shapes_world
    settings: dict
    name: str
    dtype: torch.dtype


@dataclass(frozen=True, eq=False)
class ClipVision(ManagerOwned):
    """CLIP_VISION: a ``CLIPVisionModelWithProjection`` and its image settings."""

    handle: Any
    settings: dict
    name: str
    dtype: torch.dtype


@dataclass(frozen=True, eq=False)
class ClipFull(ManagerOwned):
    """CLIP_MODEL: a ``CLIPModel`` (both towers) with its tokenizer and image settings."""

    handle: Any
    tokenizer: Any
    settings: dict
    name: str
    dtype: torch.dtype
    max_length: int


@dataclass
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT, as ComfyUI's: attributes, also readable as ``output["image_embeds"]``."""

    image_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    penultimate_hidden_states: torch.Tensor
    image_sizes: list | None = None
    #: every layer's output ``[B, layers, tokens, width]`` (SigLIP, as ComfyUI)
    all_hidden_states: torch.Tensor | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


def _features(value: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor in older transformers and a model output in newer ones."""
    if isinstance(value, torch.Tensor):
        return value
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        found = getattr(value, name, None)
        if isinstance(found, torch.Tensor):
            return found
    raise TypeError(f"unexpected CLIP feature output {type(value).__name__}")


def _load_pretrained(cls, folder: Path, dtype: torch.dtype, input_name: str, **extra: Any):
    try:
        with LOAD_LOCK:
            return cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype, **extra).eval()
    except Exception as exc:  # noqa: BLE001
        raise ModelFolderError(f"input '{input_name}': {folder.name} cannot be loaded as {cls.__name__}: "
                               f"{type(exc).__name__}: {exc}") from exc


# -- captioning and VQA -----------------------------------------------------------------------------

#: The shapes-world captioner shipped with nodegraph (nodes/shapes), listed when its weights exist.
BUILTIN_SHAPES_CAPTIONER = "shapes-world (built-in)"


def _shapes_captioner_weights():
    from nodegraph_nodes.shapes.captioner import WEIGHTS

    return WEIGHTS


def captioner_choices(paths: Paths) -> list[str]:
    builtin = [BUILTIN_SHAPES_CAPTIONER] if _shapes_captioner_weights().is_file() else []
    return builtin + list_model_folders(paths, "captioners")


def captioner_kind(config: dict, name: str) -> str:
    for arch in config.get("architectures") or []:
        if arch in CAPTION_ARCHS:
            return CAPTION_ARCHS[arch]
    if config.get("model_type") == "vision-encoder-decoder":
        return "vision_encoder_decoder"
    if config.get("model_type") == "blip":
        return "blip_caption"
    raise ModelFolderError(f"input 'model_name': {name!r} is a {config.get('model_type')!r} model "
                           f"({', '.join(config.get('architectures') or ['no architectures'])}); a captioner "
                           "must be BlipForConditionalGeneration, BlipForQuestionAnswering or "
                           "VisionEncoderDecoderModel")


class CaptionerLoader(Node):
    """Load an image captioning / VQA model (BLIP or vision-encoder-decoder folder in models/captioners)."""

    category = "loaders/vision"
    display_name = "Load Captioner"
    model_name = Input(COMBO, choices=captioner_choices, default=BUILTIN_SHAPES_CAPTIONER)
    dtype = Input(COMBO, choices=DTYPE_CHOICES, default="auto")
    outputs = (Output(CAPTIONER, "captioner"),)

    @classmethod
    def validate_inputs(cls, model_name=None, paths: Paths | None = None, **_: Any) -> bool | str:
        if model_name is None:
            return True
        if model_name == BUILTIN_SHAPES_CAPTIONER:
            return True if _shapes_captioner_weights().is_file() else \
                f"input 'model_name': the built-in captioner's weights are missing ({_shapes_captioner_weights()})"
        try:
            folder = resolve_model_path(paths or Paths(), "captioners", model_name, "model_name")
            captioner_kind(read_config(folder, "model_name"), model_name)
        except ModelFolderError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **_: Any) -> str:
        if model_name == BUILTIN_SHAPES_CAPTIONER:
            stat = _shapes_captioner_weights().stat()
            return f"builtin:{stat.st_size}:{stat.st_mtime_ns}"
        return folder_fingerprint(paths or Paths(), "captioners", model_name or "")

    def execute(self, model_name: str, dtype: str = "auto") -> tuple:
        if model_name == BUILTIN_SHAPES_CAPTIONER:
            return (self._load_shapes_captioner(),)
        folder = resolve_model_path(self.ctx.paths, "captioners", model_name, "model_name")
        config = read_config(folder, "model_name")
        kind = captioner_kind(config, model_name)
        torch_dtype = pick_dtype(self.ctx.device, dtype)
        tokenizer = load_tokenizer(folder, "model_name")

        def loader():
            import transformers

            cls = {"blip_caption": transformers.BlipForConditionalGeneration,
                   "blip_vqa": transformers.BlipForQuestionAnswering,
                   "vision_encoder_decoder": transformers.VisionEncoderDecoderModel}[kind]
            return _load_pretrained(cls, folder, torch_dtype, "model_name")

        manager = self.ctx.service("models")
        entry = manager.load(manager_key(folder, kind, torch_dtype), loader)
        return (VisionTextModel(entry, tokenizer, kind, image_settings(folder, config, 384), model_name,
                                torch_dtype),)

    def _load_shapes_captioner(self) -> VisionTextModel:
        """The shapes-world CNN captioner: predicts the scene and writes its canonical caption."""
        from nodegraph_nodes.shapes.captioner import load_captioner

        weights = _shapes_captioner_weights()
        stat = weights.stat()
        entry = self.ctx.service("models").load(("shapes-captioner", str(weights), stat.st_size, stat.st_mtime_ns),
                                                lambda: load_captioner(weights))
        return VisionTextModel(entry, None, "shapes_world", {}, BUILTIN_SHAPES_CAPTIONER, torch.float32)


def _pixels(model: VisionTextModel | ClipVision | ClipFull, image: torch.Tensor, device, crop: bool = True):
    s = model.settings
    return preprocess(image, s["size"], s["mean"], s["std"], crop=crop, device=device, dtype=model.dtype)


class ImageCaption(Node):
    """Describe each image in words (one caption per image, as a list)."""

    category = "vision"
    captioner = Input(CAPTIONER)
    image = Input(IMAGE)
    prefix = Input(STRING, default="", tooltip="Optional start of the caption (BLIP conditional captioning).")
    max_tokens = Input(INT, default=30, min=1, max=512)
    num_beams = Input(INT, default=1, min=1, max=16)
    outputs = (Output(STRING, "captions", is_list=True),)

    @classmethod
    def validate_inputs(cls, prefix=None, **_: Any) -> bool | str:
        return validate_text(prefix, "prefix", allow_empty=True, max_chars=2000)

    @torch.inference_mode()
    def execute(self, captioner: VisionTextModel, image, prefix="", max_tokens=30, num_beams=1) -> tuple:
        image = check_image(image, "image")
        check_text(prefix, "prefix", allow_empty=True, max_chars=2000)
        if captioner.kind == "blip_vqa":
            raise ValueError(f"input 'captioner': {captioner.name!r} is a VQA model; load a captioning model "
                             "(BlipForConditionalGeneration or VisionEncoderDecoderModel) for ImageCaption")
        manager = self.ctx.service("models")
        if captioner.kind == "shapes_world":
            from nodegraph_nodes.shapes.captioner import caption_images

            with manager.use(captioner.handle) as model:
                return ([p.caption for p in caption_images(model, image)],)
        captions: list[str] = []
        with manager.use(captioner.handle) as model:
            device = next(model.parameters()).device
            for i in range(image.shape[0]):
                self.ctx.progress(i, image.shape[0])
                pixels = _pixels(captioner, image[i:i + 1], device)
                kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, num_beams=num_beams, do_sample=False)
                if captioner.kind == "blip_caption" and prefix.strip():
                    ids = captioner.tokenizer(prefix.strip(), return_tensors="pt")["input_ids"][:, :-1]
                    kwargs["input_ids"] = ids.to(device)
                out = model.generate(pixel_values=pixels, **kwargs)
                text = captioner.tokenizer.decode(out[0], skip_special_tokens=True).strip()
                if captioner.kind == "vision_encoder_decoder" and prefix.strip():
                    text = f"{prefix.strip()} {text}".strip()
                captions.append(" ".join(text.split()))
        self.ctx.progress(image.shape[0], image.shape[0])
        return (captions,)


class VQA(Node):
    """Answer a question about each image (BLIP question answering)."""

    category = "vision"
    captioner = Input(CAPTIONER)
    image = Input(IMAGE)
    question = Input(STRING, default="what is in the picture?", multiline=True)
    max_tokens = Input(INT, default=20, min=1, max=512)
    num_beams = Input(INT, default=1, min=1, max=16)
    outputs = (Output(STRING, "answers", is_list=True),)

    @classmethod
    def validate_inputs(cls, question=None, **_: Any) -> bool | str:
        return validate_text(question, "question", max_chars=2000)

    @torch.inference_mode()
    def execute(self, captioner: VisionTextModel, image, question, max_tokens=20, num_beams=1) -> tuple:
        image = check_image(image, "image")
        check_text(question, "question", max_chars=2000)
        if captioner.kind != "blip_vqa":
            raise ValueError(f"input 'captioner': {captioner.name!r} is a captioning model; VQA needs a "
                             "BlipForQuestionAnswering folder from models/captioners")
        manager = self.ctx.service("models")
        answers: list[str] = []
        with manager.use(captioner.handle) as model:
            device = next(model.parameters()).device
            ids = captioner.tokenizer(question.strip(), return_tensors="pt", truncation=True)["input_ids"].to(device)
            for i in range(image.shape[0]):
                self.ctx.progress(i, image.shape[0])
                out = model.generate(input_ids=ids, pixel_values=_pixels(captioner, image[i:i + 1], device),
                                     max_new_tokens=max_tokens, num_beams=num_beams, do_sample=False)
                answers.append(" ".join(captioner.tokenizer.decode(out[0], skip_special_tokens=True).split()))
        self.ctx.progress(image.shape[0], image.shape[0])
        return (answers,)


# -- CLIP vision --------------------------------------------------------------------------------------

def clip_vision_choices(paths: Paths) -> list[str]:
    return list_model_folders(paths, "clip_vision", files=(".safetensors", ".sft"))


def clip_vision_config_from_weights(sd: dict[str, torch.Tensor]) -> dict:
    """A ``CLIPVisionConfig`` for single-file weights in ComfyUI's (= transformers') key layout."""
    prefix = "vision_model."
    key = prefix + "embeddings.patch_embedding.weight"
    if key not in sd:
        raise ModelFolderError("input 'clip_name': the file has no vision_model.embeddings.patch_embedding.weight; "
                               "it is not a CLIP vision model")
    hidden, _, patch, _ = sd[key].shape
    positions = sd[prefix + "embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(prefix + "encoder.layers."))
    intermediate = sd[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    projection = sd["visual_projection.weight"].shape[0] if "visual_projection.weight" in sd else hidden
    heads = 16 if hidden >= 1024 else max(1, hidden // 64)
    return dict(hidden_size=int(hidden), intermediate_size=int(intermediate), num_hidden_layers=layers,
                num_attention_heads=heads, image_size=int(patch * math.isqrt(positions - 1)),
                patch_size=int(patch), projection_dim=int(projection),
                hidden_act="gelu" if hidden >= 1280 else "quick_gelu", layer_norm_eps=1e-5)


class CLIPVisionLoader(Node):
    """Load a CLIP vision model (models/clip_vision: a transformers folder or one .safetensors file)."""

    category = "loaders"
    display_name = "Load CLIP Vision"
    clip_name = Input(COMBO, choices=clip_vision_choices)
    outputs = (Output(CLIP_VISION),)

    @classmethod
    def fingerprint(cls, clip_name=None, paths: Paths | None = None, **_: Any) -> str:
        return folder_fingerprint(paths or Paths(), "clip_vision", clip_name or "")

    def execute(self, clip_name: str) -> tuple:
        path = resolve_model_path(self.ctx.paths, "clip_vision", clip_name, "clip_name")
        torch_dtype = pick_dtype(self.ctx.device)
        if path.is_dir():
            config = read_config(path, "clip_name")
            settings = image_settings(path, config)

            def loader():
                from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

                extra = {}
                if config.get("model_type") == "clip":  # a full CLIPModel folder: take its vision tower
                    vision = {k: v for k, v in (config.get("vision_config") or {}).items()
                              if k not in ("model_type", "transformers_version", "architectures")}
                    vision["projection_dim"] = config.get("projection_dim", vision.get("projection_dim", 512))
                    extra["config"] = CLIPVisionConfig(**vision)
                return _load_pretrained(CLIPVisionModelWithProjection, path, torch_dtype, "clip_name", **extra)
        else:
            from safetensors.torch import load_file

            if path.suffix.lower() not in (".safetensors", ".sft"):
                raise ModelFolderError(f"input 'clip_name': {clip_name!r} is not a .safetensors file or a folder")
            sd = load_file(str(path))
            if siglip.is_siglip(sd.keys()):  # Flux Redux's SigLIP (nodegraph_nodes.langvision.siglip)
                cfg = siglip.siglip_config(sd)
                settings = siglip.settings(cfg)

                def loader():
                    return siglip.build_siglip(load_file(str(path)), cfg, torch_dtype, clip_name, LOAD_LOCK)
            else:
                cfg = clip_vision_config_from_weights(sd)
                settings = image_settings(None, {"image_size": cfg["image_size"]})
                loader = _clip_file_loader(path, cfg, torch_dtype, clip_name)
        manager = self.ctx.service("models")
        entry = manager.load(manager_key(path, "clip_vision", torch_dtype), loader)
        return (ClipVision(entry, settings, clip_name, torch_dtype),)


def _clip_file_loader(path: Path, cfg: dict, torch_dtype: torch.dtype, clip_name: str):
    """The manager loader of a CLIP vision single file (transformers' key layout)."""
    from safetensors.torch import load_file

    def loader():
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        with LOAD_LOCK:
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
        state = load_file(str(path))
        if "visual_projection.weight" not in state:
            state["visual_projection.weight"] = torch.eye(cfg["hidden_size"])
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "position_ids" not in k]
        if missing:
            raise ModelFolderError(f"input 'clip_name': {clip_name!r} lacks weights {missing[:5]}")
        return model.to(torch_dtype).eval()
    return loader


def encode_clip_vision(clip_vision: ClipVision, manager: Any, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
    with torch.inference_mode(), manager.use(clip_vision.handle) as model:
        device = next(model.parameters()).device
        if siglip.is_siglip_model(model):
            return siglip.encode(model, _pixels(clip_vision, image, device, crop))
        out = model(pixel_values=_pixels(clip_vision, image, device, crop), output_hidden_states=True)
        return ClipVisionOutput(image_embeds=out.image_embeds.float().cpu(),
                                last_hidden_state=out.last_hidden_state.float().cpu(),
                                penultimate_hidden_states=out.hidden_states[-2].float().cpu())


class CLIPVisionEncode(Node):
    """Encode images with a CLIP vision model (embeddings for unCLIP, IP-Adapter, style fusion)."""

    category = "conditioning"
    clip_vision = Input(CLIP_VISION)
    image = Input(IMAGE)
    crop = Input(COMBO, choices=["center", "none"], default="center")
    outputs = (Output(CLIP_VISION_OUTPUT),)

    def execute(self, clip_vision: ClipVision, image, crop="center") -> tuple:
        image = check_image(image, "image")
        return (encode_clip_vision(clip_vision, self.ctx.service("models"), image, crop == "center"),)


# -- CLIP scoring -------------------------------------------------------------------------------------

def clip_model_choices(paths: Paths) -> list[str]:
    return list_model_folders(paths, "clip_vision")


class CLIPModelLoader(Node):
    """Load a full CLIP model (image and text towers; a CLIPModel folder in models/clip_vision) for scoring."""

    category = "loaders/vision"
    display_name = "Load CLIP Model (scoring)"
    model_name = Input(COMBO, choices=clip_model_choices)
    outputs = (Output(CLIP_MODEL, "clip_model"),)

    @classmethod
    def validate_inputs(cls, model_name=None, paths: Paths | None = None, **_: Any) -> bool | str:
        if model_name is None:
            return True
        try:
            folder = resolve_model_path(paths or Paths(), "clip_vision", model_name, "model_name")
            config = read_config(folder, "model_name")
        except ModelFolderError as exc:
            return str(exc)
        if config.get("model_type") != "clip":
            return (f"input 'model_name': {model_name!r} is a {config.get('model_type')!r} model; scoring "
                    "needs a full CLIPModel folder (text and vision towers)")
        return True

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **_: Any) -> str:
        return folder_fingerprint(paths or Paths(), "clip_vision", model_name or "")

    def execute(self, model_name: str) -> tuple:
        folder = resolve_model_path(self.ctx.paths, "clip_vision", model_name, "model_name")
        config = read_config(folder, "model_name")
        torch_dtype = pick_dtype(self.ctx.device)
        tokenizer = load_tokenizer(folder, "model_name")

        def loader():
            from transformers import CLIPModel

            return _load_pretrained(CLIPModel, folder, torch_dtype, "model_name")

        entry = self.ctx.service("models").load(manager_key(folder, "clip", torch_dtype), loader)
        max_length = int((config.get("text_config") or {}).get("max_position_embeddings", 77))
        return (ClipFull(entry, tokenizer, image_settings(folder, config), model_name, torch_dtype, max_length),)


def clip_scores(clip: ClipFull, manager: Any, images: torch.Tensor, text: str) -> torch.Tensor:
    """100 × cosine similarity of each image with the text: ``[B]``."""
    with torch.inference_mode(), manager.use(clip.handle) as model:
        device = next(model.parameters()).device
        tokens = clip.tokenizer([text], padding="max_length", truncation=True, max_length=clip.max_length,
                                return_tensors="pt")
        text_emb = _features(model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                     attention_mask=tokens["attention_mask"].to(device)))
        img_emb = _features(model.get_image_features(pixel_values=_pixels(clip, images, device)))
        text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
        img_emb = torch.nn.functional.normalize(img_emb.float(), dim=-1)
        return (100.0 * img_emb @ text_emb.T)[:, 0].cpu()


class ImageTextScore(Node):
    """CLIP similarity of each image with a text (100 × cosine; higher = better match)."""

    category = "vision/scoring"
    clip_model = Input(CLIP_MODEL)
    image = Input(IMAGE)
    text = Input(STRING, default="", multiline=True)
    outputs = (Output(FLOAT, "scores", is_list=True),)

    @classmethod
    def validate_inputs(cls, text=None, **_: Any) -> bool | str:
        return validate_text(text, "text")

    def execute(self, clip_model: ClipFull, image, text) -> tuple:
        image = check_image(image, "image")
        check_text(text, "text")
        return ([float(s) for s in clip_scores(clip_model, self.ctx.service("models"), image, text)],)


def _same_size(batches: list[torch.Tensor]) -> torch.Tensor:
    h, w = batches[0].shape[1:3]
    out = []
    for b in batches:
        b = b[..., :3] if b.shape[-1] >= 3 else b.expand(*b.shape[:-1], 3)
        if b.shape[1:3] != (h, w):
            b = torch.nn.functional.interpolate(b.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                                align_corners=False).permute(0, 2, 3, 1)
        out.append(b)
    return torch.cat(out, dim=0)


class RankImages(Node):
    """Order images (all batches of a list) by CLIP similarity to a text and keep the best k."""

    category = "vision/scoring"
    takes_lists = True
    clip_model = Input(CLIP_MODEL)
    images = Input(IMAGE)
    text = Input(STRING, default="", multiline=True)
    keep = Input(INT, default=1, min=1, max=4096)
    labels = Input(STRING, default="", optional=True, force_input=True,
                   tooltip="Optional: one label per image batch (e.g. the prompt that made it); the kept ones are output.")
    outputs = (Output(IMAGE, "images"), Output(FLOAT, "scores", is_list=True), Output(INT, "indices", is_list=True),
               Output(STRING, "labels", is_list=True))

    def execute(self, clip_model, images, text, keep, labels=None) -> tuple:
        clip = clip_model[0]
        text_value = text[0]
        check_text(text_value, "text")
        k = int(keep[0])
        batches = [check_image(b, "images") for b in images]
        per_image_labels: list[str] = []
        if labels:
            for i, b in enumerate(batches):
                label = labels[i] if i < len(labels) else labels[-1]
                per_image_labels += [label] * b.shape[0]
        stacked = _same_size(batches)
        scores = clip_scores(clip, self.ctx.service("models"), stacked, text_value)
        order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
        kept_labels = [per_image_labels[i] for i in order] if per_image_labels else []
        return (stacked[order], [float(scores[i]) for i in order], order, kept_labels)
