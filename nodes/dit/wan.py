"""Wan 2.1 / 2.2 A14B video: the transformer (diffusers ``WanTransformer3DModel``), its UMT5-XXL text encoder
(transformers ``UMT5EncoderModel``; CLIPLoader type ``wan``), the MODEL value's runner and the loading of
ComfyUI's repackaged split files and of ``WanPipeline`` diffusers folders. Nothing is downloaded.

Facts (ComfyUI's): latent format Wan 2.1 (16 channels, ``(latent - mean) / std`` per channel, the same
as Qwen-Image's), video latents 5-D ``[B, 16, 1 + (frames - 1) / 4, h / 8, w / 8]``; default sampling
SD3-type discrete flow with shift 8 (network time = sigma · 1000; templates set ``ModelSamplingSD3``);
the network predicts the flow velocity. The VAE is Wan 2.1's 3D causal VAE (VAELoader reads it like
Qwen-Image's: :func:`nodegraph_nodes.dit.qwen_image.build_vae`); VAEDecode of a video latent gives its
frames as an IMAGE batch.

Key layouts (detected from the names):

* transformer: ComfyUI's ``wan2.1_t2v_*.safetensors`` keep Wan's original names (``patch_embedding``,
  ``text_embedding.0``, ``blocks.N.self_attn.q``, ``head.modulation`` …), bare or under
  ``model.diffusion_model.``; converted with diffusers' Wan converter. Diffusers-layout files
  (``condition_embedder.…``, ``blocks.N.attn1.to_q``) load as is. The config comes from the shapes; the
  head width is not in the weights: 128 (every release) when the width is a multiple of 128, else one head.
  Image-to-video transformers have 36 input channels (the runner appends WanImageToVideo's mask and start
  latent, :mod:`.wan_i2v`); Wan 2.1 I2V ones also an image embedder (``img_emb.…``, ``k_img``/``v_img``) that
  attends to the start image's CLIP vision penultimate states, FLF2V ones an image position embedding
  (``img_emb.emb_pos``) over the start and end images' states side by side.
* text encoder: ``umt5_xxl_*.safetensors`` in transformers' layout (``shared.weight``,
  ``encoder.block.N.layer.0.SelfAttention.relative_attention_bias`` in every block — UMT5, not T5);
  ``*_fp8_scaled`` files are dequantized on load. Tokenizer (the files hold none): ``<file>.tokenizer/``,
  else ``models/text_encoders/umt5_tokenizer/`` (the ``tokenizer`` folder of Wan-AI's diffusers release).

Text encoding (ComfyUI's and diffusers' recipe): the prompt with the end token, padded to 512 tokens, the
last hidden states with the padded positions zeroed. Prompt weights ``(word:1.2)`` are not parsed (the
text goes to the model as written; ComfyUI would weight them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import _manager_key
from nodegraph_nodes.diffusion.files import ModelFileError, is_diffusers_folder, read_json
from nodegraph_nodes.dit.convert import count_indices
from nodegraph_nodes.dit.file_loading import (diffusers_sub_loader, load_encoder_handle, load_transformer_handle,
                                              require_subfolders)
from nodegraph_nodes.dit.llm_loading import load_llm_tokenizer  # AutoTokenizer, local files only
from nodegraph_nodes.dit.model import FlowModel, _rows
from nodegraph_nodes.dit.qwen_image import WAN21, open_runner, refuse_integer_weights
from nodegraph_nodes.dit import wan_fun_adapters, wan_vace
from nodegraph_nodes.dit.runner_common import NetRunner
from nodegraph_nodes.dit.text import masked_states
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

DEFAULT_SHIFT = 8.0
TEXT_LENGTH = 512
TOKENIZER_FOLDER = "umt5_tokenizer"

# -- transformer files ------------------------------------------------------------------------------

PREFIXES = ("model.diffusion_model.", "")
ORIGINAL_MARKERS = ("patch_embedding.weight", "text_embedding.0.weight", "blocks.0.self_attn.q.weight")
DIFFUSERS_MARKERS = ("patch_embedding.weight", "condition_embedder.text_embedder.linear_1.weight",
                     "blocks.0.attn1.to_q.weight")


def detect_transformer(keys) -> tuple[str, str] | None:
    """``(layout, prefix)`` of a Wan transformer file's keys (``original`` / ``diffusers``), else ``None``."""
    keyset = set(keys)
    for prefix in PREFIXES:
        for layout, markers in (("original", ORIGINAL_MARKERS), ("diffusers", DIFFUSERS_MARKERS)):
            if all(prefix + m in keyset for m in markers):
                return layout, prefix
    return None


