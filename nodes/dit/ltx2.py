"""LTX-2 (video + audio) through diffusers: the all-in-one checkpoint's parts (``LTX2VideoTransformer3DModel``,
``LTX2TextConnectors``, ``AutoencoderKLLTX2Video``, ``AutoencoderKLLTX2Audio``, ``LTX2Vocoder``), its Gemma 3 text
encoder (transformers ``Gemma3TextModel``), the MODEL value and its runner, LoRAs. Nodes: :mod:`.ltx2_nodes`,
:mod:`.ltx2_guides`; the audio-video latent packing: :mod:`.ltx2_latent`. Nothing is downloaded.

Files (detected from the key names):

* ``ltx-2-19b-*.safetensors`` (CheckpointLoaderSimple, LTXVAudioVAELoader, LTXAVTextEncoderLoader's
  ``ckpt_name``): the transformer under ``model.diffusion_model.`` in LTX's original names
  (``patchify_proj``, ``adaln_single``, ``av_ca_a2v_gate_adaln_single`` …, converted with diffusers' LTX-2
  converter), the text connectors under ``model.diffusion_model.video_embeddings_connector.`` /
  ``audio_embeddings_connector.`` and ``text_embedding_projection.aggregate_embed``, the video VAE under
  ``vae.`` (``per_channel_statistics`` are its latent mean / std), the audio VAE under ``audio_vae.`` and
  the vocoder under ``vocoder.``.
* Gemma 3 (``gemma_3_12B_it*.safetensors``, LTXAVTextEncoderLoader's ``text_encoder``): the language model in
  transformers' names, under ``model.`` / ``model.language_model.`` / ``language_model.model.`` (a vision
  tower, if any, is not used). Tokenizer (the files hold none): ``<file>.tokenizer/``, else
  ``models/text_encoders/gemma3_tokenizer/`` (the ``tokenizer`` folder of a Gemma 3 release).

Configs come from the weights' shapes; what the weights do not hold is LTX-2 19B's (head widths 128 video /
64 audio where the width allows, else one head; "split" RoPE; VAE block structure; vocoder strides = kernel/2
unless the 19B kernels) and Gemma 3 12B's (RoPE, sliding window, query scale). Only LTX-2.0 models (a
shared text projection) are built; LTX-2.3 / 2.5 files are refused with a clear message.

Text encoding (diffusers' ``LTX2Pipeline`` recipe): the prompt left-padded to 1024 tokens, every Gemma hidden
state (embeddings + each layer) stacked, then the connectors (per-layer masked normalization, projection,
1D transformers with learnable registers) give the video and audio contexts; the CONDITIONING holds them
side by side (video | audio) and their mask in ``attention_mask``. Prompt weights are not parsed.

Sampling (ComfyUI's LTXV): flux-type flow schedule with shift 2.37, the network time is sigma × 1000, the
network predicts the velocity. Per-token timesteps come from the noise mask (LTXVImgToVideoInplace's
conditioned frames get time 0; tokens with a negative mask — a dilated IC-LoRA guide's fillers — are left out of
the sequence, their output 0). A conditioning's ``ref_audio`` (LTXVReferenceAudio, ID-LoRA) leads the audio
tokens: :mod:`.ltx2_reference_audio`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, read_state_dict
from nodegraph_nodes.dit.convert import count_indices, dequantize_scaled_fp8
from nodegraph_nodes.dit.formats import LatentFormat
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 2.37
TEXT_LENGTH = 1024
TOKENIZER_FOLDER = "gemma3_tokenizer"
DIT = "model.diffusion_model."
AV_MARKER = DIT + "av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight"
VAE_MARKER = "vae.per_channel_statistics.mean-of-means"
AUDIO_MARKER = "audio_vae.per_channel_statistics.mean-of-means"
CONNECTOR_PARTS = ("video_embeddings_connector.", "audio_embeddings_connector.")
PROJECTION = "text_embedding_projection.aggregate_embed."

# -- detection --------------------------------------------------------------------------------------------


def is_checkpoint(keys) -> bool:
    """An LTX-2 audio-video all-in-one file (transformer + video VAE at least)."""
    keyset = set(keys)
    return AV_MARKER in keyset and VAE_MARKER in keyset


def has_audio_vae(keys) -> bool:
    return AUDIO_MARKER in set(keys)


def read_parts(path: Path, manager, prefixes: tuple[str, ...]) -> dict:
    """The tensors of ``path`` whose names start with one of ``prefixes`` (a .safetensors file is read only for
    those: the all-in-one files are tens of GB), ComfyUI's ``fp8_scaled`` weights dequantized."""
    if Path(path).suffix.lower() in (".safetensors", ".sft"):
        from nodegraph_nodes.diffusion.quantized import read_safetensors

        try:
            sd = read_safetensors(Path(path), want=lambda k: k.startswith(prefixes))  # quantised layers dequantised
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{Path(path).name} is not a readable .safetensors file ({exc})") from None
    else:
        sd = {k: v for k, v in read_state_dict(path, allow_pickle=manager.allow_pickle).items()
              if k.startswith(prefixes)}
    return dequantize_scaled_fp8(sd)


