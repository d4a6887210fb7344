"""The SD3 / Flux nodes: ComfyUI's declarations, what they compute on their own, the loaders'
recognition of files (schnell, fp8, single encoders) and their errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.errors import ExecutionFailed

from nodegraph_nodes.dit.model import FlowModel, pack_latents
from nodegraph_nodes.dit.text import FlowClip
from tests.dit.tiny_flow import CLIP_G, CLIP_L, T5_DIM, _contig, flux_to_bfl, flux_transformer
from tests.helpers.noise import engine_noise

FILE_LIST = "files"  # a folder listing: compared as a list, not by value
SPECS = {  # ComfyUI's declarations (nodes.py, comfy_extras/nodes_sd3.py, nodes_flux.py)
    "UNETLoader": ("advanced/loaders", [("unet_name", FILE_LIST, {}),
                                        ("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"], {})],
                   ["MODEL"]),
    "DualCLIPLoader": ("advanced/loaders", [("clip_name1", FILE_LIST, {}), ("clip_name2", FILE_LIST, {}),
                                            ("type", ["sdxl", "sd3", "flux", "hunyuan_video", "hidream",
                                                      "hunyuan_image", "hunyuan_video_15", "kandinsky5",
                                                      "kandinsky5_image", "ltxv", "newbie", "ace"], {}),
                                            ("device", ["default", "cpu"], {})], ["CLIP"]),
    "TripleCLIPLoader": ("advanced/loaders", [("clip_name1", FILE_LIST, {}), ("clip_name2", FILE_LIST, {}),
                                              ("clip_name3", FILE_LIST, {})], ["CLIP"]),
    "EmptySD3LatentImage": ("latent/sd3", [("width", "INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                                           ("height", "INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                                           ("batch_size", "INT", {"default": 1, "min": 1, "max": 4096})], ["LATENT"]),
    "CLIPTextEncodeSD3": ("advanced/conditioning", [("clip", "CLIP", {}), ("clip_l", "STRING", {"multiline": True}),
                                                    ("clip_g", "STRING", {"multiline": True}),
                                                    ("t5xxl", "STRING", {"multiline": True}),
                                                    ("empty_padding", ["none", "empty_prompt"], {})], ["CONDITIONING"]),
    "CLIPTextEncodeFlux": ("advanced/conditioning/flux", [
        ("clip", "CLIP", {}), ("clip_l", "STRING", {"multiline": True}), ("t5xxl", "STRING", {"multiline": True}),
        ("guidance", "FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})], ["CONDITIONING"]),
    "FluxGuidance": ("advanced/conditioning/flux", [
        ("conditioning", "CONDITIONING", {}),
        ("guidance", "FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})], ["CONDITIONING"]),
    "ReferenceLatent": ("advanced/conditioning/edit_models", [("conditioning", "CONDITIONING", {}),
                                                               ("latent", "LATENT", {})], ["CONDITIONING"]),
    "FluxKontextImageScale": ("advanced/conditioning/flux", [("image", "IMAGE", {})], ["IMAGE"]),
    "FluxKontextMultiReferenceLatentMethod": ("advanced/conditioning/flux", [
        ("conditioning", "CONDITIONING", {}), ("reference_latents_method", ["offset", "index", "uxo/uno", "index_timestep_zero"], {})],
        ["CONDITIONING"]),
    "SkipLayerGuidanceDiT": ("advanced/guidance", [
        ("model", "MODEL", {}), ("double_layers", "STRING", {"default": "7, 8, 9"}),
        ("single_layers", "STRING", {"default": "7, 8, 9"}),
        ("scale", "FLOAT", {"default": 3.0, "min": 0.0, "max": 10.0, "step": 0.1}),
        ("start_percent", "FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("end_percent", "FLOAT", {"default": 0.15, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("rescaling_scale", "FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.01})], ["MODEL"]),
    "SkipLayerGuidanceDiTSimple": ("advanced/guidance", [
        ("model", "MODEL", {}), ("double_layers", "STRING", {"default": "7, 8, 9"}),
        ("single_layers", "STRING", {"default": "7, 8, 9"}),
        ("start_percent", "FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        ("end_percent", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001})], ["MODEL"]),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_declarations_match_comfyui(flow_registry, name):
    info = flow_registry.object_info()[name]
    category, inputs, outputs = SPECS[name]
    assert info["category"] == category
    assert info["output"] == outputs
    declared = {**info["input"]["required"], **info["input"].get("optional", {})}
    assert list(declared) == [n for n, _, _ in inputs]
    for input_name, kind, options in inputs:
        got_kind, got_opts = declared[input_name]
        if kind == FILE_LIST:
            assert isinstance(got_kind, list)
        else:
            assert got_kind == kind, input_name
        for key, value in options.items():
            assert got_opts.get(key) == value, (input_name, key)
    assert "sd3" in flow_registry.object_info()["CLIPLoader"]["input"]["required"]["type"][0]
    assert "latent" in info["input"].get("optional", {}) or name != "ReferenceLatent"


def _run(engine, build) -> dict:
    g = Graph()
    out = build(g)
    for node in out if isinstance(out, list) else [out]:
        g.node("PreviewAny", source=node)
    return engine.run(g).raise_for_status()


def test_empty_sd3_latent_is_16_channels(flow_engine):
    result = _run(flow_engine, lambda g: g.node("EmptySD3LatentImage", "lat", width=96, height=64, batch_size=2))
    samples = result.value("lat")["samples"]
    assert samples.shape == (2, 16, 8, 12) and not samples.any()


def _clip_sd3(g):
    return g.node("TripleCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_clip_g.safetensors",
                  clip_name3="tiny_t5xxl.safetensors")


def test_clip_text_encode_sd3_layout_and_empty_padding(flow_engine):
    def build(g):
        clip = _clip_sd3(g)
        return [g.node("CLIPTextEncode", "same", text="a red fox", clip=clip),
                g.node("CLIPTextEncodeSD3", "sep", clip=clip, clip_l="a red fox", clip_g="a red fox", t5xxl="a red fox",
               empty_padding="none"),
                g.node("CLIPTextEncodeSD3", "no_t5", clip=clip, clip_l="a red fox", clip_g="a red fox", t5xxl="",
               empty_padding="none"),
                g.node("CLIPTextEncodeSD3", "pad_t5", clip=clip, clip_l="a red fox", clip_g="a red fox", t5xxl="",
               empty_padding="empty_prompt"),
                g.node("CLIPTextEncodeSD3", "only_g", clip=clip, clip_l="", clip_g="a red fox", t5xxl="",
                       empty_padding="none"),
                g.node("CLIPTextEncodeSD3", "nothing", clip=clip, clip_l="", clip_g="", t5xxl="",
                       empty_padding="none"),
                g.node("CLIPTextEncodeSD3", "empty", clip=clip, clip_l="", clip_g="", t5xxl="",
                       empty_padding="empty_prompt"),
                g.node("CLIPTextEncodeSD3", "long_l", clip=clip, clip_l=" ".join(["a red fox"] * 30),
                       clip_g="a red fox", t5xxl="", empty_padding="none")]

    result = _run(flow_engine, build)
    same, sep = result.value("same")[0], result.value("sep")[0]
    assert same[0].shape == (1, 77 + 77, T5_DIM)  # CLIP windows, then T5's 77 tokens
    assert same[1]["pooled_output"].shape == (1, CLIP_L + CLIP_G)
    assert torch.equal(same[0], sep[0]) and torch.equal(same[1]["pooled_output"], sep[1]["pooled_output"])
    assert not same[0][0, :77, CLIP_L + CLIP_G:].any()  # CLIP states zero-padded to the T5 width
    no_t5 = result.value("no_t5")[0][0]
    assert no_t5.shape == (1, 77, T5_DIM) and torch.equal(no_t5, same[0][:, :77])
    assert result.value("pad_t5")[0][0].shape == (1, 154, T5_DIM)
    only_g, empty = result.value("only_g")[0], result.value("empty")[0]
    # an empty clip_l beside a clip_g prompt is the empty prompt's encoding (ComfyUI pads it), not zeros
    assert torch.equal(only_g[0][:, :, :CLIP_L], empty[0][:, :77, :CLIP_L])
    assert torch.equal(only_g[1]["pooled_output"][:, :CLIP_L], empty[1]["pooled_output"][:, :CLIP_L])
    assert torch.equal(only_g[0][:, :, CLIP_L:], same[0][:, :77, CLIP_L:])
    nothing = result.value("nothing")[0]  # everything left out: ComfyUI's zeros
    assert nothing[0].shape == (1, 77, T5_DIM) and not nothing[0].any() and not nothing[1]["pooled_output"].any()
    long_l = result.value("long_l")[0][0]
    assert long_l.shape == (1, 154, T5_DIM)  # two CLIP-L windows; CLIP-G padded with an empty window
    assert torch.equal(long_l[:, 77:, CLIP_L:CLIP_L + CLIP_G], empty[0][:, :77, CLIP_L:CLIP_L + CLIP_G])
    assert torch.equal(long_l[:, :77, CLIP_L:CLIP_L + CLIP_G], same[0][:, :77, CLIP_L:CLIP_L + CLIP_G])


def test_cliploader_sd3_single_t5_and_weights(flow_engine):
    def build(g):
        clip = g.node("CLIPLoader", clip_name="tiny_t5xxl.safetensors", type="sd3")
        return [g.node("CLIPTextEncode", "plain", text="a red fox", clip=clip),
                g.node("CLIPTextEncode", "weighted", text="a (red:1.5) fox", clip=clip)]

    result = _run(flow_engine, build)
    plain, weighted = result.value("plain")[0], result.value("weighted")[0]
    assert plain[0].shape == (1, 77, T5_DIM)  # T5 alone: no CLIP part
    assert plain[1]["pooled_output"].shape == (1, 768 + 1280) and not plain[1]["pooled_output"].any()
    assert not torch.equal(plain[0], weighted[0])


def test_flux_guidance_sets_the_value(flow_engine):
    def build(g):
        clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                      type="flux")
        text = g.node("CLIPTextEncode", "text", text="a cat", clip=clip)
        return [text, g.node("FluxGuidance", "guided", conditioning=text, guidance=2.0)]

    result = _run(flow_engine, build)
    text, guided = result.value("text")[0], result.value("guided")[0]
    assert "guidance" not in text[1] and guided[1]["guidance"] == 2.0
    assert text[0].shape == (1, 256, T5_DIM) and text[1]["pooled_output"].shape == (1, CLIP_L)


def test_flux_schnell_is_detected_and_samples_like_comfyui(flow_engine, flow_root, tiny_flux):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    net = flux_transformer(guidance=False)
    save_file(_contig(flux_to_bfl(net)), str(flow_root / "models" / "diffusion_models" / "tiny_flux_schnell.safetensors"))
    g = Graph()
    unet = g.node("UNETLoader", "unet", unet_name="tiny_flux_schnell.safetensors", weight_dtype="default")
    clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors", clip_name2="tiny_t5xxl.safetensors",
                  type="flux")
    pos = g.node("CLIPTextEncode", text="a red fox", clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=unet, seed=5, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=g.node("VAELoader", vae_name="tiny_flux_ae.safetensors"))
    g.node("PreviewAny", source=dec)
    result = flow_engine.run(g).raise_for_status()
    model = result.value("unet")
    assert isinstance(model, FlowModel) and model.variant == "schnell"
    assert float(model.model_sampling.schedule.shift) == 1.0
    # ComfyUI's schnell sampling: Flux's exponential shift with mu = 1 (the pipeline: base = max shift = 1)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=1.0, max_shift=1.0)
    pipe = tiny_flux.flux_pipeline(FluxPipeline, net, sched)
    noise, _ = engine_noise((1, 16, 8, 8), 5)
    with torch.no_grad():
        ref = pipe("a red fox", num_inference_steps=4, latents=pack_latents(noise), height=64, width=64,
                   max_sequence_length=256, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(result.value("out"), ref, atol=1e-4), (result.value("out") - ref).abs().max()


def test_unetloader_fp8_rounds_weights_on_cpu(flow_engine, tiny_sd3):
    def build(g):
        return g.node("UNETLoader", "unet", unet_name="tiny_sd35_mmdit.safetensors", weight_dtype="fp8_e4m3fn")

    model = _run(flow_engine, build).value("unet")
    net = model.handle.get()
    assert next(net.parameters()).dtype == torch.float32
    weight = net.transformer_blocks[0].attn.to_q.weight
    assert torch.equal(weight, weight.to(torch.float8_e4m3fn).float())
    original = tiny_sd3.transformer.transformer_blocks[0].attn.to_q.weight
    assert not torch.equal(weight, original) and torch.allclose(weight, original, rtol=0.07, atol=1e-3)


@pytest.mark.parametrize("node,inputs,message", [
    ("DualCLIPLoader", {"clip_name1": "tiny_clip_l.safetensors", "clip_name2": "tiny_clip_g.safetensors",
                        "type": "flux"}, "Flux takes a CLIP-L and a T5"),
    ("DualCLIPLoader", {"clip_name1": "tiny_clip_l.safetensors", "clip_name2": "tiny_clip_g.safetensors",
                        "type": "hunyuan_video"}, "not supported yet"),
    ("CLIPLoader", {"clip_name": "tiny_t5xxl.safetensors", "type": "hunyuan_image"}, "not supported yet"),
    ("CLIPLoader", {"clip_name": "tiny_t5xxl.safetensors", "type": "krea2"}, "'krea2' is not supported yet"),
    ("DualCLIPLoader", {"clip_name1": "tiny_clip_l.safetensors", "clip_name2": "tiny_t5xxl.safetensors",
                        "type": "kandinsky5"}, "'kandinsky5' is not supported yet"),
    ("TripleCLIPLoader", {"clip_name1": "tiny_clip_l.safetensors", "clip_name2": "tiny_clip_g.safetensors",
                          "clip_name3": "not_a_text_encoder.safetensors"}, "not a CLIP or T5 text encoder"),
    ("TripleCLIPLoader", {"clip_name1": "tiny_clip_l.safetensors", "clip_name2": "tiny_clip_l.safetensors",
                          "clip_name3": "tiny_t5xxl.safetensors"}, "two CLIP encoders of the same kind"),
])
def test_loader_errors_are_clear(flow_engine, flow_root, node, inputs, message):
    import shutil

    shutil.copy(flow_root / "models" / "vae" / "tiny_sd3_vae.safetensors",
                flow_root / "models" / "text_encoders" / "not_a_text_encoder.safetensors")
    g = Graph()
    g.node("PreviewAny", source=g.node(node, "n", **inputs).out(0))
    result = flow_engine.run(g)
    assert result.failure is not None and message in str(result.failure), result.failure


def test_transformer_without_vae_in_checkpoints_points_to_unetloader(flow_engine, flow_root, tiny_sd3):
    import shutil

    target = flow_root / "models" / "checkpoints" / "bare_mmdit.safetensors"
    shutil.copy(flow_root / "models" / "diffusion_models" / "tiny_sd35_mmdit.safetensors", target)
    g = Graph()
    g.node("PreviewAny", source=g.node("CheckpointLoaderSimple", "n", ckpt_name="bare_mmdit.safetensors").out(0))
    result = flow_engine.run(g)
    target.unlink()
    assert result.failure is not None and "UNETLoader" in str(result.failure)


def test_flux_text_encode_refuses_an_sd3_clip(flow_engine):
    g = Graph()
    enc = g.node("CLIPTextEncodeFlux", "n", clip=_clip_sd3(g), clip_l="a", t5xxl="a", guidance=3.5)
    g.node("PreviewAny", source=enc)
    result = flow_engine.run(g)
    assert result.failure is not None and "not flux" in str(result.failure)
    clip = _run(flow_engine, lambda g: g.node("TripleCLIPLoader", "clip", clip_name1="tiny_clip_g.safetensors",
                                             clip_name2="tiny_t5xxl.safetensors",
                                             clip_name3="tiny_clip_l.safetensors")).value("clip")
    assert isinstance(clip, FlowClip) and clip.family == "sd3"
    assert (clip.clip_l.key, clip.clip_g.key) == ("clip_l", "clip_g")  # recognised from the weights, any order
    assert clip.clip_l.handle.get().config.hidden_size == CLIP_L and clip.clip_g.projection


def _scaled_fp8(sd: dict) -> dict:
    """A state dict saved the way ComfyUI's ``*_fp8_scaled`` files are (per-layer scale, fp8 weights)."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in sd.items():
        if key.endswith(".weight") and value.ndim == 2 and "embed" not in key and "shared" not in key:
            scale = value.abs().max().float() / 448.0
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
            out[key[: -len("weight")] + "scale_input"] = torch.ones(())
        else:
            out[key] = value
    return out


