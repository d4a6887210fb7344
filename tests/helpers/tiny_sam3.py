"""A tiny random-weight SAM 3 detector from transformers' real ``Sam3Model``, saved in Meta's original key
layout (``detector.…``, fused ``qkv`` / ``in_proj_*``, ``pos_embed`` with a class-token row, the CLIP
``text_projection`` transposed) as ``models/checkpoints/<name>.safetensors``, the layout of ComfyUI's
``sam3.1_multiplex_fp16.safetensors``; with a CLIP tokenizer in ``models/text_encoders/tokenizer/``.

The renames here go the other way from the loader's (transformers → Meta) and are written separately,
so a wrong rule on either side fails the parity tests. ``multiplex=True`` writes a SAM 3.1-shaped file:
three FPN levels and the tracker necks ``interactive_convs`` / ``propagation_convs``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers.tiny_sd import load_tokenizer, write_tokenizer

PATCH = 56  # 1008 / 56 = an 18 x 18 grid: cheap, and the input stays the 1008 x 1008 SAM 3 uses


def tiny_config(vocab: int):
    from transformers import Sam3Config

    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                 num_attention_heads=1, image_size=1008, patch_size=PATCH, window_size=6,
                                 global_attn_indexes=[0, 1, 2, 3], pretrain_image_size=6 * PATCH),
            fpn_hidden_size=32, backbone_feature_sizes=[[72, 72], [36, 36], [18, 18]]),
        text_config=dict(model_type="clip_text_model", vocab_size=vocab, hidden_size=64, intermediate_size=96,
                         projection_dim=16, num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=32,
                         hidden_act="gelu"),
        geometry_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=1, intermediate_size=48),
        detr_encoder_config=dict(hidden_size=32, num_layers=1, num_attention_heads=1, intermediate_size=48),
        detr_decoder_config=dict(hidden_size=32, num_layers=2, num_queries=12, num_attention_heads=1,
                                 intermediate_size=48),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=1),
    )


# transformers name → Meta name (after ``detector.``), applied in order
_TO_META = (
    (r"^vision_encoder\.backbone\.embeddings\.position_embeddings$", "backbone.vision_backbone.trunk.pos_embed"),
    (r"^vision_encoder\.backbone\.embeddings\.patch_embeddings\.projection\.",
     "backbone.vision_backbone.trunk.patch_embed.proj."),
    (r"^vision_encoder\.backbone\.layer_norm\.", "backbone.vision_backbone.trunk.ln_pre."),
    (r"^vision_encoder\.backbone\.layers\.(\d+)\.layer_norm(\d)\.",
     r"backbone.vision_backbone.trunk.blocks.\1.norm\2."),
    (r"^vision_encoder\.backbone\.layers\.(\d+)\.attention\.o_proj\.",
     r"backbone.vision_backbone.trunk.blocks.\1.attn.proj."),
    (r"^vision_encoder\.backbone\.layers\.(\d+)\.attention\.", r"backbone.vision_backbone.trunk.blocks.\1.attn."),
    (r"^vision_encoder\.backbone\.layers\.(\d+)\.mlp\.", r"backbone.vision_backbone.trunk.blocks.\1.mlp."),
    (r"^vision_encoder\.neck\.fpn_layers\.0\.scale_layers\.0\.", "backbone.vision_backbone.convs.0.dconv_2x2_0."),
    (r"^vision_encoder\.neck\.fpn_layers\.0\.scale_layers\.2\.", "backbone.vision_backbone.convs.0.dconv_2x2_1."),
    (r"^vision_encoder\.neck\.fpn_layers\.1\.scale_layers\.0\.", "backbone.vision_backbone.convs.1.dconv_2x2."),
    (r"^vision_encoder\.neck\.fpn_layers\.(\d)\.proj1\.", r"backbone.vision_backbone.convs.\1.conv_1x1."),
    (r"^vision_encoder\.neck\.fpn_layers\.(\d)\.proj2\.", r"backbone.vision_backbone.convs.\1.conv_3x3."),
    (r"^text_encoder\.text_model\.embeddings\.token_embedding\.",
     "backbone.language_backbone.encoder.token_embedding."),
    (r"^text_encoder\.text_model\.embeddings\.position_embedding\.weight$",
     "backbone.language_backbone.encoder.positional_embedding"),
    (r"^text_encoder\.text_model\.final_layer_norm\.", "backbone.language_backbone.encoder.ln_final."),
    (r"^text_encoder\.text_projection\.weight$", "backbone.language_backbone.encoder.text_projection"),
    (r"^text_encoder\.text_model\.encoder\.layers\.(\d+)\.self_attn\.",
     r"backbone.language_backbone.encoder.transformer.resblocks.\1.attn."),
    (r"^text_encoder\.text_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.",
     r"backbone.language_backbone.encoder.transformer.resblocks.\1.ln_\2."),
    (r"^text_encoder\.text_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.",
     r"backbone.language_backbone.encoder.transformer.resblocks.\1.mlp.c_fc."),
    (r"^text_encoder\.text_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.",
     r"backbone.language_backbone.encoder.transformer.resblocks.\1.mlp.c_proj."),
    (r"^text_projection\.", "backbone.language_backbone.resizer."),
    (r"^geometry_encoder\.layers\.(\d+)\.cross_attn\.", r"geometry_encoder.encode.\1.cross_attn_image."),
    (r"^geometry_encoder\.layers\.(\d+)\.mlp\.fc(\d)\.", r"geometry_encoder.encode.\1.linear\2."),
    (r"^geometry_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"geometry_encoder.encode.\1.norm\2."),
    (r"^geometry_encoder\.layers\.", "geometry_encoder.encode."),
    (r"^geometry_encoder\.vision_layer_norm\.", "geometry_encoder.img_pre_norm."),
    (r"^geometry_encoder\.prompt_layer_norm\.", "geometry_encoder.norm."),
    (r"^geometry_encoder\.output_layer_norm\.", "geometry_encoder.encode_norm."),
    (r"^detr_encoder\.layers\.(\d+)\.cross_attn\.", r"transformer.encoder.layers.\1.cross_attn_image."),
    (r"^detr_encoder\.layers\.(\d+)\.mlp\.fc(\d)\.", r"transformer.encoder.layers.\1.linear\2."),
    (r"^detr_encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"transformer.encoder.layers.\1.norm\2."),
    (r"^detr_encoder\.", "transformer.encoder."),
    (r"^detr_decoder\.presence_head\.layer(\d)\.",
     lambda m: f"transformer.decoder.presence_token_head.layers.{int(m[1]) - 1}."),
    (r"^detr_decoder\.presence_layer_norm\.", "transformer.decoder.presence_token_out_norm."),
    (r"^detr_decoder\.output_layer_norm\.", "transformer.decoder.norm."),
    (r"^detr_decoder\.box_head\.layer(\d)\.", lambda m: f"transformer.decoder.bbox_embed.layers.{int(m[1]) - 1}."),
    (r"^detr_decoder\.ref_point_head\.layer(\d)\.",
     lambda m: f"transformer.decoder.ref_point_head.layers.{int(m[1]) - 1}."),
    (r"^detr_decoder\.box_rpb_embed_(x|y)\.layer(\d)\.",
     lambda m: f"transformer.decoder.boxRPB_embed_{m[1]}.layers.{int(m[2]) - 1}."),
    (r"^detr_decoder\.layers\.(\d+)\.text_cross_attn_layer_norm\.", r"transformer.decoder.layers.\1.catext_norm."),
    (r"^detr_decoder\.layers\.(\d+)\.vision_cross_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm1."),
    (r"^detr_decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^detr_decoder\.layers\.(\d+)\.mlp_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^detr_decoder\.layers\.(\d+)\.text_cross_attn\.", r"transformer.decoder.layers.\1.ca_text."),
    (r"^detr_decoder\.layers\.(\d+)\.vision_cross_attn\.", r"transformer.decoder.layers.\1.cross_attn."),
    (r"^detr_decoder\.layers\.(\d+)\.mlp\.fc(\d)\.", r"transformer.decoder.layers.\1.linear\2."),
    (r"^detr_decoder\.", "transformer.decoder."),
    (r"^dot_product_scoring\.text_mlp\.layer(\d)\.", lambda m: f"dot_prod_scoring.prompt_mlp.layers.{int(m[1]) - 1}."),
    (r"^dot_product_scoring\.text_mlp_out_norm\.", "dot_prod_scoring.prompt_mlp.out_norm."),
    (r"^dot_product_scoring\.text_proj\.", "dot_prod_scoring.prompt_proj."),
    (r"^dot_product_scoring\.query_proj\.", "dot_prod_scoring.hs_proj."),
    (r"^mask_decoder\.mask_embedder\.layers\.", "segmentation_head.mask_predictor.mask_embed.layers."),
    (r"^mask_decoder\.pixel_decoder\.", "segmentation_head.pixel_decoder."),
    (r"^mask_decoder\.instance_projection\.", "segmentation_head.instance_seg_head."),
    (r"^mask_decoder\.semantic_projection\.", "segmentation_head.semantic_seg_head."),
    (r"^mask_decoder\.prompt_cross_attn_norm\.", "segmentation_head.cross_attn_norm."),
    (r"^mask_decoder\.prompt_cross_attn\.", "segmentation_head.cross_attend_prompt."),
)


def _fuse(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separate q/k/v back to Meta's fused tensors: ``attn.qkv`` in the ViT, ``in_proj_*`` elsewhere;
    ``o_proj`` → ``out_proj`` (nn.MultiheadAttention's name)."""
    out = dict(sd)
    for key in [k for k in sd if ".q_proj." in k]:
        base, kind = key.split(".q_proj.")
        parts = [out.pop(f"{base}.{n}.{kind}") for n in ("q_proj", "k_proj", "v_proj")]
        fused = torch.cat(parts, dim=0)
        if base.startswith("vision_encoder."):
            out[f"{base}.qkv.{kind}"] = fused
        else:
            out[f"{base}.in_proj_{kind}"] = fused
    return {k.replace(".o_proj.", ".out_proj.") if not k.startswith("vision_encoder.") else k: v
            for k, v in out.items()}