_count = count_indices


def _part(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    try:
        return sd[key]
    except KeyError:
        raise ModelFileError(f"the LTX-2 {what} weights lack {key}") from None


# -- transformer ------------------------------------------------------------------------------------------


def transformer_config(sd: dict) -> dict:
    """``LTX2VideoTransformer3DModel`` config from diffusers-named weights' shapes (LTX-2.0)."""
    if "prompt_adaln.linear.weight" in sd or "caption_projection.linear_1.weight" not in sd:
        raise ModelFileError("this LTX transformer is not LTX-2.0 (no shared caption projection): LTX-2.3 / 2.5 "
                             "models are not supported yet")
    proj = _need(sd, "proj_in.weight", "transformer")
    audio = _need(sd, "audio_proj_in.weight", "transformer")
    inner, audio_inner = int(proj.shape[0]), int(audio.shape[0])
    head = 128 if inner % 128 == 0 else inner
    audio_head = 64 if audio_inner % 64 == 0 else audio_inner
    return {
        "in_channels": int(proj.shape[1]), "out_channels": int(_need(sd, "proj_out.weight", "transformer").shape[0]),
        "patch_size": 1, "patch_size_t": 1, "num_attention_heads": inner // head, "attention_head_dim": head,
        "cross_attention_dim": int(_need(sd, "transformer_blocks.0.attn2.to_k.weight", "transformer").shape[1]),
        "audio_in_channels": int(audio.shape[1]),
        "audio_out_channels": int(_need(sd, "audio_proj_out.weight", "transformer").shape[0]),
        "audio_num_attention_heads": audio_inner // audio_head, "audio_attention_head_dim": audio_head,
        "audio_cross_attention_dim": int(sd["transformer_blocks.0.audio_attn2.to_k.weight"].shape[1]),
        "num_layers": _count(sd, r"transformer_blocks\.(\d+)\."),
        "caption_channels": int(sd["caption_projection.linear_1.weight"].shape[1]),
        "rope_type": "split", "rope_double_precision": True, "cross_attn_timestep_scale_multiplier": 1000,
    }


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.qwen_image import refuse_integer_weights

    sd = {k: v for k, v in sd.items() if not k.startswith(CONNECTOR_PARTS)}
    refuse_integer_weights(sd, "LTX-2 transformer")
    if "patchify_proj.weight" in sd:
        sd = convert_ltx2_transformer_to_diffusers(dict(sd))
    return _instantiate(LTX2VideoTransformer3DModel, transformer_config(sd), sd, dtype, "LTX-2 transformer")


# -- text connectors --------------------------------------------------------------------------------------


def connectors_weights(sd: dict) -> dict:
    """The connectors' weights of a whole file (``model.diffusion_model.*_embeddings_connector.`` and
    ``text_embedding_projection.``) in diffusers' ``LTX2TextConnectors`` names."""
    out = {}
    for k, v in sd.items():
        if k.startswith(PROJECTION):
            out["text_proj_in." + k[len(PROJECTION):]] = v
        elif k.startswith(DIT) and k[len(DIT):].startswith(CONNECTOR_PARTS):
            new = k[len(DIT):].replace("video_embeddings_connector", "video_connector").replace(
                "audio_embeddings_connector", "audio_connector").replace("transformer_1d_blocks", "transformer_blocks")
            out[new.replace("q_norm", "norm_q").replace("k_norm", "norm_k")] = v
    if "text_proj_in.weight" not in out:
        raise ModelFileError("the LTX-2 checkpoint has no text projection (text_embedding_projection.aggregate_embed):"
                             " LTXAVTextEncoderLoader.ckpt_name needs the LTX-2 checkpoint itself")
    return out


def connectors_config(sd: dict) -> dict:
    proj = sd["text_proj_in.weight"]
    caption = int(proj.shape[0])
    head = 128 if caption % 128 == 0 else caption
    config = {"caption_channels": caption, "text_proj_in_factor": int(proj.shape[1]) // caption,
              "connector_rope_base_seq_len": 4096, "rope_theta": 10000.0, "rope_double_precision": True,
              "causal_temporal_positioning": False, "rope_type": "split"}
    for part in ("video", "audio"):
        registers = sd.get(f"{part}_connector.learnable_registers")
        config.update({
            f"{part}_connector_num_attention_heads": caption // head, f"{part}_connector_attention_head_dim": head,
            f"{part}_connector_num_layers": _count(sd, rf"{part}_connector\.transformer_blocks\.(\d+)\."),
            f"{part}_connector_num_learnable_registers": None if registers is None else int(registers.shape[0])})
    return config


def build_connectors(sd: dict, dtype: torch.dtype):
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    return _instantiate(LTX2TextConnectors, connectors_config(sd), sd, dtype, "LTX-2 text connectors")


# -- Gemma 3 ----------------------------------------------------------------------------------------------


def gemma3_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, intermediate: int):
    """Gemma 3's text config with the 12B model's settings that the weights do not hold."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim, intermediate_size=intermediate, query_pre_attn_scalar=256,
        sliding_window=1024, max_position_embeddings=131072, use_cache=False,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})


GEMMA_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")


def gemma3_weights(sd: dict) -> dict | None:
    """The Gemma 3 language model's weights (``Gemma3TextModel`` names) of a file, else ``None``."""
    for prefix in GEMMA_PREFIXES:
        if prefix + "layers.0.self_attn.q_norm.weight" in sd and prefix + "embed_tokens.weight" in sd:
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)
                    and not k[len(prefix):].startswith(("vision_tower", "multi_modal_projector", "language_model"))}
    return None


