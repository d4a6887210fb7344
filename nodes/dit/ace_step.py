"""ACE-Step 1.5 music: the DiT (diffusers ``AceStepTransformer1DModel``) with its condition encoder
(``AceStepConditionEncoder``: lyric encoder, timbre encoder, text projector, learned null embedding), the
Qwen3 text encoder (DualCLIPLoader type ``ace``), the MODEL value's runner and the loading of ComfyUI's split
DiT file (``acestep_v1.5_turbo.safetensors``). The VAE is the 48 kHz Oobleck (:mod:`.audio_vae`). Nothing is
downloaded.

Facts: latents ``[B, 64, T]`` at 25 per second (EmptyAceStep1.5LatentAudio; the DiT works on ``[B, T, 64]``),
flow matching with network time = sigma (ComfyUI's default shift 3, multiplier 1; the templates set
ModelSamplingAuraFlow 3), the network predicts the velocity. Each step the DiT sees the noisy latent beside
its context: source latents (the audio codes' when the conditioning has them, else the silence latent) and a
chunk mask of ones.
The cross-attention states come from the condition encoder: the prompt's Qwen3 hidden states (projected),
the lyrics' token embeddings (through the lyric encoder) and a timbre embedding of the reference audio (the
silence latent over the sampled length, as ComfyUI). A conditioning whose text states are all zero
(ConditioningZeroOut) uses the model's learned null embedding instead (ComfyUI's ``replace_with_null_embeds``).

DiT file layout (ACE-Step's names, bare or under ``model.diffusion_model.``): ``decoder.`` the DiT
(``proj_in.1`` / ``proj_out.1`` the patch convs; attention ``q_proj``/``k_proj``/``v_proj``/``o_proj``,
``q_norm``/``k_norm`` — diffusers' ``to_q``… names load as well), ``encoder.`` the condition encoder,
``null_condition_emb``; ``tokenizer.quantizer.`` / ``detokenizer.`` (the 5 Hz audio-code path). The config
comes from the shapes; the attention window (128) and the layer pattern (sliding, full, alternating) are not in
the weights: ACE-Step 1.5's are used in the DiT. The lyric and timbre encoders attend over all tokens as
ComfyUI's do (diffusers' apply the window on alternate layers there, so AceStepPipeline differs from ComfyUI and
from nodegraph for lyrics over 128 tokens or latents over 128 frames).
The silence latent (VAE-encoded silence, ``[1, T, 64]``) is not in ComfyUI's files (ComfyUI carries it in
its code): it is read from a ``silence_latent`` key of the file, else from ``<file stem>.silence_latent.pt`` /
``silence_latent.pt`` beside the file (the ACE-Step release's ``silence_latent.pt``, ``[1, 64, T]``), else made
on the first run by encoding silence with the ACE-Step VAE in ``models/vae`` (:mod:`.ace_step_silence`).

Text encoding (ComfyUI's TextEncodeAceStepAudio1.5 recipe): the caption in ``# Instruction / # Caption /
# Metas`` form (bpm, time signature, key, duration rounded up) through the Qwen3 embedding model (last hidden
states), the lyrics as ``# Languages / # Lyric`` through its token embeddings only; with
``generate_audio_codes`` the 5 Hz LM samples ``ceil(duration) · 5`` audio codes (:mod:`.ace_step_lm`), which
the DiT's context takes through the file's quantizer (FSQ levels 8, 8, 8, 5, 5, 5: not in the weights) and
detokenizer (cut to the latent's length; too few codes are padded with ComfyUI's code of silence). ComfyUI
keeps the reference-timbre path (``reference_audio_timbre_latents``) apart; nodegraph has no node that sets it
yet.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices, marker_prefix
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.dit.stable_audio import AudioLatentFormat
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 3.0
LATENTS_PER_SECOND = 25  # 48 kHz / 1920
PREFIXES = ("model.diffusion_model.", "")
MARKERS = ("decoder.proj_in.1.weight", "decoder.time_embed_r.linear_1.weight", "encoder.text_projector.weight")

CAPTION_TEMPLATE = ("# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n# Caption\n{}\n\n"
                    "# Metas\n{}\n<|endoftext|>\n<|endoftext|>")
LYRICS_TEMPLATE = "# Languages\n{}\n\n# Lyric\n{}<|endoftext|><|endoftext|>"


def detect_prefix(keys) -> str | None:
    return marker_prefix(keys, PREFIXES, MARKERS)


# -- conversion -------------------------------------------------------------------------------------

_ATTN = (("q_proj.", "to_q."), ("k_proj.", "to_k."), ("v_proj.", "to_v."), ("o_proj.", "to_out.0."),
         ("q_norm.", "norm_q."), ("k_norm.", "norm_k."))


def _attention_names(key: str) -> str:
    if "_attn." in key:
        for old, new in _ATTN:
            key = key.replace("_attn." + old, "_attn." + new)
    return key


def split_weights(sd: dict) -> tuple[dict, dict, dict, dict]:
    """``(transformer, condition encoder, quantizer, detokenizer)`` weights in diffusers' names from
    ACE-Step's (no prefix); the last two are empty when the file lacks the audio-code path."""
    dit, cond, quant, detok = {}, {}, {}, {}
    for key, value in sd.items():
        if key.startswith("decoder."):
            new = key[len("decoder."):].replace("proj_in.1.", "proj_in_conv.").replace("proj_out.1.", "proj_out_conv.")
            dit[_attention_names(new)] = value
        elif key.startswith("encoder."):
            cond[_attention_names(key[len("encoder."):])] = value
        elif key == "null_condition_emb":
            cond[key] = value
        elif key.startswith("tokenizer.quantizer."):
            quant[key[len("tokenizer.quantizer."):]] = value
        elif key.startswith("detokenizer."):
            detok[_attention_names(key[len("detokenizer."):])] = value
    return dit, cond, quant, detok


