"""LoRAs on SD3 / Flux models: a LoRA in a user layout (kohya and ComfyUI names of Black Forest Labs'
layers, diffusers / PEFT names; CLIP-L parts in kohya names) changes the output exactly as merging it
into the original weights does (the merged file loaded without a LoRA), at 1e-4."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.dit.tiny_flow import _contig, flux_to_bfl, sd3_to_mmdit

RANK, ALPHA, STRENGTH = 4, 2.0, 0.8
FLUX_LAYERS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.0", "single_blocks.1.linear1",
               "single_blocks.0.linear2", "final_layer.adaLN_modulation.1", "img_in"]
CLIP_LAYER = "text_model.encoder.layers.0.self_attn.q_proj"


def _pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape[0], RANK, generator=g) * 0.3, torch.randn(RANK, shape[1], generator=g) * 0.3


def _merge(weight, up, down):
    return weight + STRENGTH * (ALPHA / RANK) * (up @ down)


def _flux_graph(unet: str, clip_l: str, lora: str | None, model_only: bool = False, seed: int = 3) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    clip = g.node("DualCLIPLoader", clip_name1=clip_l, clip_name2="tiny_t5xxl.safetensors", type="flux").out(0)
    if lora is not None:
        if model_only:
            model = g.node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=STRENGTH).out(0)
        else:
            loaded = g.node("LoraLoader", model=model, clip=clip, lora_name=lora, strength_model=STRENGTH,
                            strength_clip=STRENGTH)
            model, clip = loaded.out(0), loaded.out(1)
    model = g.node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=64, height=64)
    pos = g.node("CLIPTextEncodeFlux", clip=clip, clip_l="a red fox", t5xxl="a red fox", guidance=3.5)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=seed, steps=3, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks,
                                       vae=g.node("VAELoader", vae_name="tiny_flux_ae.safetensors")))
    return g


@pytest.fixture(scope="module")
def flux_loras(flow_root, tiny_flux):
    """Kohya, ComfyUI and PEFT files of one LoRA, and the merged transformer and CLIP-L files."""
    from safetensors.torch import load_file

    models = flow_root / "models"
    (models / "loras").mkdir(parents=True, exist_ok=True)
    bfl = flux_to_bfl(tiny_flux.transformer)
    kohya, comfy, merged = {}, {}, dict(bfl)
    for i, layer in enumerate(FLUX_LAYERS):
        up, down = _pair(bfl[layer + ".weight"].shape, i)
        flat = "lora_unet_" + layer.replace(".", "_")
        kohya.update({flat + ".lora_up.weight": up, flat + ".lora_down.weight": down, flat + ".alpha": torch.tensor(ALPHA)})
        comfy.update({f"diffusion_model.{layer}.lora_B.weight": up, f"diffusion_model.{layer}.lora_A.weight": down,
                      f"diffusion_model.{layer}.alpha": torch.tensor(ALPHA)})
        merged[layer + ".weight"] = _merge(bfl[layer + ".weight"], up, down)
    clip_sd = load_file(str(models / "text_encoders" / "tiny_clip_l.safetensors"))
    up, down = _pair(clip_sd[CLIP_LAYER + ".weight"].shape, 99)
    te = "lora_te1_" + CLIP_LAYER.replace(".", "_")
    kohya.update({te + ".lora_up.weight": up, te + ".lora_down.weight": down, te + ".alpha": torch.tensor(ALPHA)})
    clip_sd[CLIP_LAYER + ".weight"] = _merge(clip_sd[CLIP_LAYER + ".weight"], up, down)
    save_file(_contig(kohya), str(models / "loras" / "flux_kohya.safetensors"))
    save_file(_contig(comfy), str(models / "loras" / "flux_comfy.safetensors"))
    save_file(_contig(merged), str(models / "diffusion_models" / "tiny_flux_merged.safetensors"))
    save_file(_contig(clip_sd), str(models / "text_encoders" / "tiny_clip_l_merged.safetensors"))
    # the same change to the fused qkv in PEFT names: q, k, v each with their third of up, down shared
    up, down = _pair(bfl["double_blocks.0.img_attn.qkv.weight"].shape, 0)
    peft = {}
    for name, part in zip(("to_q", "to_k", "to_v"), up.chunk(3)):
        base = f"transformer.transformer_blocks.0.attn.{name}"
        peft.update({base + ".lora_B.weight": part, base + ".lora_A.weight": down, base + ".alpha": torch.tensor(ALPHA)})
    save_file(_contig(peft), str(models / "loras" / "flux_peft_qkv.safetensors"))
    save_file(_contig({k: v for k, v in kohya.items() if "img_attn_qkv" in k}),
              str(models / "loras" / "flux_kohya_qkv.safetensors"))


def test_flux_kohya_lora_equals_merged_weights(flow_engine, flux_loras):
    base = flow_engine.run(_flux_graph("tiny_flux_dev.safetensors", "tiny_clip_l.safetensors", None)).raise_for_status()
    before = flow_engine.run(_flux_graph("tiny_flux_dev.safetensors", "tiny_clip_l.safetensors", None,
                                         seed=4)).raise_for_status().value("out")
    lora = flow_engine.run(_flux_graph("tiny_flux_dev.safetensors", "tiny_clip_l.safetensors",
                                       "flux_kohya.safetensors")).raise_for_status()
    merged = flow_engine.run(_flux_graph("tiny_flux_merged.safetensors", "tiny_clip_l_merged.safetensors",
                                         None)).raise_for_status()
    a, b = lora.value("out"), merged.value("out")
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    assert not torch.allclose(a, base.value("out"), atol=1e-3)
    flow_engine.free(free_memory=True)  # cached outputs gone: the runs below compute again on the shared weights
    after = flow_engine.run(_flux_graph("tiny_flux_dev.safetensors", "tiny_clip_l.safetensors", None,
                                        seed=4)).raise_for_status().value("out")
    assert torch.equal(after, before)  # the LoRA's deltas were removed from the shared weights


def test_flux_lora_layouts_agree(flow_engine, flux_loras):
    def out(lora: str, only: bool = True):
        graph = _flux_graph("tiny_flux_dev.safetensors", "tiny_clip_l.safetensors", lora, model_only=only)
        return flow_engine.run(graph).raise_for_status().value("out")

    kohya_model_only = out("flux_kohya.safetensors")
    assert torch.allclose(out("flux_comfy.safetensors"), kohya_model_only, atol=1e-5)
    assert torch.allclose(out("flux_peft_qkv.safetensors"), out("flux_kohya_qkv.safetensors"), atol=1e-5)


def test_sd3_peft_lora_equals_merged_weights(flow_engine, flow_root, tiny_sd3):
    from tests.dit.test_sd3_parity import sd3_graph

    net = tiny_sd3.transformer
    up, down = _pair(net.transformer_blocks[1].attn.to_k.weight.shape, 7)
    base = "transformer.transformer_blocks.1.attn.to_k"
    save_file(_contig({base + ".lora_B.weight": up, base + ".lora_A.weight": down, base + ".alpha": torch.tensor(ALPHA)}),
              str(flow_root / "models" / "loras" / "sd3_peft.safetensors"))
    merged = copy.deepcopy(net)
    with torch.no_grad():
        merged.transformer_blocks[1].attn.to_k.weight.copy_(_merge(net.transformer_blocks[1].attn.to_k.weight, up, down))
    save_file(_contig(sd3_to_mmdit(merged)), str(flow_root / "models" / "diffusion_models" / "tiny_sd35_merged.safetensors"))
    prompt = sd3_graph("separate").to_api()
    loader = next(n for n in prompt.values() if n["class_type"] == "UNETLoader")
    merged_prompt = copy.deepcopy(prompt)
    next(n for n in merged_prompt.values() if n["class_type"] == "UNETLoader")["inputs"]["unet_name"] = \
        "tiny_sd35_merged.safetensors"
    ks = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    prompt["lora"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": ks["inputs"]["model"], "lora_name": "sd3_peft.safetensors",
                                 "strength_model": STRENGTH}}
    ks["inputs"]["model"] = ["lora", 0]
    assert loader["inputs"]["unet_name"] == "tiny_sd35_mmdit.safetensors"
    a = flow_engine.run(prompt).raise_for_status().value("out")
    b = flow_engine.run(merged_prompt).raise_for_status().value("out")
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_lora_for_another_model_is_a_clear_error(flow_engine, flow_root):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
              str(flow_root / "models" / "loras" / "sd15_lora.safetensors"))
    g = Graph()
    unet = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default")
    g.node("PreviewAny", source=g.node("LoraLoaderModelOnly", model=unet, lora_name="sd15_lora.safetensors",
                                       strength_model=1.0).out(0))
    result = flow_engine.run(g)
    assert result.failure is not None and "no weights matching this flux transformer" in str(result.failure)
