"""Qwen-Image InstantX ControlNets (nodes/dit/qwen_controlnet.py) through ControlNetLoader and
ControlNetInpaintingAliMamaApply / ControlNetApplyAdvanced.

A tiny inpainting ControlNet (diffusers' ``QwenImageControlNetModel`` with the mask channel, random weights,
saved in the file layout users download) gives the same image as diffusers' QwenImageControlNetInpaintPipeline
on the same weights, seed, steps, shift and strength (1e-4, cfg 1: the pipeline reuses the positive's control
for the negative, ComfyUI evaluates it per entry). The pipeline encodes the control image with a sample of
the VAE's posterior, ComfyUI with its mode: the test VAE's posterior is made sharp (log-variance −30, std
3e-7) so both are the same. The mask and the image reach the output as specified: another mask or another
image changes it, and a union (non-inpainting) ControlNet ignores the mask (as a file or a diffusers folder).
Cheap sizes: 64×64, 4 steps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.template_runs import apply_controlnet, sample_and_preview
from tests.dit.test_qwen_image import PROMPT, SEED, SHIFT, STEPS
from tests.dit.tiny_qwen import wan_vae_layout
from tests.helpers.block_images import blocks, save_control_inputs
from tests.helpers.noise import engine_noise

STRENGTH = 0.8
SHARP_VAE = "tiny_qwen_image_vae_sharp.safetensors"


def tiny_controlnet(transformer, extra: int, seed: int):
    from diffusers import QwenImageControlNetModel

    torch.manual_seed(seed)
    net = QwenImageControlNetModel.from_transformer(transformer, num_layers=1, attention_head_dim=32,
                                                    num_attention_heads=2, extra_condition_channels=extra)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised control layers get weights, or the control would do nothing
        for p in [*net.controlnet_blocks.parameters(), *net.controlnet_x_embedder.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def sharp_vae(vae):
    """The VAE with a posterior of negligible spread (its sample is its mode)."""
    sharp = copy.deepcopy(vae)
    z = sharp.config.z_dim
    with torch.no_grad():
        sharp.quant_conv.weight[z:] = 0
        sharp.quant_conv.bias[z:] = -60.0
    return sharp


@pytest.fixture(scope="module")
def files(qwen_root, tiny_qwen_image):
    models = qwen_root / "models"
    (models / "controlnet").mkdir(parents=True, exist_ok=True)
    nets = {"inpaint": tiny_controlnet(tiny_qwen_image.transformer, 4, 11),
            "union": tiny_controlnet(tiny_qwen_image.transformer, 0, 12)}
    for kind, net in nets.items():
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(models / "controlnet" / f"tiny_qwen_instantx_{kind}.safetensors"))
    nets["union"].save_pretrained(str(models / "controlnet" / "tiny_qwen_instantx_union_folder"))
    vae = sharp_vae(tiny_qwen_image.vae)
    save_file(wan_vae_layout(vae.state_dict()), str(models / "vae" / SHARP_VAE))
    return nets, vae


def graph(controlnet: str | None, image: str = "control.png", mask: str = "mask.png", node: str = "inpaint") -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_qwen_image.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_2.5_vl.safetensors", type="qwen_image").out(0)
    vae = g.node("VAELoader", vae_name=SHARP_VAE).out(0)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=SHIFT).out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip).out(0)
    neg = g.node("CLIPTextEncode", text="", clip=clip).out(0)
    if controlnet is not None:
        pos, neg = apply_controlnet(g, pos, neg, vae, controlnet, node, image, mask, STRENGTH)
    sample_and_preview(g, model, pos, neg, vae, SEED, STEPS, 1.0)
    return g


def reference(tiny, vae, controlnet, image: str, mask: str, input_dir) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageControlNetInpaintPipeline, QwenImagePipeline

    pipe = QwenImageControlNetInpaintPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=vae,
                                              text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                              transformer=tiny.transformer, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    latents = QwenImagePipeline._pack_latents(noise, 1, 16, 8, 8)
    with torch.no_grad():
        out = pipe(PROMPT, num_inference_steps=STEPS, true_cfg_scale=1.0, latents=latents, height=64, width=64,
                   control_image=Image.open(input_dir / image).convert("RGB"),
                   control_mask=Image.open(input_dir / mask).convert("L"),
                   controlnet_conditioning_scale=STRENGTH, output_type="pt").images
    return out.permute(0, 2, 3, 1)


def test_inpainting_controlnet_matches_diffusers_pipeline(qwen_engine, tiny_qwen_image, files):
    nets, vae = files
    save_control_inputs(qwen_engine.paths.input_dir)
    ours = qwen_engine.run(graph("tiny_qwen_instantx_inpaint.safetensors")).raise_for_status().value("out")
    ref = reference(tiny_qwen_image, vae, nets["inpaint"], "control.png", "mask.png", qwen_engine.paths.input_dir)
    assert ours.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    plain = qwen_engine.run(graph(None)).raise_for_status().value("out")
    assert (ours - plain).abs().max() > 1e-2  # the control changed the output


def test_mask_and_image_reach_the_inpainting_controlnet(qwen_engine, tiny_qwen_image, files):
    save_control_inputs(qwen_engine.paths.input_dir)
    base = qwen_engine.run(graph("tiny_qwen_instantx_inpaint.safetensors")).raise_for_status().value("out")
    other_mask = qwen_engine.run(graph("tiny_qwen_instantx_inpaint.safetensors", mask="mask_b.png")
                                 ).raise_for_status().value("out")
    other_image = qwen_engine.run(graph("tiny_qwen_instantx_inpaint.safetensors", image="control_b.png")
                                  ).raise_for_status().value("out")
    assert (base - other_mask).abs().max() > 1e-3
    assert (base - other_image).abs().max() > 1e-3
    # ControlNetApplyAdvanced on an inpainting ControlNet: the mask channel is ones (no mask), as ComfyUI
    advanced = qwen_engine.run(graph("tiny_qwen_instantx_inpaint.safetensors", node="advanced")
                               ).raise_for_status().value("out")
    assert (base - advanced).abs().max() > 1e-3


def test_union_controlnet_ignores_the_mask(qwen_engine, tiny_qwen_image, files):
    save_control_inputs(qwen_engine.paths.input_dir)
    a = qwen_engine.run(graph("tiny_qwen_instantx_union.safetensors")).raise_for_status().value("out")
    b = qwen_engine.run(graph("tiny_qwen_instantx_union.safetensors", mask="mask_b.png")).raise_for_status().value("out")
    advanced = qwen_engine.run(graph("tiny_qwen_instantx_union.safetensors", node="advanced")
                               ).raise_for_status().value("out")
    assert torch.equal(a, b) and torch.equal(a, advanced)
    folder = qwen_engine.run(graph("tiny_qwen_instantx_union_folder")).raise_for_status().value("out")
    assert torch.allclose(folder, a, atol=1e-6)  # the diffusers folder of the same ControlNet
    plain = qwen_engine.run(graph(None)).raise_for_status().value("out")
    assert (a - plain).abs().max() > 1e-2


def test_instantx_inpainting_template_runs(qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, files):
    """ComfyUI's image_qwen_image_instantx_inpainting_controlnet on the tiny files (the input scaled to 64 px
    instead of 1536, 2 steps instead of 20); the mask comes from the input image's alpha channel."""
    from tests.dit.template_runs import package_template_api, set_inputs
    from tests.dit.tiny_qwen import copy_as

    copy_as(qwen_root, {"diffusion_models/tiny_qwen_image.safetensors": "diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                        "text_encoders/tiny_qwen_2.5_vl.safetensors": "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "vae/tiny_qwen_image_vae.safetensors": "vae/qwen_image_vae.safetensors",
                        "controlnet/tiny_qwen_instantx_inpaint.safetensors":
                            "controlnet/Qwen-Image-InstantX-ControlNet-Inpainting.safetensors"})
    api = package_template_api("image_qwen_image_instantx_inpainting_controlnet", qwen_registry)
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    load = next(n for n in api.values() if n["class_type"] == "LoadImage")
    alpha = 255 - (blocks(5, 1) > 128) * 255  # transparent where to inpaint (LoadImage's mask = 1 - alpha)
    rgba = np.concatenate([blocks(3, 3), alpha.astype(np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(qwen_engine.paths.input_dir / load["inputs"]["image"])
    set_inputs(api, {"ImageScaleToMaxDimension": {"largest_size": 64}, "KSampler": {"steps": 2}})
    result = qwen_engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"ControlNetLoader", "ControlNetInpaintingAliMamaApply", "SetLatentNoiseMask", "KSampler",
            "ImageCompositeMasked", "SaveImage"} <= kinds


def test_instantx_union_template_with_lotus_depth_runs(qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, files):
    """ComfyUI's image_qwen_image_instantx_controlnet: Lotus depth (LotusConditioning on a tiny SD 2.x
    checkpoint's text encoder, a tiny Lotus-D UNet) feeds the union ControlNet; FluxKontextImageScale (about
    1 MP) replaced by a 64×64 ImageScale to keep it cheap."""
    from tests.dit.template_runs import package_template_api
    from tests.dit.tiny_qwen import copy_as
    from tests.helpers.ldm_export import unet_to_ldm, vae_to_ldm
    from tests.helpers.tiny_sd import build_sd2, lotus_unet

    models = qwen_root / "models"
    if not (models / "checkpoints" / "tiny_sd21.safetensors").is_file():
        tiny_sd2 = build_sd2(qwen_root)
        unet = lotus_unet()
        (models / "diffusion_models").mkdir(parents=True, exist_ok=True)
        save_file({k[len("model.diffusion_model."):]: v.contiguous()
                   for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()},
                  str(models / "diffusion_models" / "lotus-depth-d-v1-1.safetensors"))
        save_file({k[len("first_stage_model."):]: v.contiguous()
                   for k, v in vae_to_ldm(tiny_sd2.vae.state_dict(), tiny_sd2.vae.config).items()},
                  str(models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors"))
    copy_as(qwen_root, {"diffusion_models/tiny_qwen_image.safetensors": "diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                        "text_encoders/tiny_qwen_2.5_vl.safetensors": "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "vae/tiny_qwen_image_vae.safetensors": "vae/qwen_image_vae.safetensors",
                        "controlnet/tiny_qwen_instantx_union.safetensors":
                            "controlnet/Qwen-Image-InstantX-ControlNet-Union.safetensors"})
    lora = models / "loras" / "Qwen-Image-Lightning-4steps-V1.0.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 2)}, str(lora))
    api = package_template_api("image_qwen_image_instantx_controlnet", qwen_registry)
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    load = next(n for n in api.values() if n["class_type"] == "LoadImage")
    Image.fromarray(blocks(3, 3)).save(qwen_engine.paths.input_dir / load["inputs"]["image"])
    scale = next(n for n, v in api.items() if v["class_type"] == "FluxKontextImageScale")
    api[scale] = {"class_type": "ImageScale", "inputs": {"image": api[scale]["inputs"]["image"], "width": 64,
                                                          "height": 64, "upscale_method": "nearest-exact",
                                                          "crop": "disabled"}}
    result = qwen_engine.run(api).raise_for_status()
    assert all(n in result.executed for n in api)