_count = count_indices


def transformer_config(sd: dict) -> dict:
    try:
        conv = sd["proj_in_conv.weight"]
        q_norm = sd["layers.0.self_attn.norm_q.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the ACE-Step 1.5 DiT weights lack {exc.args[0]}") from None
    head = int(q_norm.shape[0])
    return {"hidden_size": int(conv.shape[0]), "in_channels": int(conv.shape[1]), "patch_size": int(conv.shape[2]),
            "audio_acoustic_hidden_dim": int(sd["proj_out_conv.weight"].shape[1]),
            "intermediate_size": int(sd["layers.0.mlp.gate_proj.weight"].shape[0]),
            "num_hidden_layers": _count(sd, r"layers\.(\d+)\."), "head_dim": head,
            "num_attention_heads": int(sd["layers.0.self_attn.to_q.weight"].shape[0]) // head,
            "num_key_value_heads": int(sd["layers.0.self_attn.to_k.weight"].shape[0]) // head,
            "attention_bias": "layers.0.self_attn.to_q.bias" in sd,
            "encoder_hidden_size": int(sd["condition_embedder.weight"].shape[1])}


def condition_config(sd: dict) -> dict:
    try:
        text = sd["text_projector.weight"]
        q_norm = sd["lyric_encoder.layers.0.self_attn.norm_q.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the ACE-Step 1.5 condition encoder weights lack {exc.args[0]}") from None
    head = int(q_norm.shape[0])
    return {"hidden_size": int(text.shape[0]), "text_hidden_dim": int(text.shape[1]),
            "timbre_hidden_dim": int(sd["timbre_encoder.embed_tokens.weight"].shape[1]),
            "intermediate_size": int(sd["lyric_encoder.layers.0.mlp.gate_proj.weight"].shape[0]),
            "num_lyric_encoder_hidden_layers": _count(sd, r"lyric_encoder\.layers\.(\d+)\."),
            "num_timbre_encoder_hidden_layers": _count(sd, r"timbre_encoder\.layers\.(\d+)\."),
            "head_dim": head,
            "num_attention_heads": int(sd["lyric_encoder.layers.0.self_attn.to_q.weight"].shape[0]) // head,
            "num_key_value_heads": int(sd["lyric_encoder.layers.0.self_attn.to_k.weight"].shape[0]) // head,
            "attention_bias": "lyric_encoder.layers.0.self_attn.to_q.bias" in sd}


