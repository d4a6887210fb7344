"""ACE-Step 1.0 music from ComfyUI's all-in-one file (``ace_step_v1_3.5b.safetensors``, CheckpointLoaderSimple):
the transformer (:mod:`.ace_step1_net`) under ``model.diffusion_model.``, the UMT5-base text encoder under
``text_encoders.umt5base.transformer.`` (with its sentencepiece model at ``text_encoders.spiece_model``), the
music DCAE and vocoder under ``vae.dcae.`` / ``vae.vocoder.`` (:mod:`.ace_step1_vae`).

Text (TextEncodeAceStepAudio): the tags through UMT5 (sentencepiece tokens + end token, no padding; the last hidden
states; prompt weights as ComfyUI's, :func:`encode_tags`), the lyrics as token ids (:mod:`.ace_step1_lyrics`),
``lyrics_strength`` scaling the lyric encoder's output. The UMT5 tokenizer is the file's sentencepiece model
(:mod:`.spiece_tokenizer`; it needs ``protobuf``), else the Wan UMT5 tokenizer folder
(``models/text_encoders/umt5_tokenizer``, the same vocabulary). Sampling: flow matching, network time ``1000 ·
sigma``, ComfyUI's default shift 3 (the templates set ModelSamplingSD3 5); the network predicts the velocity.
Latents ``[B, 8, 16, T]`` (EmptyAceStepLatentAudio).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 3.0
DIT_PREFIX = "model.diffusion_model."
TEXT_PREFIX = "text_encoders.umt5base.transformer."
VAE_PREFIX = "vae."
SPIECE_KEY = "text_encoders.spiece_model"
FAMILY = "ace_step_1.0"


def is_checkpoint(keys) -> bool:
    keys = set(keys)
    return (DIT_PREFIX + "genre_embedder.weight" in keys and DIT_PREFIX + "lyric_embs.weight" in keys
            and any(k.startswith(TEXT_PREFIX) for k in keys) and VAE_PREFIX + "vocoder.backbone.channel_layers.0.0.bias"
            in keys)


@dataclass(frozen=True)
class Latent4dFormat:
    """ACE-Step 1.0's latents ``[B, 8, 16, T]`` as they are; the preview is the first item's channel mean."""

    channels: int = 8

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def preview(self, latent: torch.Tensor) -> torch.Tensor:
        x = latent[0].float().mean(0)
        x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-6)
        return x[..., None].expand(-1, -1, 3).cpu()


@dataclass(frozen=True, eq=False)
class AceStep1Model(FlowModel):
    """MODEL: ACE-Step 1.0's transformer (``[B, 8, 16, T]`` latents)."""

    family: str = FAMILY

    @property
    def format(self):
        return Latent4dFormat()

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT, 1000.0)

    def lora_patch(self, sd: dict, strength: float, name: str):
        raise ModelFileError(f"LoRA {name}: LoRAs for ACE-Step 1.0 are not supported yet")

    @contextmanager
    def open_runner(self, ctx, latent_shape: tuple):
        with open_runner(self, ctx, latent_shape, AceStep1Runner) as runner:
            yield runner