def is_gemma3(keys) -> bool:
    return gemma3_weights(dict.fromkeys(keys)) is not None


def build_gemma3(sd: dict, dtype: torch.dtype):
    from transformers import Gemma3TextModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    emb, q = sd["embed_tokens.weight"], sd["layers.0.self_attn.q_proj.weight"]
    head_dim = int(sd["layers.0.self_attn.q_norm.weight"].shape[0])
    cfg = gemma3_config(int(emb.shape[0]), int(emb.shape[1]), _count(sd, r"layers\.(\d+)\."),
                        int(q.shape[0]) // head_dim, int(sd["layers.0.self_attn.k_proj.weight"].shape[0]) // head_dim,
                        head_dim, int(sd["layers.0.mlp.gate_proj.weight"].shape[0]))
    return _instantiate(Gemma3TextModel, cfg, sd, dtype, "Gemma 3 text encoder", is_transformers=True)


class TextStack(torch.nn.Module):
    """Gemma 3 and the LTX-2 connectors as one module: tokens → (video | audio contexts, mask)."""

    def __init__(self, gemma, connectors):
        super().__init__()
        self.gemma = gemma
        self.connectors = connectors

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        out = self.gemma(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        dtype = next(self.connectors.parameters()).dtype
        states = torch.stack(out.hidden_states, dim=-1).flatten(2, 3).to(dtype)
        video, audio, keep = self.connectors(states, mask, padding_side="left")
        return torch.cat([video, audio], dim=-1), keep


def find_tokenizer(models_dir: Path, near: Path) -> Path:
    for c in (near.with_name(near.stem + ".tokenizer"), near.parent / TOKENIZER_FOLDER,
              Path(models_dir) / "text_encoders" / TOKENIZER_FOLDER):
        if (c / "tokenizer.json").is_file() or (c / "tokenizer.model").is_file():
            return c
    raise ModelFileError(f"no tokenizer found for {near.name} (tokenizer.json or tokenizer.model). Model files hold "
                         f"no tokenizer and this engine never downloads: copy the 'tokenizer' folder of a Gemma 3 "
                         f"release (e.g. Lightricks/LTX-2) into models/text_encoders/{TOKENIZER_FOLDER}")


@dataclass(frozen=True, eq=False)
class Ltx2Clip(ManagerOwned):
    """CLIP for LTX-2: Gemma 3 plus the checkpoint's text connectors (``handle``: a :class:`TextStack`)."""

    handle: Any
    tokenizer: Any
    source: str = ""
    family: str = "ltx2"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "Ltx2Clip":
        if layer != -1:
            raise ValueError("CLIPSetLastLayer: LTX-2's text encoder uses every Gemma layer")
        return self

    def describe(self) -> str:
        return "ltx2 text encoder (Gemma 3 + connectors)"

    def encode_text(self, ctx, text: str) -> list:
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        tok = self.tokenizer([text.strip()], padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                             add_special_tokens=True, return_tensors="pt")
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as module, torch.inference_mode():
            context, keep = module(tok["input_ids"].to(ctx.device), tok["attention_mask"].to(ctx.device))
        return [[context.float().cpu(), {"attention_mask": keep.cpu()}]]


def load_text_encoder(te_path: Path, ckpt_path: Path, manager, device: str, models_dir: Path) -> Ltx2Clip:
    """LTXAVTextEncoderLoader: Gemma 3 from ``te_path`` and the text connectors from the LTX-2 checkpoint."""
    from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer
    from nodegraph_nodes.dit.loading import _stored, file_keys, flow_dtype

    if not is_gemma3(file_keys(te_path, manager.allow_pickle)):
        raise ModelFileError(f"LTXAVTextEncoderLoader.text_encoder takes a Gemma 3 file (gemma_3_12B_it*.safetensors);"
                             f" {te_path.name} is not one")
    if not is_checkpoint(file_keys(ckpt_path, manager.allow_pickle)):
        raise ModelFileError(f"LTXAVTextEncoderLoader.ckpt_name takes an LTX-2 checkpoint (ltx-2-19b-*.safetensors); "
                             f"{ckpt_path.name} is not one")
    tokenizer = load_llm_tokenizer(find_tokenizer(models_dir, te_path))
    dtype = flow_dtype(device)

    def loader():
        gemma_sd = gemma3_weights(dequantize_scaled_fp8(read_state_dict(te_path, allow_pickle=manager.allow_pickle)))
        conn_sd = connectors_weights(read_parts(ckpt_path, manager, tuple(DIT + p for p in CONNECTOR_PARTS)
                                                + (PROJECTION,)))
        return TextStack(build_gemma3(gemma_sd, _stored(manager, gemma_sd, dtype)),
                         build_connectors(conn_sd, dtype)).eval()

    key = _manager_key(te_path, f"ltx2_text:{ckpt_path.resolve()}", dtype)
    return Ltx2Clip(manager.load(key, loader, compute_dtype=dtype), tokenizer, source=f"{te_path}+{ckpt_path}")


# -- video VAE --------------------------------------------------------------------------------------------


def video_vae_config(sd: dict) -> dict:
    """``AutoencoderKLLTX2Video`` config (diffusers names): widths and depths from the shapes, the 19B's
    structure otherwise."""
    patch = int(math.isqrt(int(_need(sd, "encoder.conv_in.conv.weight", "VAE").shape[1]) // 3))
    strides = (4, 2, 8, 8)  # spatial, temporal, spatiotemporal ×2: the downsamplers' channel folding
    blocks = [int(sd[f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.weight"].shape[0]) * strides[i]
              for i in range(4)]
    layers = [_count(sd, rf"encoder\.down_blocks\.{i}\.resnets\.(\d+)\.") for i in range(4)]
    layers.append(_count(sd, r"encoder\.mid_block\.resnets\.(\d+)\."))
    dec = [2 * int(sd[f"decoder.up_blocks.{i}.resnets.0.conv1.conv.weight"].shape[0]) for i in range(3)]
    dec_layers = [_count(sd, r"decoder\.mid_block\.resnets\.(\d+)\.")]
    dec_layers += [_count(sd, rf"decoder\.up_blocks\.{i}\.resnets\.(\d+)\.") for i in range(3)]
    return {"in_channels": 3, "out_channels": 3, "latent_channels": int(sd["decoder.conv_in.conv.weight"].shape[1]),
            "block_out_channels": tuple(blocks), "decoder_block_out_channels": tuple(reversed(dec)),
            "layers_per_block": tuple(layers), "decoder_layers_per_block": tuple(dec_layers),
            "spatio_temporal_scaling": (True,) * 4, "decoder_spatio_temporal_scaling": (True,) * 3,
            "decoder_inject_noise": (False,) * 4,
            "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            "upsample_residual": (True,) * 3, "upsample_factor": (2, 2, 2),
            "timestep_conditioning": "decoder.time_embedder.timestep_embedder.linear_1.weight" in sd,
            "patch_size": patch, "patch_size_t": 1, "encoder_causal": True, "decoder_causal": False,
            "spatial_compression_ratio": patch * 8, "temporal_compression_ratio": 8}


def _image_vae_base():
    from nodegraph_nodes.dit.qwen_image import ImageVae

    return ImageVae


class LtxVideoVae(_image_vae_base()):
    """The LTX-2 video VAE as the VAE value's module (a video VAE seen as an image VAE, like Wan's):
    normalized 5-D latents ↔ frames (``decode`` gives the frames of one video as a batch of images;
    ``encode_video`` takes one video ``[1, 3, F, H, W]``, ``encode`` images one by one)."""

    def _stats(self, z):
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(z.device, z.dtype)
        return mean, std

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        if z.ndim == 4:
            z = z.unsqueeze(2)
        mean, std = self._stats(z)
        z = z * std / self.vae.config.scaling_factor + mean
        video = self.vae.decode(z, None, return_dict=False)[0]
        return (video.permute(0, 2, 1, 3, 4).flatten(0, 1),)

    def encode_video(self, x: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(x).latent_dist.mode()
        mean, std = self._stats(z)
        return (z - mean) * self.vae.config.scaling_factor / std

    def encode(self, x: torch.Tensor):
        from nodegraph_nodes.dit.qwen_image import _Encoded, _Mode

        return _Encoded(_Mode(self.encode_video(x.unsqueeze(2))))


def build_video_vae(sd: dict, dtype: torch.dtype) -> LtxVideoVae:
    from diffusers import AutoencoderKLLTX2Video
    from diffusers.loaders.single_file_utils import convert_ltx2_vae_to_diffusers

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    if "per_channel_statistics.mean-of-means" in sd:
        sd = convert_ltx2_vae_to_diffusers(dict(sd))
    vae = _instantiate(AutoencoderKLLTX2Video, video_vae_config(sd), sd, dtype, "LTX-2 video VAE")
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    # the compression under the names the temporal tiling of VAEDecodeTiled reads (Wan's config names)
    vae.register_to_config(scale_factor_temporal=int(vae.temporal_compression_ratio),
                           scale_factor_spatial=int(vae.spatial_compression_ratio))
    return LtxVideoVae(vae)


# -- audio VAE and vocoder --------------------------------------------------------------------------------


def audio_vae_config(sd: dict) -> dict:
    base = int(_need(sd, "encoder.conv_in.conv.weight", "audio VAE").shape[0])
    levels = _count(sd, r"encoder\.down\.(\d+)\.")
    mult = [int(sd[f"encoder.down.{i}.block.0.conv1.conv.weight"].shape[0]) // base for i in range(levels)]
    latent = int(sd["decoder.conv_in.conv.weight"].shape[1])
    stats = int(sd["latents_mean"].shape[0])
    return {"base_channels": base, "output_channels": int(sd["decoder.conv_out.conv.weight"].shape[0]),
            "ch_mult": tuple(mult), "num_res_blocks": _count(sd, r"encoder\.down\.0\.block\.(\d+)\."),
            "attn_resolutions": None, "in_channels": int(sd["encoder.conv_in.conv.weight"].shape[1]), "resolution": 256,
            "latent_channels": latent, "norm_type": "pixel", "causality_axis": "height", "dropout": 0.0,
            "mid_block_add_attention": False, "sample_rate": 16000, "mel_hop_length": 160, "is_causal": True,
            "mel_bins": stats // latent * 4, "double_z": True}


VOCODER_19B = {(16, 15, 8, 4, 4): [6, 5, 2, 2, 2]}


def vocoder_config(sd: dict) -> dict:
    ups = _count(sd, r"upsamplers\.(\d+)\.")
    kernels = [int(sd[f"upsamplers.{i}.weight"].shape[2]) for i in range(ups)]
    factors = VOCODER_19B.get(tuple(kernels), [k // 2 for k in kernels])
    per = _count(sd, r"resnets\.(\d+)\.") // max(ups, 1)
    res_kernels = [int(sd[f"resnets.{j}.convs1.0.weight"].shape[2]) for j in range(per)]
    return {"in_channels": int(sd["conv_in.weight"].shape[1]), "hidden_channels": int(sd["conv_in.weight"].shape[0]),
            "out_channels": int(sd["conv_out.weight"].shape[0]), "upsample_kernel_sizes": kernels,
            "upsample_factors": factors, "resnet_kernel_sizes": res_kernels,
            "resnet_dilations": [[1, 3, 5]] * per, "leaky_relu_negative_slope": 0.1,
            "output_sampling_rate": int(round(16000 / 160 * math.prod(factors)))}


class LtxAudioVae(torch.nn.Module):
    """LTX-2's audio VAE with its vocoder: normalized latents ``[B, C, T, M]`` ↔ waveforms."""

    def __init__(self, vae, vocoder):
        super().__init__()
        self.vae = vae
        self.vocoder = vocoder

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_bins(self) -> int:
        return int(self.vae.config.mel_bins) // int(self.vae.mel_compression_ratio)

    @property
    def sample_rate(self) -> int:
        return int(self.vocoder.config.output_sampling_rate)

    def latents_per_second(self) -> float:
        cfg = self.vae.config
        return cfg.sample_rate / cfg.mel_hop_length / float(self.vae.temporal_compression_ratio)

    def _packed_stats(self, z):
        return (self.vae.latents_mean.to(z.device, z.dtype), self.vae.latents_std.to(z.device, z.dtype))

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrograms ``[B, C, T, bins]`` → normalized latents (the distribution's mean)."""
        z = self.vae.encode(mel).latent_dist.mode()
        c, m = z.shape[1], z.shape[3]
        packed = z.transpose(1, 2).flatten(2, 3)
        mean, std = self._packed_stats(packed)
        return ((packed - mean) / std).unflatten(2, (c, m)).transpose(1, 2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, c, t, m = z.shape
        packed = z.transpose(1, 2).flatten(2, 3)
        mean, std = self._packed_stats(packed)
        z = (packed * std + mean).unflatten(2, (c, m)).transpose(1, 2)
        mel = self.vae.decode(z, return_dict=False)[0]
        return self.vocoder(mel)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    mels = f / f_sp
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular mel filters ``[n_fft / 2 + 1, n_mels]`` on Slaney's scale with Slaney's area normalization,
    0 Hz to Nyquist (torchaudio's ``melscale_fbanks(…, norm="slaney", mel_scale="slaney")``)."""
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)
    m_pts = torch.linspace(float(_hz_to_mel(torch.tensor(0.0, dtype=torch.float64))),
                           float(_hz_to_mel(torch.tensor(sample_rate / 2.0, dtype=torch.float64))), n_mels + 2,
                           dtype=torch.float64)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    return (fb * (2.0 / (f_pts[2:n_mels + 2] - f_pts[:n_mels]))[None, :]).float()


def log_mel(waveform: torch.Tensor, sample_rate: int, n_mels: int, hop: int, n_fft: int = 1024) -> torch.Tensor:
    """LTX-2's audio front end: ``[B, C, samples]`` at ``sample_rate`` → ``log(max(mel, 1e-5))`` ``[B, C, T, n_mels]``
    (magnitude STFT, Hann window of ``n_fft``, centred with reflection, Slaney mel filters)."""
    b, c, n = waveform.shape
    flat = waveform.reshape(b * c, n).float()
    if n_fft // 2 >= n:
        flat = torch.nn.functional.pad(flat, (0, n_fft // 2 + 1 - n))
    spec = torch.stft(flat, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=torch.hann_window(n_fft),
                      center=True, pad_mode="reflect", return_complex=True).abs()
    mel = torch.matmul(mel_filters(n_fft, n_mels, sample_rate).T, spec)
    return torch.log(mel.clamp(min=1e-5)).reshape(b, c, n_mels, -1).transpose(2, 3)


def audio_weights(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):].replace("per_channel_statistics.mean-of-means", "latents_mean").replace(
        "per_channel_statistics.std-of-means", "latents_std"): v for k, v in sd.items() if k.startswith(prefix)}


def vocoder_weights(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if k.startswith("vocoder."):
            new = k[len("vocoder."):].replace("ups.", "upsamplers.").replace("resblocks", "resnets")
            out[new.replace("conv_pre", "conv_in").replace("conv_post", "conv_out")] = v
    return out


def build_audio_vae(sd: dict, dtype: torch.dtype) -> LtxAudioVae:
    from diffusers import AutoencoderKLLTX2Audio
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    asd, vsd = audio_weights(sd, "audio_vae."), vocoder_weights(sd)
    if not vsd:
        raise ModelFileError("the LTX-2 checkpoint has no vocoder (vocoder.*)")
    vae = _instantiate(AutoencoderKLLTX2Audio, audio_vae_config(asd), asd, dtype, "LTX-2 audio VAE")
    voc = _instantiate(LTX2Vocoder, vocoder_config(vsd), vsd, dtype, "LTX-2 vocoder")
    return LtxAudioVae(vae, voc).eval()


@dataclass(frozen=True, eq=False)
class AudioVae(ManagerOwned):
    """VAE value of LTXVAudioVAELoader: the audio VAE + vocoder (``handle``) and its latent geometry."""

    handle: Any
    latent_channels: int
    latent_bins: int
    sample_rate: int
    latents_per_second: float
    family: str = "ltx2_audio"


def load_audio_vae(path: Path, manager, device: str) -> AudioVae:
    from nodegraph_nodes.dit.loading import file_keys, flow_dtype

    if not has_audio_vae(file_keys(path, manager.allow_pickle)):
        raise ModelFileError(f"LTXVAudioVAELoader.ckpt_name takes an LTX-2 checkpoint with an audio VAE "
                             f"(audio_vae.* and vocoder.*); {path.name} has none")
    dtype = torch.float32 if not device.startswith("cuda") else flow_dtype(device)

    def loader():
        return build_audio_vae(read_parts(path, manager, ("audio_vae.", "vocoder.")), dtype)

    handle = manager.load(_manager_key(path, "ltx2_audio_vae", dtype), loader)
    module = handle.get()
    return AudioVae(handle, module.latent_channels, module.latent_bins, module.sample_rate,
                    module.latents_per_second())


LORA_RENAMES = (("audio_patchify_proj", "audio_proj_in"), ("patchify_proj", "proj_in"),
                ("av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift"),
                ("av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate"),
                ("av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift"),
                ("av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"))


def lora_to_diffusers(sd: dict) -> dict:
    """A LoRA in LTX's original module names → diffusers' names under ``transformer.`` (connector and text
    projection layers dropped: the CLIP side is not patched)."""
    out = {}
    for key, value in sd.items():
        prefix = next((p for p in ("model.diffusion_model.", "diffusion_model.") if key.startswith(p)), None)
        if prefix is None:
            out[key] = value
            continue
        rest = key[len(prefix):]
        if rest.startswith(CONNECTOR_PARTS) or rest.startswith("text_embedding_projection"):
            continue
        for a, b in LORA_RENAMES:
            rest = rest.replace(a, b)
        if rest.startswith("adaln_single."):
            rest = "time_embed." + rest[len("adaln_single."):]
        elif rest.startswith("audio_adaln_single."):
            rest = "audio_time_embed." + rest[len("audio_adaln_single."):]
        out["transformer." + rest] = value
    return out


# -- MODEL and runner -------------------------------------------------------------------------------------

LTXV = LatentFormat(128, 1.0, 0.0, tuple((0.0, 0.0, 0.0) for _ in range(128)), (0.0, 0.0, 0.0))


@dataclass(frozen=True, eq=False)
class Ltx2Model(FlowModel):
    """MODEL: an LTX-2 audio-video transformer. ``layout``: the audio-video latent's layout of the run
    (set by the sampling core from the LATENT, :meth:`for_latent`)."""

    family: str = "ltx2"
    layout: Any = None

    @property
    def format(self):
        return LTXV

    @property
    def latent_channels(self) -> int:
        return 128

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.flux_flow, DEFAULT_SHIFT)

    def lora_patch(self, sd: dict, strength: float, name: str):
        """LoRAs in LTX's names (ComfyUI / Lightricks: ``diffusion_model.transformer_blocks.N.attn1.to_q.lora_A``)
        or diffusers' (``transformer.…``) on the transformer; the text connectors' layers are not patched."""
        from nodegraph_nodes.dit.lora import flow_lora_patch

        return flow_lora_patch("ltx2", self.handle.get(), lora_to_diffusers(sd), strength, name)

    def for_latent(self, latent: dict) -> "Ltx2Model":
        from nodegraph_nodes.dit.ltx2_latent import layout_of

        return replace(self, layout=layout_of(latent))

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor:
        """A rough preview ``[h, w, 3]``: the first video frame's first three latent channels, standardized (no
        RGB factors for the LTX latent space are known here)."""
        from nodegraph_nodes.dit.ltx2_latent import unpack

        if self.layout is not None and latent.ndim == 4:
            latent = unpack(latent.float(), self.layout)[0]
        if latent.ndim == 5:
            latent = latent[:, :, 0]
        if latent.ndim != 4 or latent.shape[1] < 3:
            return torch.full((8, 8, 3), 0.5)
        rgb = latent[0, :3].float()
        rgb = (rgb - rgb.mean(dim=(1, 2), keepdim=True)) / (4 * rgb.std(dim=(1, 2), keepdim=True).clamp(min=1e-6))
        return (rgb + 0.5).clamp(0, 1).permute(1, 2, 0).cpu()

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, Ltx2Runner, self.layout)


class Ltx2Runner(NetRunner):
    """One run's calls of an ``LTX2VideoTransformer3DModel`` on packed audio-video latents."""

    def __init__(self, net, device: str, layout):
        super().__init__(net, device)
        if layout is None:
            raise ValueError("LTX-2 models sample audio and video together: combine the video latent "
                             "(EmptyLTXVLatentVideo) and the audio latent (LTXVEmptyLatentAudio) with LTXVConcatAVLatent")
        self.layout = layout
        self.mask: torch.Tensor | None = None
        self.latent_image: torch.Tensor | None = None
        self.video_width = int(net.caption_projection.linear_1.in_features)

    def set_latent(self, latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> None:
        """The run's starting latent and noise mask: masked-out tokens (mask 0, e.g. LTXVImgToVideoInplace's
        frames) reach the network clean, with time 0 (ComfyUI's LTXV ``scale_latent_inpaint``)."""
        self.mask = denoise_mask
        self.latent_image = latent_image

    def _token_times(self, t: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token network times of the video and audio tokens (the noise mask scales them)."""
        lay = self.layout
        if self.mask is None:
            return t[:, None].expand(-1, lay.video_tokens), t[:, None].expand(-1, lay.audio_tokens)
        mask = _rows(self.mask[:, 0, 0].to(t.device, t.dtype), rows)
        return t[:, None] * mask[:, :lay.video_tokens], t[:, None] * mask[:, lay.video_tokens:lay.tokens]

    def _kept_video_tokens(self) -> torch.Tensor | None:
        """The video tokens the transformer sees (a bool index), or None for all: tokens whose noise mask is
        negative (the fillers of a dilated IC-LoRA guide, :mod:`.ltx2_iclora`) are left out, as ComfyUI does."""
        if self.mask is None:
            return None
        keep = self.mask.reshape(self.mask.shape[0], -1)[0, :self.layout.video_tokens] >= 0
        return None if bool(keep.all()) else keep.to(self.device)

    def _video_coords(self, keyframes: torch.Tensor | None, rows: int, fps: float) -> torch.Tensor | None:
        """The video tokens' RoPE coordinates; LTXVAddGuide's appended frames take their ``keyframe_idxs``."""
        if keyframes is None:
            return None
        lay = self.layout
        coords = self.net.rope.prepare_video_coords(rows, lay.frames, lay.height, lay.width, self.device, fps=fps)
        keys = _rows(keyframes.to(self.device, coords.dtype), rows).clone()
        if keys.shape[2] > coords.shape[2]:
            raise ValueError("LTXVAddGuide's keyframes do not fit the latent: crop them with LTXVCropGuides before "
                             "sampling another latent")
        keys[:, 0] = keys[:, 0] / fps
        coords[:, :, -keys.shape[2]:] = keys
        return coords

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        from nodegraph_nodes.dit.ltx2_latent import pack_tokens, unpack_tokens
        from nodegraph_nodes.dit.ltx2_reference_audio import REF_AUDIO, audio_stream

        lay = self.layout
        x = x_in.to(self.device, self.dtype)
        if self.mask is not None and self.latent_image is not None:
            keep = _rows(self.mask.to(self.device, self.dtype), x.shape[0])
            x = x * keep + _rows(self.latent_image.to(self.device, self.dtype), x.shape[0]) * (1 - keep)
        t = (timestep.to(self.device, torch.float32).reshape(-1) * 1000.0).expand(x.shape[0])
        video, audio = unpack_tokens(x, lay)
        outs, row = [], 0
        for part in parts:
            n = part.rows
            ctx = _rows(part.cond.to(self.device, self.dtype), n)
            mask = part.extras.get("attention_mask")
            mask = None if mask is None else _rows(mask.to(self.device), n)
            frame_rate = float(part.extras.get("frame_rate", 25.0))
            tv, ta = self._token_times(t[row:row + n], n)
            coords = self._video_coords(part.extras.get("keyframe_idxs"), n, frame_rate)
            tokens, keep = video[row:row + n], self._kept_video_tokens()
            if keep is not None:  # a dilated IC-LoRA guide's fillers (negative noise mask) stay out
                if coords is None:
                    coords = self.net.rope.prepare_video_coords(n, lay.frames, lay.height, lay.width, self.device,
                                                                fps=frame_rate)
                tokens, tv, coords = tokens[:, keep], tv[:, keep], coords[:, :, keep]
            stream = audio_stream(self.net, audio[row:row + n], ta, part.extras.get(REF_AUDIO), self.device)
            v, a = self.net(
                hidden_states=tokens, audio_hidden_states=stream.tokens,
                encoder_hidden_states=ctx[..., :self.video_width], audio_encoder_hidden_states=ctx[..., self.video_width:],
                timestep=tv.to(self.dtype), audio_timestep=stream.times.to(self.dtype),
                sigma=t[row:row + n].to(self.dtype), audio_sigma=t[row:row + n].to(self.dtype),
                encoder_attention_mask=mask, audio_encoder_attention_mask=mask,
                num_frames=lay.frames, height=lay.height, width=lay.width, fps=frame_rate,
                audio_num_frames=lay.audio_frames, video_coords=coords, audio_coords=stream.coords,
                use_cross_timestep=True, return_dict=False)
            if keep is not None:
                full = v.new_zeros((n, lay.video_tokens, v.shape[2]))
                full[:, keep] = v
                v = full
            outs.append(pack_tokens(v.float(), stream.target(a).float(), lay))
            row += n
        return torch.cat(outs)


TRANSFORMER_MARKERS = ("av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight",
                       "av_cross_attn_video_a2v_gate.emb.timestep_embedder.linear_1.weight")


def detect_transformer(keys) -> str | None:
    """The prefix of an LTX-2 audio-video transformer's keys (``model.diffusion_model.`` or none; LTX's or
    diffusers' names), else ``None``."""
    keyset = set(keys)
    for prefix in (DIT, ""):
        if any(prefix + m in keyset for m in TRANSFORMER_MARKERS):
            return prefix
    return None


def load_transformer(path: Path, prefix: str, manager, device: str, weight_dtype: str = "default") -> "Ltx2Model":
    """UNETLoader on an LTX-2 transformer file (a transformer-only split of the all-in-one file)."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.loading import flow_dtype

    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device),
                                     lambda sd, stored: build_transformer(sd, stored))
    return Ltx2Model(handle, "ltx2", source=str(path))


def load_checkpoint(path: Path, manager, device: str, models_dir: Path):
    """CheckpointLoaderSimple on an LTX-2 all-in-one file: MODEL, CLIP ``None`` (ComfyUI's too: the text encoder
    comes from LTXAVTextEncoderLoader) and the video VAE."""
    from nodegraph_nodes.dit.loading import _stored, flow_dtype

    dtype = flow_dtype(device)

    def dit_loader():
        sd = _part(read_parts(path, manager, (DIT,)), DIT)
        return build_transformer(sd, _stored(manager, sd, dtype)).eval()

    def vae_loader():
        return build_video_vae(_part(read_parts(path, manager, ("vae.",)), "vae."), dtype).eval()

    model = Ltx2Model(manager.load(_manager_key(path, "transformer:default", dtype), dit_loader, compute_dtype=dtype,
                                   placed=True), "ltx2", source=str(path))
    vae = VaeModel(manager.load(_manager_key(path, "ltx2_vae", dtype), vae_loader), 32, 128)
    return model, None, vae
