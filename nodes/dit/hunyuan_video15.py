"""HunyuanVideo 1.5 (480p / 720p, text- and image-to-video) through diffusers: the transformer
(``HunyuanVideo15Transformer3DModel``) from a single file (UNETLoader), the MODEL value and its runner, and the
3D causal VAE (``AutoencoderKLHunyuanVideo15``, VAELoader). Key names: :mod:`.hunyuan_video15_convert`; text
encoders: :mod:`.hunyuan_video15_text`; nodes: :mod:`.hunyuan_video15_nodes`. Nothing is downloaded.

Facts (ComfyUI's): latent format HunyuanVideo15 (32 channels, scale factor 1.03682, no shift), video latents
5-D ``[B, 32, 1 + (frames - 1) / 4, h / 16, w / 16]``; default sampling SD3-type discrete flow with shift 7
(network time = sigma · 1000; templates set ``ModelSamplingSD3``); the network predicts the flow velocity. The
transformer's input is the noisy latent, then the image-to-video latent (``concat_latent_image`` in the model's
space; zeros without one) and one mask channel (``1 - concat_mask``; zeros without one) — 65 channels. Its
text is Qwen2.5-VL's states, the ByT5 states of the prompt's quoted text (``conditioning_byt5small``, absent
when the prompt quotes nothing) and, for image-to-video, the start image's SigLIP states
(``clip_vision_output.last_hidden_state``); without them diffusers' text-to-video inputs are given (zero image
states, which the network masks out).

Config from the weights' shapes; the head width is not in the weights: 128 (every release) when the width is a
multiple of 128, else one head; RoPE axes (h/8, 7h/16, 7h/16) of the head width h ((16, 56, 56) for 128).
The VAE's block widths and layers come from its shapes; its compression is the released 16× spatial, 4×
temporal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.formats import LatentFormat
from nodegraph_nodes.dit.hunyuan_video15_convert import transformer_to_diffusers, vae_to_diffusers
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 7.0
CHANNELS = 32
#: ComfyUI's HunyuanVideo15 latent format (no preview colours are published: previews are gray)
HV15 = LatentFormat(CHANNELS, 1.03682, 0.0, ((0.0, 0.0, 0.0),) * CHANNELS, (0.0, 0.0, 0.0))
SPATIAL, TEMPORAL = 16, 4
BYT5_HIDDEN = 2048  # diffusers' ByT5 projection width (fixed in its class)

# -- transformer files ------------------------------------------------------------------------------------

PREFIXES = ("model.diffusion_model.", "")
MARKERS = ("img_in.proj.weight", "txt_in.individual_token_refiner.blocks.0.norm1.weight",
           "cond_type_embedding.weight", "byt5_in.fc1.weight")


def detect_transformer(keys) -> str | None:
    """The prefix of a HunyuanVideo 1.5 transformer file's keys (Tencent's or ComfyUI's names), else ``None``."""
    keyset = set(keys)
    for prefix in PREFIXES:
        if all(prefix + m in keyset for m in MARKERS):
            return prefix
    return None


def rope_axes(head: int) -> tuple[int, int, int]:
    return head // 8, 7 * head // 16, 7 * head // 16


def transformer_config(sd: dict) -> dict:
    """``HunyuanVideo15Transformer3DModel`` config from diffusers-layout weights' shapes."""
    try:
        patch = sd["x_embedder.proj.weight"]
        proj = sd["proj_out.weight"]
        ff = sd["transformer_blocks.0.ff.net.0.proj.weight"]
        byt5 = sd["context_embedder_2.linear_1.weight"]
        text = sd["context_embedder.proj_in.weight"]
        image = sd["image_embedder.norm_in.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the HunyuanVideo 1.5 transformer weights lack {exc.args[0]}") from None
    inner = int(patch.shape[0])
    head = 128 if inner % 128 == 0 else inner
    pt, ph, pw = (int(s) for s in patch.shape[2:])
    if ph != pw:
        raise ModelFileError(f"the HunyuanVideo 1.5 patch embedding has unequal sides ({ph}×{pw})")
    if int(byt5.shape[0]) != BYT5_HIDDEN:
        raise ModelFileError(f"the HunyuanVideo 1.5 ByT5 projection is {int(byt5.shape[0])} wide; diffusers' class "
                             f"has {BYT5_HIDDEN}")
    return {"in_channels": int(patch.shape[1]), "out_channels": int(proj.shape[0]) // (pt * ph * pw),
            "num_attention_heads": inner // head, "attention_head_dim": head,
            "num_layers": count_indices(sd, r"transformer_blocks\.(\d+)\."),
            "num_refiner_layers": count_indices(sd, r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)\."),
            "mlp_ratio": int(ff.shape[0]) / inner, "patch_size": ph, "patch_size_t": pt, "qk_norm": "rms_norm",
            "text_embed_dim": int(text.shape[1]), "text_embed_2_dim": int(byt5.shape[1]),
            "image_embed_dim": int(image.shape[0]), "rope_theta": 256.0, "rope_axes_dim": rope_axes(head),
            "use_meanflow": False}


