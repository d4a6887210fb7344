"""SD 2.x's text-encoder output for the empty prompt, computed from an SD2 text encoder the user has and
remembered in the cache dir (what LotusConditioning returns, :mod:`.lotus`).

ComfyUI inlines this tensor in its source; nodegraph computes it, the way CLIPTextEncode("") does with an
SD2 checkpoint (OpenCLIP ViT-H, the output of its penultimate layer through the final layer norm, 77
tokens). Sources, searched in this order, each folder's files sorted by name (``.safetensors`` only, read
by their headers):

1. ``text_encoders/`` (and ``clip/``): an OpenCLIP ViT-H text encoder, 1024 wide — OpenCLIP key names
   (``transformer.resblocks.N``, with or without ``cond_stage_model.model.`` / ``model.``), or Hugging
   Face ``CLIPTextModel`` names (a 24-layer file is the full model: its last layer is dropped; a file of
   another depth is taken as diffusers' SD2 ``text_encoder``, which already lacks it);
2. ``checkpoints/``: an SD 2.x single-file checkpoint (``cond_stage_model.model.…``);
3. ``checkpoints/`` and ``diffusers/``: a diffusers folder of the SD 2.x family with ``text_encoder/``
   (SD 2.x releases, and Lotus's own diffusers folders).

The result is cached as ``<cache>/lotus/sd2_empty_prompt-<key>.safetensors``; the key is a sha256 of the
text encoder's tensors (names, dtypes, shapes, bytes), of the tokenizer's BOS/EOS/pad ids and of how the
layers are taken, so the same weights under another name, or in another file, hit the same entry. The
tensors' digest is remembered per file identity (path, size, mtime, inode) in ``<cache>/lotus/digests.json``
so an unchanged file is not read again. Cache dir: the default LLM's
(:func:`nodegraph_nodes.langvision.default_llm.cache_root`): ``Paths.cache_dir``, ``$NODEGRAPH_CACHE_DIR``, else
``$XDG_CACHE_HOME/nodegraph`` (``~/.cache/nodegraph``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nodegraph.context import Paths

from nodegraph_nodes.diffusion import checkpoint as ck
from nodegraph_nodes.diffusion.files import ModelFileError, file_identity, is_diffusers_folder, read_json
from nodegraph_nodes.langvision.default_llm import cache_root

log = logging.getLogger(__name__)

#: bump when the way the embedding is computed changes (part of the cache key)
FORMAT = 1
VIT_H_WIDTH = 1024
OPEN_CLIP_PREFIXES = (ck.SD2_CLIP_PREFIX, "model.", "")
HF_TOKEN_KEY = "text_model.embeddings.token_embedding.weight"
RECORD = "digests.json"


@dataclass(frozen=True)
class EncoderSource:
    """Where an SD2 text encoder was found: a file's tensors under ``prefix``, or a diffusers folder."""

    path: Path
    kind: str  # "open_clip" | "hf" | "checkpoint" | "diffusers"
    prefix: str = ""

    def weight_files(self) -> list[Path]:
        if self.kind != "diffusers":
            return [self.path]
        return sorted((self.path / "text_encoder").glob("*.safetensors"))


# -- safetensors headers ---------------------------------------------------------------------------------

def _header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a .safetensors file (tensor name → dtype, shape, data offsets), or None."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 << 20:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    header.pop("__metadata__", None)
    return header


