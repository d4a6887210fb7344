"""The key conversions: layout detection, and the Flux.1 conversion (width read from the weights) equal
to diffusers' own converter, which is fixed at the 12B models' width 3072 — compared at that width with
one-column tensors whose values name their key and row, so every row's destination is checked."""

from __future__ import annotations

import torch

from nodegraph_nodes.dit import convert

W = 3072


def _bfl_shapes(guidance: bool = True) -> dict[str, int]:
    rows = {"img_in.weight": W, "img_in.bias": W, "txt_in.weight": W, "txt_in.bias": W,
            "final_layer.linear.weight": 64, "final_layer.linear.bias": 64,
            "final_layer.adaLN_modulation.1.weight": 2 * W, "final_layer.adaLN_modulation.1.bias": 2 * W}
    for emb in ("time_in", "vector_in") + (("guidance_in",) if guidance else ()):
        for layer in ("in_layer", "out_layer"):
            rows[f"{emb}.{layer}.weight"] = rows[f"{emb}.{layer}.bias"] = W
    for i in range(2):
        b = f"double_blocks.{i}."
        for side in ("img", "txt"):
            for kind in ("weight", "bias"):
                rows[f"{b}{side}_mod.lin.{kind}"] = 6 * W
                rows[f"{b}{side}_attn.qkv.{kind}"] = 3 * W
                rows[f"{b}{side}_attn.proj.{kind}"] = W
                rows[f"{b}{side}_mlp.0.{kind}"] = 4 * W
                rows[f"{b}{side}_mlp.2.{kind}"] = W
            rows[f"{b}{side}_attn.norm.query_norm.scale"] = rows[f"{b}{side}_attn.norm.key_norm.scale"] = 128
        b = f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            rows[f"{b}linear1.{kind}"] = 3 * W + 4 * W
            rows[f"{b}linear2.{kind}"] = W
            rows[f"{b}modulation.lin.{kind}"] = 3 * W
        rows[f"{b}norm.query_norm.scale"] = rows[f"{b}norm.key_norm.scale"] = 128
    return rows


def _labelled(rows: dict[str, int]) -> dict[str, torch.Tensor]:
    # key index · 100000 + row: exact in float64, and every row of every tensor distinct
    return {k: (torch.arange(n, dtype=torch.float64) + 100000 * i)[:, None] for i, (k, n) in enumerate(rows.items())}


def test_flux_conversion_equals_diffusers_converter_at_full_width():
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    for guidance in (True, False):
        sd = _labelled(_bfl_shapes(guidance))
        ours = convert.convert_flux(dict(sd))
        theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(sd))
        assert sorted(ours) == sorted(theirs)
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), key


def test_flux_config_from_shapes():
    sd = {k: torch.zeros(n, 1) for k, n in _bfl_shapes().items()}
    sd["img_in.weight"] = torch.zeros(W, 64)
    sd["txt_in.weight"] = torch.zeros(W, 4096)
    sd["vector_in.in_layer.weight"] = torch.zeros(W, 768)
    cfg = convert.flux_config(sd)
    assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["num_layers"], cfg["num_single_layers"]) == \
        (24, 128, 2, 2)
    assert (cfg["in_channels"], cfg["joint_attention_dim"], cfg["pooled_projection_dim"], cfg["guidance_embeds"]) == \
        (64, 4096, 768, True)


def test_layout_detection():
    flux = list(_bfl_shapes())
    assert convert.detect_transformer(flux) == convert.TransformerKind("flux", "dev", "")
    schnell = list(_bfl_shapes(guidance=False))
    assert convert.detect_transformer(["model.diffusion_model." + k for k in schnell]) == \
        convert.TransformerKind("flux", "schnell", "model.diffusion_model.")
    mmdit = ["x_embedder.proj.weight", "joint_blocks.0.x_block.attn.qkv.weight", "pos_embed"]
    assert convert.detect_transformer(mmdit).family == "sd3"
    assert convert.detect_transformer(mmdit + ["joint_blocks.0.x_block.attn.ln_q.weight"]).variant == "sd3.5"
    assert convert.detect_transformer(["input_blocks.0.0.weight", "out.2.weight"]) is None