def detokenizer_config(sd: dict) -> dict:
    head = int(sd["layers.0.self_attn.norm_q.weight"].shape[0])
    return {"hidden_size": int(sd["embed_tokens.weight"].shape[0]),
            "intermediate_size": int(sd["layers.0.mlp.gate_proj.weight"].shape[0]),
            "audio_acoustic_hidden_dim": int(sd["proj_out.weight"].shape[0]),
            "pool_window_size": int(sd["special_tokens"].shape[1]),
            "num_attention_pooler_hidden_layers": _count(sd, r"layers\.(\d+)\."), "head_dim": head,
            "num_attention_heads": int(sd["layers.0.self_attn.to_q.weight"].shape[0]) // head,
            "num_key_value_heads": int(sd["layers.0.self_attn.to_k.weight"].shape[0]) // head,
            "attention_bias": "layers.0.self_attn.to_q.bias" in sd}


#: ACE-Step 1.5's FSQ levels (64000 codes) for its 6-dimensional codebook; not in the weights
FSQ_LEVELS = [8, 8, 8, 5, 5, 5]
#: the audio code ComfyUI pads short code lists with (silence)
SILENCE_CODE = 35847


def build_code_path(quant: dict, detok: dict, dtype: torch.dtype):
    """``(quantizer, detokenizer)`` of the 5 Hz audio codes, or ``(None, None)`` without their weights."""
    if not quant or not detok:
        return None, None
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepAudioTokenDetokenizer, _AceStepResidualFSQ

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    width = int(quant["project_in.weight"].shape[0])
    if width != len(FSQ_LEVELS):
        raise ModelFileError(f"this ACE-Step file's audio-code quantizer has {width} dimensions; ACE-Step 1.5's has "
                             f"{len(FSQ_LEVELS)}")
    quantizer = _AceStepResidualFSQ(dim=int(quant["project_in.weight"].shape[1]), levels=list(FSQ_LEVELS))
    quantizer.load_state_dict({k: v.to(dtype) for k, v in quant.items()})
    detokenizer = _instantiate(AceStepAudioTokenDetokenizer, detokenizer_config(detok), detok, dtype,
                               "ACE-Step 1.5 audio detokenizer")
    return quantizer.to(dtype).eval().requires_grad_(False), detokenizer


class AceStepNet(torch.nn.Module):
    """The DiT, its condition encoder and (when the file has them) the audio-code quantizer and detokenizer,
    loaded and placed together; ``silence`` ``[1, T, 64]``."""

    def __init__(self, transformer, condition, silence: torch.Tensor | None, quantizer=None, detokenizer=None):
        super().__init__()
        self.transformer = transformer
        self.condition = condition
        self.quantizer = quantizer
        self.detokenizer = detokenizer
        self.register_buffer("silence", silence, persistent=False)

    @property
    def config(self):
        return self.transformer.config


def read_silence_latent(path: Path, sd: dict) -> torch.Tensor | None:
    """The silence latent ``[1, T, 64]`` of the file or beside it (see the module docstring), else ``None``."""
    value = sd.get("silence_latent", sd.get("encoder.silence_latent"))
    if value is None:
        for cand in (path.with_name(path.stem + ".silence_latent.pt"), path.parent / "silence_latent.pt"):
            if cand.is_file():
                value = torch.load(str(cand), map_location="cpu", weights_only=True)
                if value.ndim == 3 and value.shape[1] == 64 and value.shape[2] != 64:  # the release's [1, 64, T]
                    value = value.transpose(1, 2)
                break
    if value is None:
        return None
    value = value.float()
    return value if value.ndim == 3 else value[None]