def _tensors_digest(path: Path, keep: Callable[[str], bool]) -> str:
    """sha256 over the kept tensors' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        start = 8 + size
        for name in sorted(k for k in header if keep(k)):
            entry = header[name]
            h.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
            begin, end = entry["data_offsets"]
            f.seek(start + begin)
            left = end - begin
            while left:
                chunk = f.read(min(left, 16 << 20))
                if not chunk:
                    raise ModelFileError(f"{path.name} is truncated (tensor {name})")
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


# -- finding a source --------------------------------------------------------------------------------------

def _safetensors_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".safetensors", ".sft"))


def _text_encoder_file(path: Path) -> EncoderSource | None:
    header = _header(path)
    if not header:
        return None
    for prefix in OPEN_CLIP_PREFIXES:
        tok = header.get(prefix + "token_embedding.weight")
        if tok and prefix + "transformer.resblocks.0.ln_1.weight" in header and tok["shape"][1] == VIT_H_WIDTH:
            return EncoderSource(path, "open_clip", prefix)
    tok = header.get(HF_TOKEN_KEY) or header.get(HF_TOKEN_KEY[len("text_model."):])
    if tok and tok["shape"][1] == VIT_H_WIDTH:
        return EncoderSource(path, "hf")
    return None


def _checkpoint_file(path: Path) -> EncoderSource | None:
    header = _header(path)
    if header and ck.SD2_CLIP_PREFIX + "positional_embedding" in header:
        return EncoderSource(path, "checkpoint", ck.SD2_CLIP_PREFIX)
    return None


def _diffusers_folder(path: Path) -> EncoderSource | None:
    try:
        unet_cfg = read_json(path / "unet" / "config.json")
    except (ModelFileError, OSError, ValueError):
        return None
    if not unet_cfg.get("use_linear_projection") or unet_cfg.get("addition_embed_type") == "text_time":
        return None  # SD 1.x or SDXL
    if not (path / "text_encoder" / "config.json").is_file() or not list((path / "text_encoder").glob("*.safetensors")):
        return None
    return EncoderSource(path, "diffusers")


def _diffusers_folders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p.parent for p in folder.rglob("model_index.json") if is_diffusers_folder(p.parent))


def searched_folders(paths: Paths) -> dict[str, tuple[Path, ...]]:
    """The folders :func:`find_sd2_text_encoder` looks in, by what it looks for there."""
    return {"text encoder files": paths.model_dirs("text_encoders"),
            "SD 2.x checkpoints": paths.model_dirs("checkpoints"),
            "SD 2.x diffusers folders": paths.model_dirs("checkpoints") + paths.model_dirs("diffusers")}


def find_sd2_text_encoder(paths: Paths) -> EncoderSource | None:
    """The first SD2 text encoder in the order of the module docstring, or None."""
    where = searched_folders(paths)
    for folder in where["text encoder files"]:
        for path in _safetensors_under(folder):
            if (found := _text_encoder_file(path)) is not None:
                return found
    for folder in where["SD 2.x checkpoints"]:
        for path in _safetensors_under(folder):
            if (found := _checkpoint_file(path)) is not None:
                return found
    for folder in where["SD 2.x diffusers folders"]:
        for path in _diffusers_folders(folder):
            if (found := _diffusers_folder(path)) is not None:
                return found
    return None


def not_found_message(node: str, paths: Paths) -> str:
    lines = [f"{node}: no SD 2.x text encoder found. Lotus is conditioned on SD2's text encoder output for the "
             "empty prompt, which nodegraph computes from one you have (ComfyUI inlines the tensor). Looked for:"]
    for what, folders in searched_folders(paths).items():
        lines.append(f"  {what} (.safetensors) in: " + (", ".join(str(f) for f in folders) or "(no folder)"))
    lines.append("Put one there, e.g. an SD 2.x checkpoint (v2-1_768-ema-pruned.safetensors) in checkpoints/, "
                 "an OpenCLIP ViT-H text encoder in text_encoders/, or Lotus's diffusers folder (with "
                 "text_encoder/ and tokenizer/) in diffusers/.")
    return "\n".join(lines)


# -- the encoder -------------------------------------------------------------------------------------------

def _read_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    from nodegraph_nodes.diffusion.quantized import read_safetensors

    def want(key: str) -> bool:
        return key.startswith(prefix) and not key[len(prefix):].startswith(("visual.", "vision_model.", "logit_scale"))

    return {k[len(prefix):]: v for k, v in read_safetensors(path, want=want).items()}


def _tokenizer_of(source: EncoderSource, models_dir: Path):
    from nodegraph_nodes.diffusion.components import find_tokenizer, load_tokenizer

    own = source.path / "tokenizer"
    if source.kind == "diffusers" and (own / "vocab.json").is_file():
        return load_tokenizer(own)
    return load_tokenizer(find_tokenizer(models_dir, source.path))


def build_encoder(source: EncoderSource, dtype: torch.dtype, tokenizer, pad: int) -> torch.nn.Module:
    """The source's CLIP text model, with SD2's depth (the last ViT-H layer left out)."""
    if source.kind == "diffusers":
        from transformers import CLIPTextModel

        try:
            return CLIPTextModel.from_pretrained(str(source.path / "text_encoder"), torch_dtype=dtype,
                                                 local_files_only=True, use_safetensors=True).eval()
        except Exception as exc:
            raise ModelFileError(f"could not load {source.path.name}/text_encoder: {exc}") from None
    template = ck.family_config("sd2", "text_encoder.json")
    if source.kind in ("checkpoint", "open_clip"):  # the full ViT-H text tower: SD2 leaves its last layer out
        hf = ck.convert_open_clip(_read_tensors(source.path, source.prefix), "")
        drop = True
    else:
        hf = _read_tensors(source.path, source.prefix)
        hf = {k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k: v
              for k, v in hf.items()}
        drop = ck.sd2_drops_last_layer(False, hf)
    hf.pop("text_projection.weight", None)
    cfg = ck.infer_clip_config(hf, template, drop_last_layer=drop)
    cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    if drop:
        last = cfg["num_hidden_layers"]
        hf = {k: v for k, v in hf.items() if not k.startswith(f"text_model.encoder.layers.{last}.")}
    return ck.build_clip(hf, cfg, dtype, projection=False)


# -- the cache ---------------------------------------------------------------------------------------------

def _identity(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _weights_digest(source: EncoderSource, folder: Path) -> str:
    """sha256 of the source's text-encoder tensors, remembered per file identity."""
    record = folder / RECORD
    try:
        known = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if source.kind == "diffusers":
        keep = lambda name: True  # noqa: E731 - the text_encoder folder's files hold nothing else
    else:
        keep = lambda name: name.startswith(source.prefix) and not name[len(source.prefix):].startswith(  # noqa: E731
            ("visual.", "vision_model.", "logit_scale", "model.diffusion_model.", "first_stage_model."))
    parts = []
    changed = False
    for path in source.weight_files():
        entry_key = f"{path.resolve()}|{source.prefix}"
        entry = known.get(entry_key)
        if entry is not None and entry.get("identity") == _identity(path):
            parts.append(entry["sha256"])
            continue
        digest = _tensors_digest(path, keep)
        known[entry_key] = {"identity": _identity(path), "sha256": digest}
        parts.append(digest)
        changed = True
    if changed:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = record.with_name(f".{record.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=1), encoding="utf-8")
            os.replace(tmp, record)
        except OSError as exc:  # a read-only cache still works; the digest is computed again next time
            log.debug("could not remember digests in %s: %s", record, exc)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def source_identity(source: EncoderSource) -> tuple:
    """Changes when the source's weight files are replaced (the node's fingerprint)."""
    return (source.kind, source.prefix, *(file_identity(p) for p in source.weight_files()))


def empty_prompt_embedding(source: EncoderSource, paths: Paths, device: str, allow_pickle: bool = False
                           ) -> torch.Tensor:
    """``[1, 77, width]``: the source's SD2 encoding of ``""``, from the cache or computed and cached."""
    from safetensors.torch import load_file, save_file

    from nodegraph_nodes.diffusion.components import TextEncoder, compute_dtype
    from nodegraph_nodes.diffusion.text_encode import encode_with_encoder

    folder = cache_root(paths) / "lotus"
    tokenizer = _tokenizer_of(source, Path(paths.models_dir))
    spec = ck.family_config("sd2", "family.json")["clip"][0]
    pad = int(tokenizer.eos_token_id) if spec["pad"] == "eos" else int(spec["pad"])
    ids = f"bos={tokenizer.bos_token_id} eos={tokenizer.eos_token_id} pad={pad}"
    key = hashlib.sha256(f"{_weights_digest(source, folder)} {ids} {source.kind} format {FORMAT}".encode()).hexdigest()
    cached = folder / f"sd2_empty_prompt-{key[:24]}.safetensors"
    if cached.is_file():
        try:
            return load_file(str(cached))["prompt_embeds"]
        except Exception as exc:  # a broken entry is computed again
            log.warning("ignoring unreadable cache entry %s: %s", cached, exc)
    dtype = compute_dtype(device, "unet")
    module = build_encoder(source, dtype, tokenizer, pad).to(device)
    enc = TextEncoder(None, tokenizer, spec["key"], spec["layer"], spec["layer_norm_hidden_state"], pad, False)
    embeds, _ = encode_with_encoder(enc, module, "", spec["layer"], device, None, allow_pickle)
    embeds = embeds.float().cpu().contiguous()
    del module
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        save_file({"prompt_embeds": embeds}, str(tmp), metadata={"source": source.path.name, "format": str(FORMAT)})
        os.replace(tmp, cached)
    except OSError as exc:
        log.warning("could not cache the SD2 empty-prompt embedding in %s: %s", folder, exc)
    return embeds
