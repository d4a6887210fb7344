"""Audio encoders (``models/audio_encoders``) in ComfyUI's node names: AudioEncoderLoader and
AudioEncoderEncode, as Wan 2.2 S2V's templates use them.

A wav2vec 2.0 single file (ComfyUI's ``wav2vec2_large_english_fp16.safetensors``, or a transformers
``Wav2Vec2Model`` / ``Wav2Vec2ForCTC`` state dict: a leading ``wav2vec2.`` is dropped, heads such as
``lm_head.`` are ignored, old ``weight_g`` / ``weight_v`` names of the positional convolution are taken) is
told by its keys (``encoder.layer_norm.bias``) and built as transformers' :class:`Wav2Vec2Model` from its
shapes: width, layer count, feed-forward width, convolution widths and kernels, positional-convolution
kernel and groups. Heads are width / 64 (ComfyUI's two sizes: 1024 → 16, 768 → 12). The variant follows
the feature extractor's norm as in the published models and ComfyUI's two configs: per-layer layer norms
(``large``, "lv60" style) mean pre-norm transformer layers (``do_stable_layer_norm``) and a normalized
input; a group norm on the first convolution only (``base``) means post-norm layers and no input
normalization. Strides are wav2vec 2.0's (5, 2, 2, 2, 2, 2, 2).

AudioEncoderEncode does what ComfyUI's ``encode_audio`` does: the AUDIO ``[B, C, T]`` is resampled to 16 kHz
(torchaudio's default Hann-windowed sinc resampler, reimplemented in :func:`resample`), averaged over
channels, for the large variant normalized over the whole batch (``(x - mean) / sqrt(var + 1e-7)``, unbiased
variance, as ComfyUI), and run through the model; AUDIO_ENCODER_OUTPUT is
``{"encoded_audio": last state [B, frames, width], "encoded_audio_all_layers": (embedding output, every
layer's output …; the last after the final norm for the large variant), "audio_samples": samples at 16 kHz}``.
It runs in fp32 on the engine's device (ComfyUI: the text encoder's dtype, fp16 on GPUs). Whisper encoders
(HuMo) are not supported yet: such a file is an error saying so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.node import COMBO, Input, Node, Output

from nodegraph_nodes.diffusion.files import ModelFileError, file_identity, list_model_files, read_state_dict, resolve_model

AUDIO_ENCODER = "AUDIO_ENCODER"
AUDIO_ENCODER_OUTPUT = "AUDIO_ENCODER_OUTPUT"
FOLDER = "audio_encoders"
MODEL_RATE = 16000
STRIDES = (5, 2, 2, 2, 2, 2, 2)
HEAD_DIM = 64
#: heads of pretraining / CTC checkpoints the encoder does not use
IGNORED_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "dropout_features.")


def resample(waveform: torch.Tensor, rate: int, new_rate: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """``[..., T]`` from ``rate`` to ``new_rate`` with a Hann-windowed sinc filter (torchaudio's
    ``functional.resample`` defaults; same kernel, padding and output length)."""
    if rate == new_rate:
        return waveform
    if rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {rate} → {new_rate}")
    gcd = math.gcd(int(rate), int(new_rate))
    orig, new = int(rate) // gcd, int(new_rate) // gcd
    dtype = waveform.dtype
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=dtype, device=waveform.device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=waveform.device)[:, None, None] / new + idx
    t = (t * base).clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t) * (window * (base / orig))
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)[..., :math.ceil(new * length / orig)]
    return out.reshape(*shape[:-1], out.shape[-1])


def wav2vec2_state_dict(sd: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The file's tensors under transformers' ``Wav2Vec2Model`` names."""
    out = {}
    for key, value in sd.items():
        if key.startswith("wav2vec2."):
            key = key[len("wav2vec2."):]
        if key.startswith(IGNORED_PREFIXES):
            continue
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[key] = value
    if "encoder.layer_norm.bias" not in out:
        if "model.encoder.embed_positions.weight" in sd or "encoder.embed_positions.weight" in sd:
            raise ModelFileError(f"input 'audio_encoder_name': {name!r} is a Whisper encoder, which is not "
                                 "supported yet; only wav2vec 2.0 encoders are")
        raise ModelFileError(f"input 'audio_encoder_name': {name!r} is not a wav2vec 2.0 audio encoder "
                             "(no encoder.layer_norm.bias)")
    return out