_count = count_indices


def transformer_config(sd: dict) -> dict:
    """``WanTransformer3DModel`` config from diffusers-layout weights' shapes (text-to-video models)."""
    try:
        patch = sd["patch_embedding.weight"]
        proj = sd["proj_out.weight"]
        text = sd["condition_embedder.text_embedder.linear_1.weight"]
        time = sd["condition_embedder.time_embedder.linear_1.weight"]
        ffn = sd["blocks.0.ffn.net.0.proj.weight"]
    except KeyError as exc:
        raise ModelFileError(f"the Wan transformer weights lack {exc.args[0]}") from None
    image = {}
    if "condition_embedder.image_embedder.norm1.weight" in sd:  # Wan 2.1 I2V: CLIP vision states attended to
        image = {"image_dim": int(sd["condition_embedder.image_embedder.norm1.weight"].shape[0]),
                 "added_kv_proj_dim": int(sd["blocks.0.attn2.add_k_proj.weight"].shape[1])}
        pos = sd.get("condition_embedder.image_embedder.pos_embed")
        if pos is not None:  # Wan 2.1 FLF2V: start and end images' states, with positions
            image["pos_embed_seq_len"] = int(pos.shape[1])
    inner = int(patch.shape[0])
    head = 128 if inner % 128 == 0 else inner
    size = tuple(int(s) for s in patch.shape[2:])
    out = int(proj.shape[0]) // (size[0] * size[1] * size[2])
    return {"patch_size": size, "num_attention_heads": inner // head, "attention_head_dim": head,
            "in_channels": int(patch.shape[1]), "out_channels": out, "text_dim": int(text.shape[1]),
            "freq_dim": int(time.shape[1]), "ffn_dim": int(ffn.shape[0]),
            "num_layers": _count(sd, r"blocks\.(\d+)\."), "cross_attn_norm": "blocks.0.norm2.weight" in sd,
            "qk_norm": "rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in sd else None, "eps": 1e-6,
            **image}


def build_transformer(sd: dict, layout: str, dtype: torch.dtype):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, "Wan transformer")
    sd, adapters = wan_fun_adapters.split_adapters(sd)  # Fun Camera / Fun Control adapters keep their names
    if layout == "original":
        sd = dict(sd)
        if "img_emb.emb_pos" in sd:  # FLF2V's image position embedding (not in diffusers' converter)
            sd["condition_embedder.image_embedder.pos_embed"] = sd.pop("img_emb.emb_pos")
        sd = convert_wan_transformer_to_diffusers(sd)
    config = transformer_config(sd)
    if wan_vace.is_vace(sd):  # Wan 2.1 VACE (:mod:`.wan_vace`)
        config.update(wan_vace.vace_config(sd, config["num_layers"]))
        return _instantiate(wan_vace.transformer_class(), config, sd, dtype, "Wan VACE transformer")
    if adapters:  # Wan Fun Camera / Fun Control v1.1, 2.2 (:mod:`.wan_fun_adapters`)
        config.update(wan_fun_adapters.adapter_config(adapters))
        return _instantiate(wan_fun_adapters.transformer_class(), config, {**sd, **adapters}, dtype,
                            "Wan Fun transformer")
    return _instantiate(WanTransformer3DModel, config, sd, dtype, "Wan transformer")


def load_transformer(path: Path, keys, manager, device: str, weight_dtype: str = "default") -> "WanModel":
    """UNETLoader for a Wan transformer file."""
    from nodegraph_nodes.dit.loading import flow_dtype

    from nodegraph_nodes.dit import wan22_5b

    from nodegraph_nodes.dit import wan_scail

    if (scail := wan_scail.detect_prefix(keys)) is not None:  # SCAIL-2 (Wan 2.1 I2V names + pose / mask convolutions)
        return wan_scail.load_transformer(path, scail, manager, device, weight_dtype)
    layout, prefix = detect_transformer(keys)
    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device),
                                     lambda sd, stored: build_transformer(sd, layout, stored))
    variant = wan22_5b.variant_of_channels(wan22_5b.file_out_channels(path, prefix) or 16)
    return WanModel(handle, "wan", variant=variant, source=str(path))


