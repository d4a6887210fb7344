"""SAM 3 / SAM 3.1 checkpoints (CheckpointLoaderSimple): the file ComfyUI's templates load
(``sam3.1_multiplex_fp16.safetensors``, Comfy-Org/sam3.1) into transformers' ``Sam3Model``.

The file holds Meta's original key layout (facebookresearch/sam3): the detector under ``detector.``
(``backbone.vision_backbone.trunk`` ViT, its FPN ``convs``, ``backbone.language_backbone.encoder`` the
OpenCLIP-style text transformer and ``.resizer`` its projection, ``transformer.encoder|decoder``,
``geometry_encoder``, ``segmentation_head``, ``dot_prod_scoring``) and the video tracker under ``tracker.``.
ComfyUI recognises it by ``detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv.weight``; SAM 3.1
("multiplex") adds ``interactive_convs`` / ``propagation_convs`` necks and has three FPN levels where SAM 3
has four (SAM 3 drops its last, 0.5x level; SAM 3.1 uses all three). The renames to transformers'
names follow transformers' own conversion script (``models/sam3/convert_sam3_to_hf.py``): fused
``qkv`` / ``in_proj_*`` split in three, the class-token row of ``pos_embed`` dropped, the CLIP
``text_projection`` transposed. Sizes come from the weights; head counts from the widths (64 per ViT and
CLIP head, 32 per detector head, as in the released model).

The text side is ComfyUI's SAM3 CLIP: a CLIP tokenizer (vocab.json + merges.txt, found as for SD; none
is downloaded) with 32 positions, padding 0 masked out; ``"a, b:3"`` is two prompts, the second kept up to
three detections (``extras["sam3_multi_cond"]``, as ComfyUI packs it). The conditioning is the text
encoder's last hidden state (1024 wide); ``SAM3_Detect`` applies the ``resizer`` projection itself.

The tracker weights (``tracker.``) are not loaded: SAM 3.1's multiplex tracker has no transformers class.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.components import _manager_key, find_tokenizer, load_tokenizer
from nodegraph_nodes.diffusion.files import ModelFileError, read_state_dict

DETECTOR = "detector."
TRUNK = "backbone.vision_backbone.trunk."
SAM3_KEY = DETECTOR + TRUNK + "blocks.0.attn.qkv.weight"
SAM31_KEY = DETECTOR + "backbone.vision_backbone.propagation_convs.0.conv_1x1.weight"
#: the input side SAM 3 works at (ComfyUI resizes every frame to it)
IMAGE_SIZE = 1008
#: the text encoder's positions (ComfyUI's SAM3 tokenizer: max_length 32)
TEXT_TOKENS = 32

# Meta's names (``detector.`` stripped) → transformers' Sam3Model names, applied in order.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.vision_backbone\.trunk\.pos_embed$", "vision_encoder.backbone.embeddings.position_embeddings"),
    (r"^backbone\.vision_backbone\.trunk\.patch_embed\.proj\.",
     "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (r"^backbone\.vision_backbone\.trunk\.ln_pre\.", "vision_encoder.backbone.layer_norm."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.norm(\d)\.",
     r"vision_encoder.backbone.layers.\1.layer_norm\2."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.attn\.qkv\.",
     r"vision_encoder.backbone.layers.\1.attention.qkv."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.attn\.proj\.",
     r"vision_encoder.backbone.layers.\1.attention.o_proj."),
    (r"^backbone\.vision_backbone\.trunk\.blocks\.(\d+)\.mlp\.", r"vision_encoder.backbone.layers.\1.mlp."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_0\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_1\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.2."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_1x1\.", r"vision_encoder.neck.fpn_layers.\1.proj1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_3x3\.", r"vision_encoder.neck.fpn_layers.\1.proj2."),
    (r"^backbone\.language_backbone\.encoder\.token_embedding\.",
     "text_encoder.text_model.embeddings.token_embedding."),
    (r"^backbone\.language_backbone\.encoder\.positional_embedding$",
     "text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^backbone\.language_backbone\.encoder\.ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (r"^backbone\.language_backbone\.encoder\.text_projection$", "text_encoder.text_projection.weight"),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.attn\.",
     r"text_encoder.text_model.encoder.layers.\1.self_attn."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.ln_(\d)\.",
     r"text_encoder.text_model.encoder.layers.\1.layer_norm\2."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc1."),
    (r"^backbone\.language_backbone\.encoder\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.",
     r"text_encoder.text_model.encoder.layers.\1.mlp.fc2."),
    (r"^backbone\.language_backbone\.resizer\.", "text_projection."),
    (r"^geometry_encoder\.encode\.(\d+)\.cross_attn_image\.", r"geometry_encoder.layers.\1.cross_attn."),
    (r"^geometry_encoder\.encode\.(\d+)\.linear(\d)\.", r"geometry_encoder.layers.\1.mlp.fc\2."),
    (r"^geometry_encoder\.encode\.(\d+)\.norm(\d)\.", r"geometry_encoder.layers.\1.layer_norm\2."),
    (r"^geometry_encoder\.encode\.(\d+)\.", r"geometry_encoder.layers.\1."),
    (r"^geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.cross_attn_image\.", r"detr_encoder.layers.\1.cross_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear(\d)\.", r"detr_encoder.layers.\1.mlp.fc\2."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm(\d)\.", r"detr_encoder.layers.\1.layer_norm\2."),
    (r"^transformer\.encoder\.", "detr_encoder."),
    (r"^transformer\.decoder\.presence_token_head\.layers\.(\d)\.",
     lambda m: f"detr_decoder.presence_head.layer{int(m[1]) + 1}."),
    (r"^transformer\.decoder\.presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (r"^transformer\.decoder\.norm\.", "detr_decoder.output_layer_norm."),
    (r"^transformer\.decoder\.(bbox_embed|instance_bbox_embed|ref_point_head|boxRPB_embed_x|boxRPB_embed_y)"
     r"\.layers\.(\d)\.",
     lambda m: "detr_decoder.{}.layer{}.".format(
         {"bbox_embed": "box_head", "instance_bbox_embed": "instance_box_head", "ref_point_head": "ref_point_head",
          "boxRPB_embed_x": "box_rpb_embed_x", "boxRPB_embed_y": "box_rpb_embed_y"}[m[1]], int(m[2]) + 1)),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear(\d)\.", r"detr_decoder.layers.\1.mlp.fc\2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    (r"^transformer\.decoder\.", "detr_decoder."),
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.(\d)\.", lambda m: f"dot_product_scoring.text_mlp.layer{int(m[1]) + 1}."),
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    (r"^segmentation_head\.(mask_predictor\.)?mask_embed\.layers\.", "mask_decoder.mask_embedder.layers."),
    (r"^segmentation_head\.pixel_decoder\.", "mask_decoder.pixel_decoder."),
    (r"^segmentation_head\.instance_seg_head\.", "mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
)
_COMPILED = tuple((re.compile(p), r) for p, r in _RENAMES)
#: parts of Meta's detector that transformers' Sam3Model has no place for (the one-to-many "instance" queries
#: and boxes of training, the mask-prompt encoder): read and left out, as ComfyUI's own model does
UNUSED = ("detr_decoder.instance_", "geometry_encoder.mask_encoder.")


def is_checkpoint(keys) -> bool:
    """Whether a checkpoint's keys are a SAM 3 / SAM 3.1 file in Meta's layout (ComfyUI's test)."""
    return SAM3_KEY in set(keys)


def rename(key: str) -> str:
    """The transformers name of one detector key (``detector.`` already stripped)."""
    for pattern, repl in _COMPILED:
        key = pattern.sub(repl, key)
    return key


def _split_fused(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``….qkv.*`` and ``….in_proj_weight|bias`` → ``q_proj`` / ``k_proj`` / ``v_proj``; attention
    ``out_proj`` → ``o_proj`` (not in the CLIP text encoder, which keeps ``out_proj``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".qkv." in key or ".in_proj_" in key:
            base, kind = (key.split(".qkv.")[0] + ".", key.rsplit(".", 1)[1]) if ".qkv." in key else \
                (key.split("in_proj_")[0], key.rsplit("in_proj_", 1)[1])
            for name, part in zip(("q_proj", "k_proj", "v_proj"), torch.chunk(value, 3, dim=0)):
                out[f"{base}{name}.{kind}"] = part
        elif ".out_proj." in key and not key.startswith("text_encoder."):
            out[key.replace(".out_proj.", ".o_proj.")] = value
        else:
            out[key] = value
    return out


def to_transformers(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The detector part of a Meta-layout file in transformers' ``Sam3Model`` names (tracker dropped)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(DETECTOR) or not isinstance(value, torch.Tensor):
            continue
        key = key[len(DETECTOR):]
        if key.startswith(("backbone.vision_backbone.interactive_convs.", "backbone.vision_backbone.propagation_convs.",
                           "geometry_encoder.points_")) or key.endswith("freqs_cis"):
            continue  # tracker necks (SAM 3.1), point prompts (transformers' detector has none), RoPE tables
        renamed[rename(key)] = value
    out = _split_fused(renamed)
    pos = out.get("vision_encoder.backbone.embeddings.position_embeddings")
    if pos is not None and int(round((pos.shape[1] - 1) ** 0.5)) ** 2 == pos.shape[1] - 1:
        out["vision_encoder.backbone.embeddings.position_embeddings"] = pos[:, 1:]  # drop the class token row
    proj = out.get("text_encoder.text_projection.weight")
    if proj is not None:
        out["text_encoder.text_projection.weight"] = proj.T.contiguous()
    return out


def _count(sd: dict, prefix: str) -> int:
    ids = {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def infer_config(hf: dict[str, torch.Tensor]) -> dict:
    """``Sam3Config`` keyword arguments for a converted state dict (sizes from the weights)."""
    patch = hf["vision_encoder.backbone.embeddings.patch_embeddings.projection.weight"]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    layers = _count(hf, "vision_encoder.backbone.layers.")
    pos = hf["vision_encoder.backbone.embeddings.position_embeddings"]
    pretrain_grid = int(round(pos.shape[1] ** 0.5))
    step = max(1, layers // 4)  # global attention every quarter (7, 15, 23, 31 of 32)
    grid = IMAGE_SIZE // patch_size
    fpn = int(hf["vision_encoder.neck.fpn_layers.0.proj1.weight"].shape[0])
    token = hf["text_encoder.text_model.embeddings.token_embedding.weight"]
    text_width = int(token.shape[1])
    d = int(hf["text_projection.weight"].shape[0])
    heads = max(1, d // 32)
    return dict(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model", hidden_size=width, num_hidden_layers=layers,
                intermediate_size=int(hf["vision_encoder.backbone.layers.0.mlp.fc1.weight"].shape[0]),
                num_attention_heads=max(1, width // 64), image_size=IMAGE_SIZE, patch_size=patch_size,
                window_size=min(24, pretrain_grid), global_attn_indexes=list(range(step - 1, layers, step)),
                pretrain_image_size=pretrain_grid * patch_size),
            fpn_hidden_size=fpn, scale_factors=[4.0, 2.0, 1.0, 0.5],  # SAM 3.1: the 4th level is padded
            backbone_feature_sizes=[[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]]),
        text_config=dict(
            model_type="clip_text_model", vocab_size=int(token.shape[0]), hidden_size=text_width,
            intermediate_size=int(hf["text_encoder.text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            projection_dim=int(hf["text_encoder.text_projection.weight"].shape[0]),
            num_hidden_layers=_count(hf, "text_encoder.text_model.encoder.layers."),
            num_attention_heads=max(1, text_width // 64),
            max_position_embeddings=int(hf["text_encoder.text_model.embeddings.position_embedding.weight"].shape[0]),
            hidden_act="gelu"),
        geometry_encoder_config=dict(
            hidden_size=d, num_layers=_count(hf, "geometry_encoder.layers."), num_attention_heads=heads,
            intermediate_size=int(hf["geometry_encoder.layers.0.mlp.fc1.weight"].shape[0]),
            roi_size=int(hf["geometry_encoder.boxes_pool_project.weight"].shape[-1])),
        detr_encoder_config=dict(
            hidden_size=d, num_layers=_count(hf, "detr_encoder.layers."), num_attention_heads=heads,
            intermediate_size=int(hf["detr_encoder.layers.0.mlp.fc1.weight"].shape[0])),
        detr_decoder_config=dict(
            hidden_size=d, num_layers=_count(hf, "detr_decoder.layers."), num_attention_heads=heads,
            num_queries=int(hf["detr_decoder.query_embed.weight"].shape[0]),
            intermediate_size=int(hf["detr_decoder.layers.0.mlp.fc1.weight"].shape[0])),
        mask_decoder_config=dict(
            hidden_size=d, num_attention_heads=heads,
            num_upsampling_stages=_count(hf, "mask_decoder.pixel_decoder.conv_layers.")),
    )


def _pad_missing_level(hf: dict[str, torch.Tensor]) -> None:
    """SAM 3.1 has three FPN levels and uses them all; transformers' Sam3Model always drops the last of
    its levels, so a 0.5x level (max-pool + zero convs, whose output is never read) is added."""
    if _count(hf, "vision_encoder.neck.fpn_layers.") != 3:
        return
    w1, w2 = hf["vision_encoder.neck.fpn_layers.2.proj1.weight"], hf["vision_encoder.neck.fpn_layers.2.proj2.weight"]
    hf["vision_encoder.neck.fpn_layers.3.proj1.weight"] = torch.zeros_like(w1)
    hf["vision_encoder.neck.fpn_layers.3.proj1.bias"] = torch.zeros(w1.shape[0], dtype=w1.dtype)
    hf["vision_encoder.neck.fpn_layers.3.proj2.weight"] = torch.zeros_like(w2)
    hf["vision_encoder.neck.fpn_layers.3.proj2.bias"] = torch.zeros(w2.shape[0], dtype=w2.dtype)


def build_model(sd: dict[str, Any], dtype: torch.dtype):
    """transformers' ``Sam3Model`` with the detector weights of a Meta-layout SAM 3 / 3.1 state dict."""
    from transformers import Sam3Config, Sam3Model
    from transformers.initialization import no_init_weights

    hf = to_transformers(sd)
    _pad_missing_level(hf)
    config = Sam3Config(**infer_config(hf))
    with no_init_weights():  # every weight comes from the file; buffers (RoPE tables) are computed
        model = Sam3Model(config)
    missing, unexpected = model.load_state_dict(hf, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    unexpected = [k for k in unexpected if not k.startswith(UNUSED)]
    if missing or unexpected:
        raise ModelFileError(f"SAM 3 checkpoint: {len(missing)} weights missing (e.g. {missing[:3]}), "
                             f"{len(unexpected)} not understood (e.g. {unexpected[:3]}); the file is incomplete "
                             "or of another SAM 3 variant")
    return model.to(dtype).eval()


@dataclass(frozen=True, eq=False)
class Sam3Handle(ManagerOwned):
    """MODEL output of a SAM 3 checkpoint: the manager entry of transformers' ``Sam3Model``."""

    handle: Any
    source: str = ""
    multiplex: bool = False
    family: str = "sam3"

    def describe(self) -> str:
        return f"SAM 3{'.1' if self.multiplex else ''} detector ({Path(self.source).name})"


def parse_prompts(text: str) -> list[tuple[str, int]]:
    """ComfyUI's SAM3 prompt syntax: comma-separated prompts, each with an optional ``:N`` (most
    detections kept for it, default 1); parentheses are dropped."""
    text = text.replace("(", "").replace(")", "")
    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.match(r"^(.+?)\s*:\s*([\d.]+)\s*$", part)
        out.append((m[1].strip(), max(1, round(float(m[2])))) if m else (part, 1))
    return out


@dataclass(frozen=True, eq=False)
class Sam3Clip(ManagerOwned):
    """CLIP output of a SAM 3 checkpoint: its CLIP text encoder (inside the same ``Sam3Model`` entry)."""

    handle: Any
    tokenizer: Any
    source: str = ""
    layer_override: int | None = None
    family: str = "sam3"
    patches: tuple = ()

    @property
    def encoders(self) -> tuple:
        return ()

    def with_layer(self, layer: int) -> "Sam3Clip":
        return dataclasses.replace(self, layer_override=layer)

    def describe(self) -> str:
        return "SAM 3 text encoder (CLIP, 32 tokens)"

    def tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[1, 32]``: BOS, the text (cut to 30), EOS, zeros."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:TEXT_TOKENS - 2]
        ids = [int(self.tokenizer.bos_token_id)] + [int(i) for i in ids] + [int(self.tokenizer.eos_token_id)]
        mask = [1] * len(ids) + [0] * (TEXT_TOKENS - len(ids))
        return torch.tensor([ids + [0] * (TEXT_TOKENS - len(ids))]), torch.tensor([mask])

    def encode_text(self, ctx, text: str) -> list:
        prompts = parse_prompts(text) or [(text, 1)]
        manager = ctx.service("models")
        entries = []
        with manager.use(self.handle, ctx.device) as model, torch.inference_mode():
            for prompt, max_det in prompts:
                ids, mask = self.tokens(prompt)
                hidden = model.text_encoder.text_model(input_ids=ids.to(ctx.device),
                                                       attention_mask=mask.to(ctx.device)).last_hidden_state
                entries.append({"cond": hidden.float().cpu(), "attention_mask": mask, "max_detections": max_det})
        extras = {"attention_mask": entries[0]["attention_mask"]}
        if len(prompts) > 1 or prompts[0][1] != 1:
            extras["sam3_multi_cond"] = entries
        return [[entries[0]["cond"], extras]]


def sam3_dtype(device: str) -> torch.dtype:
    """fp32 on CPU; fp16 on GPUs (the file's own precision)."""
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_checkpoint(path: Path, manager, device: str, models_dir: Path):
    """MODEL (the detector), CLIP (its text encoder) and VAE (None, as in ComfyUI) of a SAM 3 file."""
    from nodegraph_nodes.dit.loading import file_keys

    keys = file_keys(path, manager.allow_pickle)
    dtype = sam3_dtype(device)

    def loader():
        return build_model(read_state_dict(path, allow_pickle=manager.allow_pickle), dtype)

    handle = manager.load(_manager_key(path, "sam3", dtype), loader)
    model = Sam3Handle(handle, source=str(path), multiplex=SAM31_KEY in set(keys))
    clip = Sam3Clip(handle, load_tokenizer(find_tokenizer(models_dir, path)), source=str(path))
    return model, clip, None
