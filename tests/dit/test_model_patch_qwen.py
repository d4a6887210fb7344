"""ModelPatchLoader + QwenImageDiffsynthControlnet (the DiffSynth blockwise ControlNet of Qwen-Image).

A tiny patch file in the layout ComfyUI loads (``img_in``, ``controlnet_blocks.N.{x_rms,y_rms,input_proj,
output_proj}``) changes Qwen-Image's text-to-image output exactly as diffusers' QwenImagePipeline gives it
when the control is added by hooks written here, independently of nodegraph: after transformer block ``i``
the image tokens get ``strength · W_out·gelu(W_in·(rms(h)·w_x + rms(c)·w_y) + b_in) + b_out`` with
``c = img_in(2×2 patches of (VAE latent mode − mean) / std)`` (the VAE config's Wan 2.1 statistics). A
patch whose output projections are zero leaves the output exactly unchanged. Cheap sizes: 64×64, 4 steps,
cfg 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.template_runs import last_saved_image, set_inputs, template_api
from tests.dit.test_qwen_image import PROMPT, SEED, SHIFT, STEPS, reference
from tests.dit.tiny_qwen import copy_as

DIM = 64  # the tiny transformer's width (2 heads × 32)


def patch_weights(extra: int = 0, zero: bool = False, layers: int = 2, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {"img_in.weight": r(DIM, 64 + extra), "img_in.bias": r(DIM)}
    for i in range(layers):
        p = f"controlnet_blocks.{i}."
        sd.update({p + "x_rms.weight": 1 + r(DIM), p + "y_rms.weight": 1 + r(DIM),
                   p + "input_proj.weight": r(DIM, DIM), p + "input_proj.bias": r(DIM),
                   p + "output_proj.weight": torch.zeros(DIM, DIM) if zero else r(DIM, DIM),
                   p + "output_proj.bias": torch.zeros(DIM) if zero else r(DIM)})
    return sd


def write_patch(root: Path, name: str, sd: dict) -> None:
    folder = root / "models" / "model_patches"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name))


def control_image(size: int = 64) -> torch.Tensor:
    """A blocky RGB image ``[1, size, size, 3]`` in [0, 1] (exactly representable after an integer area
    downscale)."""
    cells = torch.from_numpy(np.random.default_rng(3).random((8, 8, 3))).float()
    return cells.repeat_interleave(size // 8, 0).repeat_interleave(size // 8, 1).unsqueeze(0)


def graph(patch: str | None, image_size: int = 64, strength: float = 0.7, mask: bool = False) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_qwen_image.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_2.5_vl.safetensors", type="qwen_image").out(0)
    vae = g.node("VAELoader", vae_name="tiny_qwen_image_vae.safetensors").out(0)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=SHIFT).out(0)
    if patch is not None:
        mp = g.node("ModelPatchLoader", name=patch).out(0)
        img = g.node("LoadImage", image=f"control_{image_size}.png").out(0)
        extra = {}
        if mask:
            extra["mask"] = g.node("SolidMask", value=0.25, width=image_size, height=image_size).out(0)
        model = g.node("QwenImageDiffsynthControlnet", model=model, model_patch=mp, vae=vae, image=img,
                       strength=strength, **extra).out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    return g


def save_inputs(engine) -> None:
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    for size in (64, 128):
        pixels = (control_image(size)[0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(engine.paths.input_dir / f"control_{size}.png")


def _rms(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def reference_tokens(vae, sd: dict, image: torch.Tensor, mask_value: float | None, extra: int) -> torch.Tensor:
    """``c`` for a 64×64 latent: the image at 64×64 (2×2 average pooling from 128), the VAE's latent mode in
    model space, the mask channel (ones, or ``1 − mask``), 2×2 patches channels first, ``img_in``."""
    pixels = image.permute(0, 3, 1, 2)
    if pixels.shape[-1] != 64:
        pixels = F.avg_pool2d(pixels, pixels.shape[-1] // 64)
    pixels = (torch.round(pixels * 255) / 255) * 2 - 1  # through the PNG
    with torch.no_grad():
        lat = vae.encode(pixels.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1)
    lat = (lat - mean) / std
    if extra:
        value = 1.0 if mask_value is None else 1.0 - mask_value
        lat = torch.cat([lat, torch.full((1, extra // 4, *lat.shape[-2:]), value)], dim=1)
    b, c, h, w = lat.shape
    patches = lat.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    return patches @ sd["img_in.weight"].T + sd["img_in.bias"]


@contextmanager
def reference_control(transformer, sd: dict, c: torch.Tensor, strength: float):
    def add(i, out):
        enc, hid = out
        n = c.shape[1]
        p = f"controlnet_blocks.{i}."
        x = hid[:, :n]
        h = (_rms(x, sd[p + "x_rms.weight"]) + _rms(c, sd[p + "y_rms.weight"])) @ sd[p + "input_proj.weight"].T
        h = F.gelu(h + sd[p + "input_proj.bias"])
        delta = h @ sd[p + "output_proj.weight"].T + sd[p + "output_proj.bias"]
        return enc, torch.cat([x + strength * delta, hid[:, n:]], dim=1)

    handles = [b.register_forward_hook(lambda m, a, o, i=i: add(i, o)) for i, b in enumerate(transformer.transformer_blocks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("image_size", [64, 128])
def test_blockwise_controlnet_matches_reference(qwen_engine, qwen_root, tiny_qwen_image, image_size):
    sd = patch_weights()
    write_patch(qwen_root, "tiny_qwen_cnet.safetensors", sd)
    save_inputs(qwen_engine)
    plain = qwen_engine.run(graph(None)).raise_for_status().value("out")
    image = qwen_engine.run(graph("tiny_qwen_cnet.safetensors", image_size)).raise_for_status().value("out")
    c = reference_tokens(tiny_qwen_image.vae, sd, control_image(image_size), None, 0)
    with reference_control(tiny_qwen_image.transformer, sd, c, 0.7):
        ref = reference(tiny_qwen_image)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - plain).abs().max() > 1e-2  # the control changed the output


def test_zero_patch_leaves_output_unchanged(qwen_engine, qwen_root, tiny_qwen_image):
    write_patch(qwen_root, "tiny_qwen_cnet_zero.safetensors", patch_weights(zero=True))
    save_inputs(qwen_engine)
    plain = qwen_engine.run(graph(None)).raise_for_status().value("out")
    zero = qwen_engine.run(graph("tiny_qwen_cnet_zero.safetensors")).raise_for_status().value("out")
    assert torch.equal(plain, zero)


@pytest.mark.parametrize("mask", [False, True])
def test_inpaint_patch_mask_channel(qwen_engine, qwen_root, tiny_qwen_image, mask):
    sd = patch_weights(extra=4, seed=8)
    write_patch(qwen_root, "tiny_qwen_cnet_inpaint.safetensors", sd)
    save_inputs(qwen_engine)
    image = qwen_engine.run(graph("tiny_qwen_cnet_inpaint.safetensors", mask=mask)).raise_for_status().value("out")
    c = reference_tokens(tiny_qwen_image.vae, sd, control_image(64), 0.25 if mask else None, 4)
    with reference_control(tiny_qwen_image.transformer, sd, c, 0.7):
        ref = reference(tiny_qwen_image)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_bad_patch_files_are_refused(qwen_engine, qwen_root, tiny_qwen_image):
    write_patch(qwen_root, "not_a_patch.safetensors", {"foo.weight": torch.zeros(2)})
    write_patch(qwen_root, "short_patch.safetensors", patch_weights(layers=1))
    save_inputs(qwen_engine)
    bad = qwen_engine.run(graph("not_a_patch.safetensors"))
    assert bad.failure is not None and "not_a_patch.safetensors" in bad.failure.exception_message
    short = qwen_engine.run(graph("short_patch.safetensors"))
    assert short.failure is not None and "control blocks" in short.failure.exception_message


def test_qwen_controlnet_patch_template_runs(qwen_engine, qwen_registry, qwen_root, tiny_qwen_image):
    """ComfyUI's image_qwen_image_controlnet_patch (Canny → DiffSynth ControlNet) on the tiny files; the
    input is scaled to about 100×100 (ImageScaleToTotalPixels 0.01 MP instead of 1.68) and 2 steps instead of 20."""
    copy_as(qwen_root, {"diffusion_models/tiny_qwen_image.safetensors": "diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
                        "text_encoders/tiny_qwen_2.5_vl.safetensors": "text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
                        "vae/tiny_qwen_image_vae.safetensors": "vae/qwen_image_vae.safetensors"})
    write_patch(qwen_root, "qwen_image_canny_diffsynth_controlnet.safetensors", patch_weights())
    lora = qwen_root / "models" / "loras" / "Qwen-Image-Lightning-4steps-V1.0.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    save_file({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64),
               "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 2)}, str(lora))
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = (control_image(128)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(qwen_engine.paths.input_dir / "image_qwen_image_controlnet_patch_input_image.png")
    api = template_api("image_qwen_image_controlnet_patch", qwen_registry)
    set_inputs(api, {"ImageScaleToTotalPixels": {"megapixels": 0.01}, "KSampler": {"steps": 2}})
    result = qwen_engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"ModelPatchLoader", "QwenImageDiffsynthControlnet", "Canny", "KSampler", "SaveImage"} <= kinds
    image = last_saved_image(qwen_engine.paths.output_dir)
    assert image.shape[-1] == 3 and min(image.shape[:2]) >= 64 and image.std() > 0.01


def test_layered_latent_on_qwen_image_is_refused_clearly(qwen_engine, tiny_qwen_image):
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_qwen_image.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_2.5_vl.safetensors", type="qwen_image").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    lat = g.node("EmptyQwenImageLayeredLatentImage", width=64, height=64, layers=2, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=pos, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=ks)
    result = qwen_engine.run(g)
    assert result.failure is not None and "Qwen-Image-Layered" in result.failure.exception_message