def wav2vec2_config(sd: dict[str, torch.Tensor], name: str) -> Any:
    """transformers' ``Wav2Vec2Config`` read from the shapes of a wav2vec 2.0 state dict."""
    from transformers import Wav2Vec2Config

    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise ModelFileError(f"input 'audio_encoder_name': {name!r} lacks {key}; not a complete wav2vec 2.0 "
                                 "encoder")
        return sd[key]

    hidden = int(need("encoder.layer_norm.bias").shape[0])
    if hidden % HEAD_DIM:
        raise ModelFileError(f"input 'audio_encoder_name': {name!r} is {hidden} wide; wav2vec 2.0 encoders here "
                             f"need a width that is a multiple of {HEAD_DIM} (64-wide heads)")
    layers = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))), default=-1)
    convs = 1 + max((int(m.group(1)) for k in sd
                     if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight", k))), default=-1)
    if layers == 0 or convs != len(STRIDES):
        raise ModelFileError(f"input 'audio_encoder_name': {name!r} has {layers} transformer layers and {convs} "
                             f"feature convolutions; wav2vec 2.0 has {len(STRIDES)} convolutions")
    conv_weights = [need(f"feature_extractor.conv_layers.{i}.conv.weight") for i in range(convs)]
    layer_norms = "feature_extractor.conv_layers.1.layer_norm.weight" in sd
    if not layer_norms and "feature_extractor.conv_layers.0.layer_norm.weight" not in sd:
        raise ModelFileError(f"input 'audio_encoder_name': {name!r}: its feature extractor has no norm; "
                             "wav2vec 2.0 uses a group norm or layer norms")
    biases = ["feature_extractor.conv_layers.%d.conv.bias" % i in sd for i in range(convs)]
    if len(set(biases)) != 1:
        raise ModelFileError(f"input 'audio_encoder_name': {name!r}: only some feature convolutions have biases, "
                             "which transformers' Wav2Vec2Model cannot express")
    pos = need("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    return Wav2Vec2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // HEAD_DIM,
        intermediate_size=int(need("encoder.layers.0.feed_forward.intermediate_dense.weight").shape[0]),
        conv_dim=tuple(int(w.shape[0]) for w in conv_weights), conv_kernel=tuple(int(w.shape[2]) for w in conv_weights),
        conv_stride=STRIDES, conv_bias=biases[0], feat_extract_norm="layer" if layer_norms else "group",
        do_stable_layer_norm=layer_norms, num_conv_pos_embeddings=int(pos.shape[2]),
        num_conv_pos_embedding_groups=hidden // int(pos.shape[1]), hidden_act="gelu", feat_extract_activation="gelu",
        layer_norm_eps=1e-5, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, apply_spec_augment=False)


@dataclass(frozen=True, eq=False)
class AudioEncoder:
    """AUDIO_ENCODER: a transformers ``Wav2Vec2Model`` (fp32, CPU between runs), its input normalization and
    file name."""

    model: Any
    do_normalize: bool
    name: str
    sample_rate: int = MODEL_RATE

    def encode(self, waveform: torch.Tensor, rate: int, device: str | torch.device = "cpu") -> dict[str, Any]:
        """ComfyUI's ``encode_audio``: AUDIO waveform ``[B, C, T]`` at ``rate`` → AUDIO_ENCODER_OUTPUT."""
        audio = resample(waveform.detach().float().cpu(), int(rate), self.sample_rate)
        x = audio.mean(dim=1)
        if self.do_normalize:
            x = (x - x.mean()) / torch.sqrt(x.var() + 1e-7)
        model = self.model.to(device)
        try:
            with torch.inference_mode():
                out = model(x.to(device), output_hidden_states=True)
        finally:
            self.model.to("cpu")
        last = out.last_hidden_state.float().cpu()
        # ComfyUI's (and transformers 4's) last entry is the final state, after the large variant's final
        # norm; transformers 5 records the last layer's output before that norm there
        states = tuple(h.float().cpu() for h in out.hidden_states[:-1]) + (last,)
        return {"encoded_audio": last, "encoded_audio_all_layers": states,
                "audio_samples": int(audio.shape[2])}


def load_audio_encoder(path: Path, name: str, allow_pickle: bool = False) -> AudioEncoder:
    """An AUDIO_ENCODER from a single file (told by its keys)."""
    from transformers import Wav2Vec2Model

    try:
        raw = read_state_dict(path, allow_pickle=allow_pickle)
    except ModelFileError as exc:
        raise ModelFileError(f"input 'audio_encoder_name': {exc}") from None
    sd = wav2vec2_state_dict(raw, name)
    config = wav2vec2_config(sd, name)
    model = Wav2Vec2Model(config)
    result = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    missing = [k for k in result.missing_keys if k != "masked_spec_embed"]
    if missing or result.unexpected_keys:
        raise ModelFileError(f"input 'audio_encoder_name': {name!r} does not fit a wav2vec 2.0 encoder "
                             f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
    return AudioEncoder(model.eval(), do_normalize=config.do_stable_layer_norm, name=name)


def audio_encoder_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, FOLDER)


class AudioEncoderLoader(Node):
    """Load an audio encoder (wav2vec 2.0) from models/audio_encoders. Stricter than ComfyUI: a file
    whose keys do not fit the encoder is an error (ComfyUI warns); Whisper encoders are not supported yet."""

    category = "loaders"
    audio_encoder_name = Input(COMBO, choices=audio_encoder_choices)
    outputs = (Output(AUDIO_ENCODER),)

    @classmethod
    def fingerprint(cls, paths: Paths | None = None, audio_encoder_name: str | None = None, **_: Any) -> Any:
        try:
            return file_identity(resolve_model(paths or Paths(), FOLDER, audio_encoder_name or ""))
        except ModelFileError:
            return ("missing", audio_encoder_name)

    def execute(self, audio_encoder_name: str) -> tuple:
        try:
            path = resolve_model(self.ctx.paths, FOLDER, audio_encoder_name)
        except ModelFileError as exc:
            raise ModelFileError(f"AudioEncoderLoader: input 'audio_encoder_name': {exc}") from None
        try:
            allow_pickle = bool(self.ctx.service("models").allow_pickle)
        except Exception:  # no model manager in this context: pickles stay refused
            allow_pickle = False
        return (load_audio_encoder(path, audio_encoder_name, allow_pickle),)


class AudioEncoderEncode(Node):
    """Encode audio with an audio encoder (resampled to its 16 kHz, channels averaged): the last and every
    hidden state, for Wan 2.2 S2V."""

    category = "conditioning"
    audio_encoder = Input(AUDIO_ENCODER)
    audio = Input("AUDIO")
    outputs = (Output(AUDIO_ENCODER_OUTPUT),)

    def execute(self, audio_encoder: AudioEncoder, audio: Any) -> tuple:
        if not isinstance(audio_encoder, AudioEncoder):
            raise TypeError("AudioEncoderEncode: input 'audio_encoder' must come from AudioEncoderLoader")
        from nodegraph_nodes.media.audio import check_audio

        waveform, rate = check_audio(audio, "AudioEncoderEncode")
        if waveform.shape[-1] * MODEL_RATE < 400 * rate:
            raise ValueError(f"AudioEncoderEncode: input 'audio' is {waveform.shape[-1] / rate * 1000:.1f} ms long; "
                             "wav2vec 2.0 needs at least 25 ms (400 samples at 16 kHz)")
        return (audio_encoder.encode(waveform, rate, self.ctx.device),)
