"""A Flux LoRA (the DiT families' readers, nodegraph_nodes.dit.lora_common) with keys that do not apply: a
node warning naming them — transformer keys of no layer, a layer missing its ``up`` matrix, and text-encoder
keys of an encoder the CLIP does not patch (T5 here) — and an error naming node, input and file when none
applies (tests/diffusion/test_lora_unmatched.py has the SD side and the client message)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.events import EventRecorder, NodeWarning

VALID = "transformer.transformer_blocks.0.attn.to_q"
STRAY = "transformer.transformer_blocks.0.attn.not_a_layer"
HALF = "transformer.transformer_blocks.0.attn.to_k"
T5_KEY = "lora_te2_encoder_block_0_layer_0_SelfAttention_q"


def _lora(net) -> dict:
    g = torch.Generator().manual_seed(0)
    dim = net.transformer_blocks[0].attn.to_q.weight.shape
    sd = {VALID + ".lora_A.weight": torch.randn(2, dim[1], generator=g) * 0.1,
          VALID + ".lora_B.weight": torch.randn(dim[0], 2, generator=g) * 0.1,
          STRAY + ".lora_A.weight": torch.randn(2, 8, generator=g), STRAY + ".lora_B.weight": torch.randn(8, 2),
          HALF + ".lora_A.weight": torch.randn(2, dim[1], generator=g),
          T5_KEY + ".lora_down.weight": torch.randn(2, 8, generator=g), T5_KEY + ".lora_up.weight": torch.randn(8, 2)}
    return sd


def _graph(lora: str, model_only: bool) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default").out(0)
    if model_only:
        node = g.node("LoraLoaderModelOnly", "lora", model=model, lora_name=lora, strength_model=1.0)
    else:
        clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                      type="flux").out(0)
        node = g.node("LoraLoader", "lora", model=model, clip=clip, lora_name=lora, strength_model=1.0,
                      strength_clip=1.0)
        g.node("PreviewAny", source=node.out(1))
    g.node("PreviewAny", source=node.out(0))
    return g


def _names(message: str) -> set[str]:
    return set(message.split("does not read): ", 1)[1].split(", "))


def test_flux_lora_unmatched_keys_are_a_warning(flow_engine, flow_root, tiny_flux):
    folder = flow_root / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_lora(tiny_flux.transformer), str(folder / "flux_stray.safetensors"))
    for model_only, expected in ((True, {STRAY, HALF}), (False, {STRAY, HALF, T5_KEY})):
        recorder = EventRecorder()
        flow_engine.run(_graph("flux_stray.safetensors", model_only), listeners=[recorder]).raise_for_status()
        (warning,) = recorder.of(NodeWarning)
        assert f"LoRA flux_stray.safetensors: {len(expected)} keys not loaded" in warning.message
        assert _names(warning.message) == expected


def test_flux_lora_with_no_matching_key_is_an_error_naming_the_node(flow_engine, flow_root):
    folder = flow_root / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({STRAY + ".lora_A.weight": torch.zeros(2, 8), STRAY + ".lora_B.weight": torch.zeros(8, 2)},
              str(folder / "flux_none.safetensors"))
    result = flow_engine.run(_graph("flux_none.safetensors", model_only=True))
    assert result.failure is not None
    message = str(result.failure)
    assert "LoraLoaderModelOnly.lora_name: LoRA flux_none.safetensors has no weights matching this flux" in message
    assert STRAY in message