# -- MODEL ------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class WanModel(FlowModel):
    """MODEL: a Wan 2.1 transformer (5-D video latents)."""

    family: str = "wan"

    @property
    def format(self):
        from nodegraph_nodes.dit import wan22_5b

        return wan22_5b.WAN22 if self.variant == wan22_5b.VARIANT else WAN21

    @property
    def model_sampling(self) -> msl.ModelSampling:
        return self.sampling_or(msl.sd3_flow, DEFAULT_SHIFT)

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.ndim == 5:  # the first frame
            latent = latent[:, :, 0]
        return self.format.preview(self.process_latent_out(latent))

    def open_runner(self, ctx, latent_shape: tuple):
        from nodegraph_nodes.dit import wan22_5b

        runner = wan22_5b.runner_class() if self.variant == wan22_5b.VARIANT else WanRunner
        return open_runner(self, ctx, latent_shape, runner)

    def lora_patch(self, sd: dict, strength: float, name: str):
        """LoraLoader: diffusers-named or Wan-original-named LoRAs (:mod:`.wan_lora`)."""
        from nodegraph_nodes.dit.wan_lora import wan_lora_patch

        return wan_lora_patch(self.handle.get(), sd, strength, name)


class WanRunner(NetRunner):
    """One run's calls of a ``WanTransformer3DModel``: one call per conditioning part (its rows batched)."""

    def __init__(self, net, device: str):
        super().__init__(net, device)
        self.in_channels = int(net.config.in_channels)
        self.image_dim = getattr(net.config, "image_dim", None)
        self.image_positions = getattr(net.config, "pos_embed_seq_len", None)
        self.vace = getattr(net.config, "vace_layers", None) is not None
        self.fun = bool(getattr(net.config, "in_dim_control_adapter", None)
                        or getattr(net.config, "in_dim_ref_conv", None))  # Fun Camera / Control adapters

    def _concat(self, x: torch.Tensor, part: CondPart) -> torch.Tensor:
        """The extra input channels of image-to-video, Fun and camera models (ComfyUI's Wan ``concat_cond``):
        ``concat_latent_image`` in the model's space (each latent-format block of channels normalized: Fun
        Control's control and start latents side by side; zeros without one). Where the model takes exactly
        those channels (Wan 2.1 Fun Control, Fun Camera) that is all; where it takes four more, ``1 -
        concat_mask`` as four channels (zeros without a mask) goes first, or at channel ``concat_mask_index``
        (Wan22FunControlToVideo: after the control latent)."""
        extra = self.in_channels - x.shape[1]
        image = part.extras.get("concat_latent_image")
        if image is None:
            return torch.zeros(x.shape[0], extra, *x.shape[2:], device=x.device, dtype=x.dtype)
        if tuple(image.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(f"the conditioning's concat latent {list(image.shape)} (WanImageToVideo and the other "
                             f"Wan …ToVideo nodes) does not fit the sampled latent {list(x.shape)}: sample the "
                             "latent that node gives")
        from nodegraph_nodes.dit.wan22_5b import WAN22

        fmt = WAN22 if x.shape[1] == WAN22.channels else WAN21  # the sampled latent's format (Wan 2.2 5B: 48)
        image = image.float()
        image = torch.cat([fmt.process_in(image[:, i:i + fmt.channels])
                           for i in range(0, image.shape[1], fmt.channels)], dim=1)
        image = _rows(image, x.shape[0])
        if image.shape[1] == extra:
            return image.to(x.device, x.dtype)
        if image.shape[1] < extra - 4:
            raise ValueError(f"this Wan model takes {extra} extra input channels; the conditioning's concat latent "
                             f"has {image.shape[1]} (+4 mask channels): use the …ToVideo node made for this model")
        image = image[:, :extra - 4]
        mask = part.extras.get("concat_mask")
        if mask is None:
            mask = torch.zeros(x.shape[0], 4, *x.shape[2:])
        else:
            mask = mask.float()
            if mask.shape[1] != 4:
                mask = mask.mean(dim=1, keepdim=True)
            mask = 1.0 - mask
            if mask.shape[2] < x.shape[2]:
                mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, x.shape[2] - mask.shape[2]))
            mask = _rows(mask.expand(-1, 4, -1, -1, -1), x.shape[0])
        index = int(part.extras.get("concat_mask_index", 0) or 0)
        return torch.cat([image[:, :index], mask, image[:, index:]], dim=1).to(x.device, x.dtype)

    def prepare(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's input and timesteps from the sampled ones (Wan 2.2 5B's runner changes them)."""
        return x, t

    def _image_states(self, part: CondPart) -> torch.Tensor:
        """Wan 2.1 I2V: the start image's CLIP vision penultimate states (WanImageToVideo's
        ``clip_vision_output``)."""
        output = part.extras.get("clip_vision_output")
        if output is None:
            raise ValueError("this Wan 2.1 image-to-video model needs the start image's CLIP vision output: connect "
                             "CLIPVisionEncode to WanImageToVideo.clip_vision_output")
        states = _rows(output.penultimate_hidden_states.to(self.device, self.dtype), part.rows)
        if self.image_positions:  # FLF2V: start and end states side by side; diffusers takes them as two rows
            if states.shape[1] != self.image_positions:
                raise ValueError(f"this Wan 2.1 first-last-frame model needs the CLIP vision outputs of both the start "
                                 f"and the end image ({self.image_positions} states; these are {states.shape[1]}): "
                                 "connect WanFirstLastFrameToVideo.clip_vision_start_image and clip_vision_end_image")
            states = states.reshape(states.shape[0] * 2, states.shape[1] // 2, states.shape[2])
        return states

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        if x_in.ndim != 5:
            raise ValueError(f"Wan models sample video latents [B, 16, frames, h, w]; this latent is "
                             f"{list(x_in.shape)} (make it with EmptyHunyuanLatentVideo)")
        x = x_in.to(self.device, self.dtype)
        t = timestep.to(self.device, self.dtype).reshape(-1).expand(x.shape[0])
        x, t = self.prepare(x, t)
        outs, row = [], 0
        for part in parts:
            states = _rows(part.cond.to(self.device, self.dtype), part.rows)
            xs = x[row:row + part.rows]
            if self.in_channels > xs.shape[1]:
                xs = torch.cat([xs, self._concat(xs, part)], dim=1)
            extra = {}
            if self.image_dim is not None:
                extra["encoder_hidden_states_image"] = self._image_states(part)
            if self.vace:
                extra.update(wan_vace.control_inputs(self.net, part, xs, self.device, self.dtype))
            if self.fun:
                extra.update(wan_fun_adapters.adapter_inputs(self.net, part, xs, self.device, self.dtype))
            outs.append(self.net(hidden_states=xs, timestep=t[row:row + part.rows],
                                 encoder_hidden_states=states, return_dict=False, **extra)[0])
            row += part.rows
        return torch.cat(outs)


# -- text encoder -----------------------------------------------------------------------------------

def is_umt5(keys) -> bool:
    """UMT5 (every block has its own relative attention bias), in transformers' layout."""
    keyset = set(keys)
    return ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in keyset
            and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keyset)