def build_net(path: Path, sd: dict, dtype: torch.dtype) -> AceStepNet:
    from diffusers import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    silence = read_silence_latent(path, sd)
    dit, cond, quant, detok = split_weights(sd)
    transformer = _instantiate(AceStepTransformer1DModel, transformer_config(dit), dit, dtype, "ACE-Step 1.5 DiT")
    config = condition_config(cond)
    # the encoder's own silence buffer is not used (the runner passes ``silence``): fill it to fit
    cond["silence_latent"] = torch.zeros(1, 15000, config["timbre_hidden_dim"])
    encoder = _instantiate(AceStepConditionEncoder, config, cond, dtype, "ACE-Step 1.5 condition encoder")
    for sub in (encoder.lyric_encoder, encoder.timbre_encoder):  # ComfyUI's encoders attend over all tokens
        sub._layer_types = ["full_attention"] * len(sub.layers)
    quantizer, detokenizer = build_code_path(quant, detok, dtype)
    silence = None if silence is None else silence.to(dtype)
    return AceStepNet(transformer, encoder, silence, quantizer, detokenizer).eval().requires_grad_(False)


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class AceStepModel(FlowModel):
    """MODEL: ACE-Step 1.5's DiT with its condition encoder (``[B, 64, T]`` latents)."""

    family: str = "ace_step_1.5"

    @property
    def format(self):
        return AudioLatentFormat(64)

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT, 1.0)

    def lora_patch(self, sd: dict, strength: float, name: str):
        raise ModelFileError(f"LoRA {name}: LoRAs for ACE-Step 1.5 are not supported yet")

    @contextmanager
    def open_runner(self, ctx, latent_shape: tuple):
        with open_runner(self, ctx, latent_shape, AceStepRunner) as runner:
            if runner.net.silence is None:  # made once per loaded model (nodegraph_nodes.dit.ace_step_silence)
                from nodegraph_nodes.dit.ace_step_silence import silence_for

                runner.net.silence = silence_for(ctx).to(runner.device, runner.dtype)
            yield runner


