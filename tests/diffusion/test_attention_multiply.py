"""UNetTemporalAttentionMultiply: on an SD UNet it equals ComfyUI's weight patch (a checkpoint whose attention
output projections are scaled gives the same image); the temporal factors leave a UNet without temporal blocks
alone; factors of 1 return the model as it came; on a Wan model the node is a no-op with a node warning (ComfyUI's
node matches no Wan weight)."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file, save_file

from nodegraph.builder import Graph
from nodegraph.events import EventRecorder, NodeWarning

from nodegraph_nodes.sampling.attention_multiply import AttentionFactors, scaled_layers

from tests.helpers.ldm_export import unet_to_ldm


def _image(engine, ckpt: str = "tiny_sd15.safetensors", **factors) -> torch.Tensor:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    model = ck.out(0)
    if factors:
        model = g.node("UNetTemporalAttentionMultiply", model=model, **{
            k: factors.get(k, 1.0) for k in ("self_structural", "self_temporal", "cross_structural", "cross_temporal")
        }).out(0)
    pos = g.node("CLIPTextEncode", text="a red fox in snow", clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=ck.out(1))
    ks = g.node("KSampler", model=model, seed=42, steps=3, cfg=7.0, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=g.node("EmptyLatentImage", width=64, height=64, batch_size=1),
                denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=ck.out(2)))
    return engine.run(g).raise_for_status().value("out")


def test_scaling_equals_a_checkpoint_with_scaled_attention_outputs(sd_engine, tiny_sd, model_root):
    unet = copy.deepcopy(tiny_sd.unet)
    factors = AttentionFactors(self_structural=1.25, cross_structural=0.7)
    layers = scaled_layers(unet, factors)
    assert len(layers) == 2 * sum(1 for n, _ in unet.named_modules() if n.endswith("attn1"))
    with torch.no_grad():
        for module, factor in layers:
            module.weight.mul_(factor)
            module.bias.mul_(factor)
    ckpt = load_file(str(tiny_sd.checkpoint))
    ckpt.update(unet_to_ldm(unet.state_dict(), unet.config))
    save_file({k: v.contiguous() for k, v in ckpt.items()},
              str(model_root / "models" / "checkpoints" / "tiny_sd15_scaled_attention.safetensors"))

    patched = _image(sd_engine, self_structural=1.25, cross_structural=0.7)
    # the same sampling path (a model patch present) with the scaled weights: the temporal factors match nothing
    scaled = _image(sd_engine, ckpt="tiny_sd15_scaled_attention.safetensors", self_temporal=2.0, cross_temporal=0.5)
    plain = _image(sd_engine, self_temporal=2.0, cross_temporal=0.5)
    assert torch.allclose(patched, scaled, atol=1e-5), (patched - scaled).abs().max()
    assert (patched - plain).abs().max() > 1e-2
    # the temporal factors have nothing to scale in a UNet without temporal blocks
    assert torch.equal(plain, _image(sd_engine, self_temporal=3.0, cross_temporal=1.5))


def test_factors_are_read_per_layer_name():
    f = AttentionFactors(1.1, 1.2, 1.3, 1.4)
    assert f.factor("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0") == 1.1
    assert f.factor("mid_block.attentions.0.temporal_transformer_blocks.0.attn1.to_out.0") == 1.2
    assert f.factor("up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0") == 1.3
    assert f.factor("down_blocks.0.motion_modules.0.transformer_blocks.0.attn2.to_out.0") == 1.4
    assert f.factor("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") is None


def test_a_wan_model_passes_through_with_a_warning(tmp_path_factory, tmp_path):
    from nodegraph.registry import default_registry

    from tests.dit.tiny_wan import build_wan
    from tests.helpers.engines import make_engine

    tiny = build_wan(tmp_path_factory.mktemp("wan_attention_multiply"))
    engine = make_engine(tiny.root, tmp_path, default_registry(packs=False))
    try:
        g = Graph()
        model = g.node("UNETLoader", "unet", unet_name="tiny_wan2.1_t2v.safetensors", weight_dtype="default")
        for node_id, factor in (("mult", 1.3), ("same", 1.0)):
            mult = g.node("UNetTemporalAttentionMultiply", node_id, model=model.out(0), self_structural=1.0,
                          self_temporal=1.0, cross_structural=1.2, cross_temporal=factor)
            g.node("PreviewAny", source=mult.out(0))
        recorder = EventRecorder()
        result = engine.run(g, listeners=[recorder]).raise_for_status()
    finally:
        engine.close()
    assert result.value("mult") is result.value("unet") and result.value("same") is result.value("unet")
    warnings = recorder.of(NodeWarning)
    assert {w.node_id for w in warnings} == {"mult", "same"}
    assert all("wan model has no UNet attention layers" in w.message for w in warnings)