def umt5_config(sd: dict):
    from transformers import UMT5Config

    embed = sd.get("shared.weight", sd.get("encoder.embed_tokens.weight"))
    if embed is None:
        raise ModelFileError("the UMT5 weights lack shared.weight / encoder.embed_tokens.weight")
    bias = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    heads = int(bias.shape[1])
    inner = int(sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0])
    return UMT5Config(vocab_size=int(embed.shape[0]), d_model=int(embed.shape[1]), d_kv=inner // heads,
                      d_ff=int(sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
                      num_layers=_count(sd, r"encoder\.block\.(\d+)\."), num_heads=heads,
                      relative_attention_num_buckets=int(bias.shape[0]), feed_forward_proj="gated-gelu",
                      is_encoder_decoder=False, use_cache=False)


def build_umt5(sd: dict, dtype: torch.dtype):
    from transformers import UMT5EncoderModel

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    sd = dict(sd)
    if "shared.weight" not in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
    return _instantiate(UMT5EncoderModel, umt5_config(sd), sd, dtype, "UMT5 text encoder", is_transformers=True)


def find_tokenizer(models_dir: Path, near: Path) -> Path:
    for c in (near.with_name(near.stem + ".tokenizer"), near.parent / TOKENIZER_FOLDER,
              Path(models_dir) / "text_encoders" / TOKENIZER_FOLDER):
        if (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file():
            return c
    raise ModelFileError(f"no tokenizer found for {near.name} (tokenizer.json or spiece.model). Model files hold "
                         f"no tokenizer and this engine never downloads: copy the 'tokenizer' folder of "
                         f"Wan-AI/Wan2.1-T2V-1.3B-Diffusers into models/text_encoders/{TOKENIZER_FOLDER}")


@dataclass(frozen=True, eq=False)
class WanClip(ManagerOwned):
    """CLIP for Wan: a UMT5 encoder (``handle``) and its tokenizer."""

    handle: Any
    tokenizer: Any
    source: str = ""
    family: str = "wan"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "WanClip":
        if layer != -1:
            raise ValueError("CLIPSetLastLayer: Wan's UMT5 encoder uses its last layer only")
        return self

    def describe(self) -> str:
        return "wan text encoder (UMT5-XXL)"

    def encode_text(self, ctx, text: str) -> list:
        tok = self.tokenizer(text, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return [[masked_states(ctx, self.handle, tok), {}]]


def load_text_encoder(path: Path, manager, device: str, models_dir: Path, where: str = "CLIPLoader") -> WanClip:
    """CLIPLoader type ``wan``: a UMT5-XXL file."""
    from nodegraph_nodes.dit.loading import file_keys, flow_dtype

    if not is_umt5(file_keys(path, manager.allow_pickle)):
        raise ModelFileError(f"{where}.type wan takes a UMT5-XXL encoder (umt5_xxl_*.safetensors); {path.name} "
                             "is not one")
    tokenizer = load_llm_tokenizer(find_tokenizer(models_dir, path))
    dtype = flow_dtype(device)

    return WanClip(load_encoder_handle(path, "umt5", manager, dtype, build_umt5), tokenizer, source=str(path))


# -- diffusers folders ------------------------------------------------------------------------------

def is_wan_folder(folder: Path) -> bool:
    return is_diffusers_folder(folder) and read_json(folder / "model_index.json").get("_class_name") == "WanPipeline"


def load_diffusers_folder(folder: Path, manager, device: str):
    """MODEL, CLIP, VAE of a ``WanPipeline`` diffusers folder (its scheduler's ``flow_shift`` is the default
    shift)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from nodegraph_nodes.diffusion.components import VaeModel
    from nodegraph_nodes.dit.loading import flow_dtype
    from nodegraph_nodes.dit.qwen_image import ImageVae

    dtype = flow_dtype(device)
    require_subfolders(folder, ("transformer", "vae", "text_encoder", "tokenizer"))
    sub_loader = diffusers_sub_loader(folder, manager, dtype)

    shift = None
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        config = read_json(sched)
        value = config.get("flow_shift", config.get("shift"))
        shift = float(value) if value is not None else None
    handle = manager.load(_manager_key(folder / "transformer", "transformer:default", dtype),
                          sub_loader(WanTransformer3DModel, "transformer"), compute_dtype=dtype, placed=True)
    from nodegraph_nodes.dit import wan22_5b

    out_channels = int(read_json(folder / "transformer" / "config.json").get("out_channels", 16))
    model = WanModel(handle, "wan", variant=wan22_5b.variant_of_channels(out_channels), source=str(folder),
                     default_shift=shift)
    te = manager.load(_manager_key(folder / "text_encoder", "text_encoder", dtype),
                      sub_loader(UMT5EncoderModel, "text_encoder"), compute_dtype=dtype)
    clip = WanClip(te, load_llm_tokenizer(folder / "tokenizer"), source=str(folder))
    z_dim = int(read_json(folder / "vae" / "config.json").get("z_dim", 16))  # 48: Wan 2.2's VAE (16x smaller)
    vae = VaeModel(manager.load(_manager_key(folder / "vae", "vae", dtype),
                                sub_loader(AutoencoderKLWan, "vae", ImageVae)), 16 if z_dim == 48 else 8, z_dim)
    return model, clip, vae