def test_comfyui_scaled_fp8_files_load_dequantized(flow_engine, flow_root, tiny_sd3):
    from safetensors.torch import load_file

    te = flow_root / "models" / "text_encoders"
    t5 = _scaled_fp8(load_file(str(te / "tiny_t5xxl.safetensors")))
    save_file(t5, str(te / "tiny_t5xxl_fp8_e4m3fn_scaled.safetensors"))
    dm = flow_root / "models" / "diffusion_models"
    mmdit = _scaled_fp8(load_file(str(dm / "tiny_sd35_mmdit.safetensors")))
    save_file(mmdit, str(dm / "tiny_sd35_fp8_scaled.safetensors"))

    def build(g):
        return [g.node("UNETLoader", "unet", unet_name="tiny_sd35_fp8_scaled.safetensors", weight_dtype="default"),
                g.node("CLIPLoader", "clip", clip_name="tiny_t5xxl_fp8_e4m3fn_scaled.safetensors", type="sd3")]

    result = _run(flow_engine, build)
    net = result.value("unet").handle.get()
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    t5_net = result.value("clip").t5.handle.get()
    assert torch.equal(t5_net.state_dict()[key], t5[key].float() * t5[key[:-6] + "scale_weight"])
    q = net.transformer_blocks[0].attn.to_q.weight  # the first third of the MMDiT's fused qkv
    qkv = "joint_blocks.0.x_block.attn.qkv."
    expected = (mmdit[qkv + "weight"].float() * mmdit[qkv + "scale_weight"])[: q.shape[0]]
    assert torch.equal(q, expected)
    original = tiny_sd3.transformer.transformer_blocks[0].attn.to_q.weight
    assert torch.allclose(q, original, rtol=0.07, atol=0.02)
