"""Flux.1 latent-input ControlNets (nodes/dit/flux_controlnet.py) through ControlNetLoader,
ControlNetApplyAdvanced and ControlNetInpaintingAliMamaApply.

A tiny InstantX-style ControlNet (diffusers' ``FluxControlNetModel``, random weights, saved in the file layout
users download) gives the same image as diffusers' FluxControlNetPipeline on the same weights, seed, steps,
guidance and strength (1e-4, cfg 1). The pipeline encodes the control image with a sample of the VAE's
posterior, ComfyUI with its mode: the test VAE's posterior is made sharp (log-variance −30) so both agree.
An AliMama-style inpainting ControlNet (its x embedder 4·17 wide: the mask channel) runs through
ControlNetInpaintingAliMamaApply: the mask and the image change the output; with an all-keep mask over the
whole image it equals ControlNetApplyAdvanced (the mask channel is then ones, as ComfyUI gives an inpainting
ControlNet applied without a mask). Cheap sizes: 64×64, 4 steps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from nodegraph_nodes.dit.model import pack_latents
from tests.dit.template_runs import apply_controlnet, sample_and_preview
from tests.dit.test_flux_parity import GUIDANCE, PROMPT, SEED, STEPS
from tests.dit.tiny_flow import _vae_file
from tests.helpers.block_images import save_control_inputs
from tests.helpers.noise import engine_noise

STRENGTH = 0.8
SHARP_VAE = "tiny_flux_ae_sharp.safetensors"


def tiny_controlnet(transformer, inpaint: bool, seed: int):
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    net = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                               attention_head_dim=128, num_attention_heads=1)
    if inpaint:
        net.controlnet_x_embedder = torch.nn.Linear(64 + 4, net.inner_dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised control layers get weights, or the control would do nothing
        for p in [*net.controlnet_blocks.parameters(), *net.controlnet_single_blocks.parameters(),
                  *net.controlnet_x_embedder.parameters()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def sharp_vae(vae):
    sharp = copy.deepcopy(vae)
    z = sharp.config.latent_channels
    with torch.no_grad():
        sharp.encoder.conv_out.weight[z:] = 0
        sharp.encoder.conv_out.bias[z:] = -60.0
    return sharp


@pytest.fixture(scope="module")
def files(flow_root, tiny_flux):
    models = flow_root / "models"
    (models / "controlnet").mkdir(parents=True, exist_ok=True)
    nets = {"plain": tiny_controlnet(tiny_flux.transformer, False, 21),
            "inpaint": tiny_controlnet(tiny_flux.transformer, True, 22)}
    for kind, net in nets.items():
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(models / "controlnet" / f"tiny_flux_cn_{kind}.safetensors"))
    vae = sharp_vae(tiny_flux.vae)
    save_file({k: v.contiguous() for k, v in _vae_file(vae).items()}, str(models / "vae" / SHARP_VAE))
    return nets, vae


def save_inputs(engine) -> None:
    save_control_inputs(engine.paths.input_dir)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(engine.paths.input_dir / "mask_none.png")


def graph(controlnet: str | None, node: str = "advanced", image: str = "control.png", mask: str = "mask.png") -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_flux_dev.safetensors", weight_dtype="default").out(0)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_t5xxl.safetensors", clip_name2="tiny_clip_l.safetensors",
                  type="flux").out(0)
    vae = g.node("VAELoader", vae_name=SHARP_VAE).out(0)
    model = g.node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=64, height=64).out(0)
    pos = g.node("CLIPTextEncodeFlux", clip=clip, clip_l=PROMPT, t5xxl=PROMPT, guidance=GUIDANCE).out(0)
    neg = g.node("CLIPTextEncode", text="", clip=clip).out(0)
    if controlnet is not None:
        pos, neg = apply_controlnet(g, pos, neg, vae, controlnet, node, image, mask, STRENGTH)
    sample_and_preview(g, model, pos, neg, vae, SEED, STEPS, 1.0)
    return g


def reference(tiny, vae, controlnet, input_dir) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxControlNetPipeline

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(tiny.diffusers_dir / "scheduler"))
    pipe = FluxControlNetPipeline(transformer=tiny.transformer, vae=vae, text_encoder=tiny.text.clip_l,
                                  tokenizer=tiny.text.tokenizer, text_encoder_2=tiny.text.t5,
                                  tokenizer_2=tiny.text.tokenizer_t5, scheduler=scheduler, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=pack_latents(noise),
                     height=64, width=64, max_sequence_length=256, output_type="pt",
                     control_image=Image.open(input_dir / "control.png").convert("RGB"),
                     controlnet_conditioning_scale=STRENGTH).images
    return image.permute(0, 2, 3, 1)


def test_controlnet_matches_diffusers_pipeline(flow_engine, tiny_flux, files):
    nets, vae = files
    save_inputs(flow_engine)
    ours = flow_engine.run(graph("tiny_flux_cn_plain.safetensors")).raise_for_status().value("out")
    ref = reference(tiny_flux, vae, nets["plain"], flow_engine.paths.input_dir)
    assert ours.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    plain = flow_engine.run(graph(None)).raise_for_status().value("out")
    assert (ours - plain).abs().max() > 1e-2  # the control changed the output


def test_inpainting_controlnet_takes_the_mask(flow_engine, tiny_flux, files):
    save_inputs(flow_engine)
    name = "tiny_flux_cn_inpaint.safetensors"
    base = flow_engine.run(graph(name, "inpaint")).raise_for_status().value("out")
    other_mask = flow_engine.run(graph(name, "inpaint", mask="mask_b.png")).raise_for_status().value("out")
    other_image = flow_engine.run(graph(name, "inpaint", image="control_b.png")).raise_for_status().value("out")
    assert (base - other_mask).abs().max() > 1e-3 and (base - other_image).abs().max() > 1e-3
    keep_all = flow_engine.run(graph(name, "inpaint", mask="mask_none.png")).raise_for_status().value("out")
    advanced = flow_engine.run(graph(name, "advanced")).raise_for_status().value("out")
    assert torch.allclose(keep_all, advanced, atol=1e-6)
    assert (base - advanced).abs().max() > 1e-3
    # the plain ControlNet has no mask channel: the inpaint node gives it the image as it is
    plain = flow_engine.run(graph("tiny_flux_cn_plain.safetensors", "inpaint")).raise_for_status().value("out")
    plain_adv = flow_engine.run(graph("tiny_flux_cn_plain.safetensors")).raise_for_status().value("out")
    assert torch.equal(plain, plain_adv)