class AceStepRunner(NetRunner):
    """One run's calls of the DiT: per conditioning part, the condition encoder then the DiT."""

    def _encoder_states(self, part: CondPart, length: int) -> torch.Tensor:
        net = self.net
        text = part.cond.to(self.device, self.dtype)
        lyrics = part.extras.get("conditioning_lyrics")
        if lyrics is None:
            raise ValueError("this conditioning has no lyrics embedding; encode the prompt with "
                             "TextEncodeAceStepAudio1.5 and ACE-Step's text encoders (DualCLIPLoader type ace)")
        lyrics = lyrics.to(self.device, self.dtype)
        silence = net.silence[:, :length].to(self.device, self.dtype)
        if silence.shape[1] < length:
            raise ValueError(f"this ACE-Step 1.5 silence latent has {net.silence.shape[1]} frames; the latent has "
                             f"{length}")
        ones = lambda t: torch.ones(t.shape[:2], device=self.device, dtype=torch.bool)  # noqa: E731
        states, _ = net.condition(text_hidden_states=text, text_attention_mask=ones(text),
                                  lyric_hidden_states=lyrics, lyric_attention_mask=ones(lyrics),
                                  refer_audio_acoustic_hidden_states_packed=silence,
                                  refer_audio_order_mask=torch.zeros(1, device=self.device, dtype=torch.long))
        if torch.count_nonzero(part.cond) == 0:  # ConditioningZeroOut: the learned null embedding
            states = net.condition.null_condition_emb.to(states).expand_as(states)
        return _rows(states, part.rows)

    def _source(self, part: CondPart, length: int) -> torch.Tensor:
        """The context's source latents ``[1, T, 64]``: the audio codes' (TextEncodeAceStepAudio1.5's
        ``generate_audio_codes``; too few are padded with the code of silence, as ComfyUI) through the quantizer
        and detokenizer, cut to the latent's length; without codes the silence latent."""
        silence = self.net.silence[:, :length].to(self.device, self.dtype)
        codes = part.extras.get("audio_codes")
        if not codes or not codes[0]:
            return silence
        if self.net.detokenizer is None:
            raise ValueError("this ACE-Step 1.5 file has no audio-code detokenizer (tokenizer./detokenizer. weights); "
                             "set TextEncodeAceStepAudio1.5.generate_audio_codes to false")
        codes = list(codes[0])
        pool = int(self.net.detokenizer.config.pool_window_size)
        if len(codes) * pool < length:  # ComfyUI pads with the code of silence
            codes += [SILENCE_CODE] * (math.ceil(length / pool) - len(codes))
        indices = torch.tensor(codes, device=self.device, dtype=torch.long).view(1, -1, 1)
        quantized = self.net.quantizer.get_output_from_indices(indices).to(self.dtype)
        return self.net.detokenizer(quantized).to(self.dtype)[:, :length]

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 3:
            raise ValueError(f"ACE-Step 1.5 samples audio latents [B, 64, T]; this latent is {list(x_in.shape)} "
                             "(make it with EmptyAceStep1.5LatentAudio)")
        x = x_in.to(self.device, self.dtype).transpose(1, 2)
        length = x.shape[1]
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part in parts:
            states = self._encoder_states(part, length)
            source = self._source(part, length)
            context = torch.cat([source, torch.ones_like(source)], dim=-1).expand(part.rows, -1, -1)
            rows = slice(row, row + part.rows)
            out = self.net.transformer(hidden_states=x[rows], timestep=t[rows], timestep_r=t[rows],
                                       encoder_hidden_states=states, context_latents=context, return_dict=False)[0]
            outs.append(out.transpose(1, 2))
            row += part.rows
        return torch.cat(outs)


def load_transformer(path: Path, prefix: str, manager, device: str, weight_dtype: str = "default") -> AceStepModel:
    """UNETLoader for an ACE-Step 1.5 DiT file."""
    from nodegraph_nodes.diffusion.files import read_state_dict
    from nodegraph_nodes.dit.convert import dequantize_scaled_fp8, strip_prefix
    from nodegraph_nodes.dit.loading import _stored, flow_dtype

    if weight_dtype != "default":
        raise ModelFileError("UNETLoader.weight_dtype: ACE-Step 1.5 loads with 'default' only")
    dtype = flow_dtype(device)

    def loader():
        sd = dequantize_scaled_fp8(strip_prefix(read_state_dict(path, allow_pickle=manager.allow_pickle), prefix))
        return build_net(path, sd, _stored(manager, sd, dtype))

    handle = manager.load(_manager_key(path, "ace_step_1.5", dtype), loader, compute_dtype=dtype)
    return AceStepModel(handle, "ace_step_1.5", source=str(path))


# -- text encoder -----------------------------------------------------------------------------------

def caption_text(tags: str, bpm: int, duration: float, timesignature: str, keyscale: str) -> str:
    metas = "\n".join((f"- bpm: {bpm}", f"- timesignature: {timesignature}", f"- keyscale: {keyscale}",
                       f"- duration: {math.ceil(float(duration))} seconds"))
    return CAPTION_TEMPLATE.format(tags.strip(), metas)


def lyrics_text(lyrics: str, language: str) -> str:
    return LYRICS_TEMPLATE.format(language, lyrics)