def build_transformer(sd: dict, dtype: torch.dtype):
    from diffusers import HunyuanVideo15Transformer3DModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.qwen_image import refuse_integer_weights

    refuse_integer_weights(sd, "HunyuanVideo 1.5 transformer")
    sd = transformer_to_diffusers(sd)
    return _instantiate(HunyuanVideo15Transformer3DModel, transformer_config(sd), sd, dtype,
                        "HunyuanVideo 1.5 transformer")


def load_transformer(path: Path, prefix: str, manager, device: str,
                     weight_dtype: str = "default") -> "HunyuanVideo15Model":
    """UNETLoader for a HunyuanVideo 1.5 transformer file."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.loading import flow_dtype

    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device),
                                     build_transformer)
    return HunyuanVideo15Model(handle, "hunyuan_video15", source=str(path))


# -- MODEL ------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class HunyuanVideo15Model(FlowModel):
    """MODEL: a HunyuanVideo 1.5 transformer (5-D 32-channel video latents)."""

    family: str = "hunyuan_video15"

    @property
    def format(self) -> LatentFormat:
        return HV15

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT)

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim == 5:  # the first frame
            latent = latent[:, :, 0]
        return self.format.preview(self.process_latent_out(latent))

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, HunyuanVideo15Runner)

    def lora_patch(self, sd: dict, strength: float, name: str):
        raise ValueError(f"LoRA {name}: LoRAs for HunyuanVideo 1.5 are not read yet")


class HunyuanVideo15Runner(NetRunner):
    """One run's calls of a ``HunyuanVideo15Transformer3DModel``: one call per conditioning part (its rows
    batched), as diffusers calls it once for the prompt and once for the negative prompt."""

    def __init__(self, net, device: str):
        super().__init__(net, device)
        self.in_channels = int(net.config.in_channels)
        self.image_dim = int(net.config.image_embed_dim)
        self.byt5_dim = int(net.config.text_embed_2_dim)

    def _concat(self, x: torch.Tensor, part: CondPart) -> torch.Tensor:
        """The image-to-video channels after the noisy latent (ComfyUI's HunyuanVideo15 ``concat_cond``): the
        start latent in the model's space, then ``1 - concat_mask``; zeros without them."""
        extra = self.in_channels - x.shape[1]
        zeros = torch.zeros(x.shape[0], extra, *x.shape[2:])
        image, mask = part.extras.get("concat_latent_image"), part.extras.get("concat_mask")
        if image is not None:
            if tuple(image.shape[2:]) != tuple(x.shape[2:]):
                raise ValueError(f"HunyuanVideo15ImageToVideo's start latent {list(image.shape)} does not fit the "
                                 f"sampled latent {list(x.shape)}: sample the latent it gives")
            zeros[:, :extra - 1] = _rows(HV15.process_in(image.float()), x.shape[0])[:, :extra - 1]
        if mask is not None:
            mask = 1.0 - mask.float().mean(dim=1, keepdim=True)
            if mask.shape[2] < x.shape[2]:
                mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, x.shape[2] - mask.shape[2]))
            zeros[:, extra - 1:] = _rows(mask, x.shape[0])
        return zeros.to(x.device, x.dtype)

    def _text(self, part: CondPart) -> dict:
        states = _rows(part.cond.to(self.device, self.dtype), part.rows)
        mask = part.extras.get("attention_mask")
        mask = (torch.ones(states.shape[:2], device=self.device) if mask is None
                else _rows(mask.reshape(1, -1).to(self.device).float(), part.rows))
        byt5 = part.extras.get("conditioning_byt5small")
        if byt5 is None:  # no quoted text: no glyph tokens
            byt5 = torch.zeros(part.rows, 0, self.byt5_dim)
        byt5 = _rows(byt5.to(self.device, self.dtype), part.rows)
        vision = part.extras.get("clip_vision_output")
        if vision is None:  # text-to-video: zero image states (masked out by the network)
            image = torch.zeros(part.rows, 1, self.image_dim, device=self.device, dtype=self.dtype)
        else:
            image = _rows(vision.last_hidden_state.to(self.device, self.dtype), part.rows)
            if image.shape[-1] != self.image_dim:
                raise ValueError(f"the CLIP vision output is {image.shape[-1]} wide; this HunyuanVideo 1.5 model "
                                 f"takes SigLIP states {self.image_dim} wide (sigclip_vision_patch14_384)")
        return {"encoder_hidden_states": states, "encoder_attention_mask": mask,
                "encoder_hidden_states_2": byt5,
                "encoder_attention_mask_2": torch.ones(byt5.shape[:2], device=self.device),
                "image_embeds": image}

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 5 or x_in.shape[1] != CHANNELS:
            raise ValueError(f"HunyuanVideo 1.5 samples video latents [B, 32, frames, h, w]; this latent is "
                             f"{list(x_in.shape)} (make it with EmptyHunyuanVideo15Latent)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        outs, row = [], 0
        for part in parts:
            xs = x[row:row + part.rows]
            if self.in_channels > xs.shape[1]:
                xs = torch.cat([xs, self._concat(xs, part)], dim=1)
            outs.append(self.net(hidden_states=xs, timestep=t[row:row + part.rows], return_dict=False,
                                 **self._text(part))[0])
            row += part.rows
        return torch.cat(outs)


# -- VAE --------------------------------------------------------------------------------------------------

ORIGINAL_VAE_MARKERS = ("decoder.conv_in.conv.weight", "encoder.down.0.block.0.conv1.conv.weight")
DIFFUSERS_VAE_MARKERS = ("decoder.conv_in.conv.weight", "encoder.down_blocks.0.resnets.0.conv1.conv.weight")


def vae_layout(keys) -> str | None:
    """``original`` / ``diffusers`` for a HunyuanVideo 1.5 VAE file's keys, else ``None``."""
    keyset = set(keys)
    for layout, markers in (("original", ORIGINAL_VAE_MARKERS), ("diffusers", DIFFUSERS_VAE_MARKERS)):
        if all(m in keyset for m in markers):
            return layout
    return None


def vae_config(sd: dict) -> dict:
    """``AutoencoderKLHunyuanVideo15`` config from diffusers-layout weights' shapes."""
    try:
        conv_in = sd["decoder.conv_in.conv.weight"]
        blocks = count_indices(sd, r"encoder\.down_blocks\.(\d+)\.")
        widths = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"].shape[0]) for i in range(blocks)]
        return {"in_channels": int(sd["encoder.conv_in.conv.weight"].shape[1]),
                "out_channels": int(sd["decoder.conv_out.conv.weight"].shape[0]),
                "latent_channels": int(conv_in.shape[1]), "block_out_channels": widths,
                "layers_per_block": count_indices(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
                "spatial_compression_ratio": SPATIAL, "temporal_compression_ratio": TEMPORAL,
                "scaling_factor": HV15.scale}
    except KeyError as exc:
        raise ModelFileError(f"the HunyuanVideo 1.5 VAE weights lack {exc.args[0]}") from None


def build_vae(sd: dict, dtype: torch.dtype):
    from diffusers import AutoencoderKLHunyuanVideo15

    from nodegraph_nodes.diffusion.checkpoint import _instantiate
    from nodegraph_nodes.dit.qwen_image import ImageVae

    if vae_layout(sd.keys()) == "original":
        sd = vae_to_diffusers(sd)
    config = vae_config(sd)
    if config["latent_channels"] != CHANNELS:
        raise ModelFileError(f"this VAE has {config['latent_channels']} latent channels; HunyuanVideo 1.5's has 32 "
                             "(a HunyuanVideo 1.0 VAE is not read yet)")
    return ImageVae(_instantiate(AutoencoderKLHunyuanVideo15, config, sd, dtype, "HunyuanVideo 1.5 VAE"))


def is_vae_file(path: Path, allow_pickle: bool) -> bool:
    from nodegraph_nodes.dit.loading import file_keys

    return path.is_file() and vae_layout(file_keys(path, allow_pickle)) is not None


def load_vae(path: Path, manager, device: str):
    """VAELoader for HunyuanVideo 1.5's VAE (one file): 16× spatial, 4× temporal compression, 32 channels."""
    from nodegraph_nodes.diffusion.components import VaeModel, _manager_key
    from nodegraph_nodes.diffusion.files import read_state_dict
    from nodegraph_nodes.dit.loading import flow_dtype

    dtype = flow_dtype(device)
    handle = manager.load(_manager_key(path, "vae", dtype),
                          lambda: build_vae(read_state_dict(path, allow_pickle=manager.allow_pickle), dtype))
    return VaeModel(handle, SPATIAL, CHANNELS)