def to_meta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in _fuse(sd).items():
        if "rotary_emb" in key or key.startswith("geometry_encoder.mask_encoder"):
            continue
        if key == "vision_encoder.backbone.embeddings.position_embeddings":
            value = torch.cat([torch.randn(1, 1, value.shape[-1]) * 0.02, value], dim=1)  # Meta's class-token row
        if key == "text_encoder.text_projection.weight":
            value = value.T.contiguous()
        for pattern, repl in _TO_META:
            key = re.sub(pattern, repl, key)
        out["detector." + key] = value.contiguous()
    return out


@dataclass
class TinySam3:
    model: object  # transformers' Sam3Model (fp32, eval)
    tokenizer: object
    checkpoint: Path
    models_dir: Path


def build_sam3(root: Path, name: str = "sam3.1_multiplex_fp16", seed: int = 0, multiplex: bool = False) -> TinySam3:
    """Write the tiny SAM 3 file and tokenizer under ``root/models``; return the reference model."""
    from transformers import Sam3Model

    models = root / "models"
    tokenizer = load_tokenizer(write_tokenizer(models / "text_encoders" / "tokenizer"))
    torch.manual_seed(seed)
    model = Sam3Model(tiny_config(len(tokenizer))).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger random weights so scores and masks spread out
            p.add_(torch.randn_like(p) * 0.05)
    sd = to_meta(model.state_dict())
    d = model.config.detr_decoder_config.hidden_size  # training-only parts of Meta's file, left out on load
    sd["detector.transformer.decoder.instance_query_embed.weight"] = torch.randn(4, d)
    sd["detector.transformer.decoder.instance_bbox_embed.layers.0.weight"] = torch.randn(d, d)
    sd["detector.geometry_encoder.points_direct_project.weight"] = torch.randn(d, 2)
    if multiplex:  # SAM 3.1: three FPN levels (no 0.5x one) and the tracker's own necks
        for key in [k for k in sd if k.startswith("detector.backbone.vision_backbone.convs.3.")]:
            del sd[key]
        with torch.no_grad():
            model.vision_encoder.neck.fpn_layers[3].proj1.weight.zero_()
            model.vision_encoder.neck.fpn_layers[3].proj1.bias.zero_()
            model.vision_encoder.neck.fpn_layers[3].proj2.weight.zero_()
            model.vision_encoder.neck.fpn_layers[3].proj2.bias.zero_()
        for neck in ("interactive_convs", "propagation_convs"):
            for key in [k for k in sd if k.startswith("detector.backbone.vision_backbone.convs.")]:
                sd[key.replace(".convs.", f".{neck}.")] = sd[key].clone()
        sd["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 8)  # the tracker part is present, not loaded
    path = models / "checkpoints" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in sd.items()}, str(path))
    with torch.no_grad():  # the reference holds the same (fp16-rounded) weights
        for p in model.parameters():
            p.copy_(p.to(torch.float16).float())
    return TinySam3(model, tokenizer, path, models)