@dataclass(frozen=True, eq=False)
class AceClip(ManagerOwned):
    """CLIP for ACE-Step 1.5: the Qwen3 embedding model (``handle``), its tokenizer, and the 5 Hz LM's handle
    when a second file was given (``lm``: the 5 Hz LM of the audio codes)."""

    handle: Any
    tokenizer: Any
    lm: Any = None
    source: str = ""
    family: str = "ace_step_1.5"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "AceClip":
        if layer != -1:
            raise ValueError("CLIPSetLastLayer: ACE-Step's Qwen3 encoder uses its last layer only")
        return self

    def describe(self) -> str:
        return "ace text encoder (Qwen3)"

    def encode_ace(self, ctx, caption: str, lyrics: str, codes: list[int] | None = None) -> list:
        """CONDITIONING of a formatted caption and lyrics text (:func:`caption_text`, :func:`lyrics_text`), with
        the LM's audio codes when given."""
        cap = self.tokenizer(caption, return_tensors="pt")["input_ids"]
        lyr = self.tokenizer(lyrics, return_tensors="pt")["input_ids"]
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            hidden = module(input_ids=cap.to(ctx.device)).last_hidden_state.float().cpu()
            embeds = module.get_input_embeddings()(lyr.to(ctx.device)).float().cpu()
        extras = {"conditioning_lyrics": embeds}
        if codes is not None:
            extras["audio_codes"] = [list(codes)]
        return [[hidden, extras]]

    def audio_codes(self, ctx, positive: str, negative: str, count: int, **sampling) -> list[int]:
        """``count`` codes from the 5 Hz LM (:mod:`.ace_step_lm`)."""
        from nodegraph_nodes.dit.ace_step_lm import generate_codes

        if self.lm is None:
            raise ValueError("TextEncodeAceStepAudio1.5.generate_audio_codes needs ACE-Step's LM: load it as the "
                             "second file of DualCLIPLoader type ace (qwen_1.7b_ace15 / qwen_4b_ace15)")
        manager = ctx.service("models")
        with manager.use(self.lm, ctx.device) as lm:
            return generate_codes(lm, self.tokenizer, positive, negative, count, device=ctx.device, **sampling)

    def encode_text(self, ctx, text: str) -> list:
        return self.encode_ace(ctx, caption_text(text, 120, 120, "4", "C major"), lyrics_text("", "en"))


def _qwen3_width(path: Path, manager) -> int:
    from nodegraph_nodes.dit.loading import file_keys

    keys = file_keys(path, manager.allow_pickle)
    if "model.layers.0.self_attn.q_norm.weight" not in keys:
        raise ModelFileError(f"DualCLIPLoader.type ace takes ACE-Step's Qwen3 files (qwen_0.6b_ace15, "
                             f"qwen_1.7b_ace15 / qwen_4b_ace15); {path.name} is not a Qwen3 model")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return int(fh.get_slice("model.embed_tokens.weight").get_shape()[1])


def load_text_encoders(paths: list[Path], manager, device: str, models_dir: Path, where: str = "DualCLIPLoader"):
    """DualCLIPLoader / CLIPLoader type ``ace``: the Qwen3 embedding model (the narrower file, 0.6B) and
    optionally the 5 Hz LM (the wider)."""
    from nodegraph_nodes.dit.file_loading import load_encoder_handle
    from nodegraph_nodes.dit.llm_loading import build_qwen3, find_llm_tokenizer, load_llm_tokenizer
    from nodegraph_nodes.dit.loading import flow_dtype

    ordered = sorted(paths, key=lambda p: _qwen3_width(p, manager))
    dtype = flow_dtype(device)

    def handle_of(path: Path):
        return load_encoder_handle(path, "qwen3_ace", manager, dtype, build_qwen3)

    tokenizer = load_llm_tokenizer(find_llm_tokenizer(models_dir, ordered[0], "qwen3"))
    lm = handle_of(ordered[1]) if len(ordered) > 1 else None
    return AceClip(handle_of(ordered[0]), tokenizer, lm, source=str(ordered[0]))