class AceStep1Runner(NetRunner):
    """Per conditioning part: the encoder states (UMT5 states, lyric tokens) then the transformer."""

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 4:
            raise ValueError(f"ACE-Step 1.0 samples latents [B, 8, 16, T]; this latent is {list(x_in.shape)} (make it "
                             "with EmptyAceStepLatentAudio)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part in parts:
            lyrics = part.extras.get("conditioning_lyrics")
            if lyrics is None:
                raise ValueError("this conditioning has no lyric tokens; encode the prompt with TextEncodeAceStepAudio "
                                 "and ACE-Step 1.0's checkpoint")
            strength = float(part.extras.get("lyrics_strength", 1.0))
            states = self.net.encode(part.cond.to(self.device, self.dtype), lyrics.to(self.device), strength)
            rows = slice(row, row + part.rows)
            outs.append(self.net.decode(x[rows], t[rows], _rows(states, part.rows)))
            row += part.rows
        return torch.cat(outs)


@dataclass(frozen=True, eq=False)
class AceStep1Clip(ManagerOwned):
    """CLIP for ACE-Step 1.0: UMT5-base (``handle``), its tokenizer and the lyric tokenizer."""

    handle: Any
    tokenizer: Any
    lyric_tokenizer: Any
    source: str = ""
    family: str = FAMILY
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "AceStep1Clip":
        if layer != -1:
            raise ValueError("CLIPSetLastLayer: ACE-Step 1.0's UMT5 encoder uses its last layer only")
        return self

    def describe(self) -> str:
        return "ace 1.0 text encoder (UMT5-base)"

    def encode_ace1(self, ctx, tags: str, lyrics: str, lyrics_strength: float = 1.0) -> list:
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            hidden = encode_tags(module, self.tokenizer, tags, ctx.device).cpu()
        tokens = torch.tensor([self.lyric_tokenizer(lyrics)], dtype=torch.long)
        return [[hidden, {"conditioning_lyrics": tokens, "lyrics_strength": float(lyrics_strength)}]]

    def encode_text(self, ctx, text: str) -> list:
        return self.encode_ace1(ctx, text, "")


def encode_tags(module, tokenizer, tags: str, device) -> torch.Tensor:
    """UMT5 states ``[1, tokens, width]`` of the tags with ComfyUI's weighting: weight segments tokenized apart,
    the end token appended, no padding; weighted tokens moved from the encoding of an empty prompt (the end token
    and pads, the pads masked) by their weight."""
    from nodegraph_nodes.dit.text import t5_tokens

    pairs = t5_tokens(tokenizer, tags, 1)
    ids = torch.tensor([[t for t, _ in pairs]])
    weights = torch.tensor([w for _, w in pairs])
    mask = torch.ones_like(ids)
    weighted = bool((weights != 1.0).any())
    if weighted:
        empty = torch.tensor([[pairs[-1][0]] + [int(tokenizer.pad_token_id or 0)] * (len(pairs) - 1)])
        ids, mask = torch.cat([ids, empty]), torch.cat([mask, (torch.arange(len(pairs)) == 0).long()[None]])
    hidden = module(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
    z = hidden[:1].clone()
    if weighted:
        changed = weights != 1.0
        w = weights[changed].to(z.device, z.dtype)[:, None]
        z[0, changed] = (z[0, changed] - hidden[1, changed]) * w + hidden[1, changed]
    return z


def build_transformer(sd: dict, dtype: torch.dtype):
    from nodegraph_nodes.dit.ace_step1_net import AceStep1Transformer, config_from_weights

    net = AceStep1Transformer(config_from_weights(sd))
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelFileError(f"the ACE-Step 1.0 transformer weights do not fit: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}")
    return net.to(dtype).eval().requires_grad_(False)


def umt5_tokenizer(path: Path, keys, models_dir: Path):
    """The file's own sentencepiece model (``text_encoders.spiece_model``, as ComfyUI reads it) when it has one and
    ``protobuf`` is installed, else the UMT5 tokenizer folder Wan uses (the same vocabulary)."""
    from nodegraph_nodes.dit import spiece_tokenizer
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.wan import find_tokenizer

    if SPIECE_KEY in set(keys) and spiece_tokenizer.available():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return spiece_tokenizer.fast_tokenizer(fh.get_tensor(SPIECE_KEY), f"{path.name} {SPIECE_KEY}")
    return load_llm_tokenizer(find_tokenizer(models_dir, path))


def load_checkpoint(path: Path, keys, manager, device: str, models_dir: Path):
    """``(MODEL, CLIP, VAE)`` of ComfyUI's ACE-Step 1.0 all-in-one file."""
    from nodegraph_nodes.dit.ace_step1_lyrics import LyricTokenizer, find_vocab
    from nodegraph_nodes.dit.ace_step1_vae import AceStep1Vae, build_music_dcae
    from nodegraph_nodes.dit.convert import strip_prefix
    from nodegraph_nodes.dit.file_loading import CheckpointWeights
    from nodegraph_nodes.dit.loading import _stored, flow_dtype
    from nodegraph_nodes.dit.wan import build_umt5

    dtype = flow_dtype(device)
    weights = CheckpointWeights(path, manager)
    part = lambda prefix: strip_prefix(weights(), prefix)  # noqa: E731

    def dit_loader():
        sd = part(DIT_PREFIX)
        return build_transformer(sd, _stored(manager, sd, dtype))

    model = AceStep1Model(manager.load(_manager_key(path, FAMILY, dtype), dit_loader, compute_dtype=dtype), FAMILY,
                          source=str(path))

    def text_loader():
        sd = part(TEXT_PREFIX)
        return build_umt5(sd, _stored(manager, sd, dtype))

    text = manager.load(_manager_key(path, "umt5base_ace", dtype), text_loader, compute_dtype=dtype)
    clip = AceStep1Clip(text, umt5_tokenizer(path, keys, models_dir), LyricTokenizer(find_vocab(models_dir, path)),
                        source=str(path))
    vae_dtype = torch.float32

    def vae_loader():
        sd = part(VAE_PREFIX)
        return build_music_dcae(sd, _stored(manager, sd, vae_dtype))

    vae = AceStep1Vae(manager.load(_manager_key(path, "ace_step_1.0_vae", vae_dtype), vae_loader,
                                   compute_dtype=vae_dtype), source=str(path))
    return model, clip, vae
