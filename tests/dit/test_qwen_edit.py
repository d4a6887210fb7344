"""Qwen-Image-Edit through ComfyUI's nodes: TextEncodeQwenImageEdit (image through the Qwen2.5-VL vision
tower, its VAE latent as a reference latent) equals diffusers' QwenImageEditPipeline on the same tiny
weights, seed, steps and shift, at cfg 1 (the pipeline's true CFG renormalises, ComfyUI's does not).
The input image is 1024×1024, the size both scale it to, so no resampling filter is involved.

TextEncodeQwenImageEditPlus scales with ComfyUI's area filter where diffusers' pipeline uses PIL's, so it
is checked for its effects: the images reach the encoder and the transformer (as reference latents)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.helpers.noise import engine_noise

PROMPT = "make the sky green"
SEED, STEPS, SHIFT = 9, 4, 3.0  # steps dividing 1000: the simple scheduler then picks linspace(1, 1/steps)


def _image(size: int = 1024) -> Image.Image:
    g = np.random.default_rng(0)
    base = g.integers(0, 256, (size // 64, size // 64, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(base, np.ones((64, 64, 1), dtype=np.uint8)))  # blocks: a plausible image


def edit_graph(node: str = "TextEncodeQwenImageEdit", images: int = 1, vae_reference: bool = True,
               method: str | None = None) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_qwen_image.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_2.5_vl.safetensors", type="qwen_image").out(0)
    vae = g.node("VAELoader", vae_name="tiny_qwen_image_vae.safetensors").out(0)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=SHIFT).out(0)
    inputs = {"clip": clip, "prompt": PROMPT}
    if vae_reference:
        inputs["vae"] = vae
    if images:
        img = g.node("LoadImage", image="edit_input.png").out(0)
        if node == "TextEncodeQwenImageEdit":
            inputs["image"] = img
        else:
            inputs.update({f"image{i + 1}": img for i in range(images)})
    pos = g.node(node, **inputs)
    if method is not None:
        pos = g.node("FluxKontextMultiReferenceLatentMethod", conditioning=pos, reference_latents_method=method)
    neg = g.node(node, clip=clip, prompt="")
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


class Processor:
    """What QwenImageEditPipeline asks of its ``processor`` (transformers' Qwen2VLProcessor, which cannot
    be built here without torchvision): the Qwen2-VL image processor's patches and each
    ``<|image_pad|>`` repeated once per merged patch, then the tokenizer."""

    def __init__(self, tokenizer, te):
        from transformers import Qwen2VLImageProcessorPil

        v = te.config.vision_config
        self.merge = v.spatial_merge_size
        self.tokenizer = tokenizer
        self.images = Qwen2VLImageProcessorPil(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                               merge_size=v.spatial_merge_size,
                                               size={"shortest_edge": 3136, "longest_edge": 12845056})

    def __call__(self, text, images=None, padding=True, return_tensors="pt"):
        from transformers import BatchFeature

        images = images if isinstance(images, list) else [images]
        feats = self.images(images=images, return_tensors="pt")
        counts = iter(int(g.prod()) // self.merge ** 2 for g in feats["image_grid_thw"])
        texts = []
        for t in text:
            while "<|image_pad|>" in t:
                t = t.replace("<|image_pad|>", "<|placeholder|>" * next(counts), 1)
            texts.append(t.replace("<|placeholder|>", "<|image_pad|>"))
        tokens = self.tokenizer(texts, padding=padding, return_tensors="pt")
        return BatchFeature({**tokens, **feats})


def reference(tiny, zero_cond_t: bool = False) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageTransformer2DModel

    net = tiny.transformer
    if zero_cond_t:  # Edit 2511's transformer config, the same weights
        net = QwenImageTransformer2DModel.from_config(net.config, zero_cond_t=True).eval()
        assert net.zero_cond_t
        net.load_state_dict(tiny.transformer.state_dict())
    pipe = QwenImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=tiny.vae,
                                 text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                 processor=Processor(tiny.tokenizer, tiny.text_encoder), transformer=net)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    latents = QwenImageEditPipeline._pack_latents(noise, 1, 16, 8, 8)
    with torch.no_grad():
        image = pipe(image=_image(), prompt=PROMPT, num_inference_steps=STEPS, true_cfg_scale=1.0, latents=latents,
                     height=64, width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.fixture
def edit_engine(qwen_engine):
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    _image().save(qwen_engine.paths.input_dir / "edit_input.png")
    return qwen_engine


def test_qwen_image_edit_matches_pipeline(edit_engine, tiny_qwen_image):
    image = edit_engine.run(edit_graph()).raise_for_status().value("out")
    ref = reference(tiny_qwen_image)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_index_timestep_zero_matches_zero_cond_t_transformer(edit_engine, tiny_qwen_image):
    """Edit 2511's FluxKontextMultiReferenceLatentMethod index_timestep_zero equals diffusers' zero_cond_t."""
    image = edit_engine.run(edit_graph(method="index_timestep_zero")).raise_for_status().value("out")
    ref = reference(tiny_qwen_image, zero_cond_t=True)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(tiny_qwen_image), atol=1e-3)


def test_edit_plus_images_reach_encoder_and_model(edit_engine, tiny_qwen_image):
    plain = edit_engine.run(edit_graph("TextEncodeQwenImageEditPlus", images=0)).raise_for_status().value("out")
    seen = edit_engine.run(edit_graph("TextEncodeQwenImageEditPlus", images=1, vae_reference=False)).raise_for_status()
    referenced = edit_engine.run(edit_graph("TextEncodeQwenImageEditPlus", images=2)).raise_for_status()
    assert not torch.allclose(plain, seen.value("out"), atol=1e-3)
    assert not torch.allclose(seen.value("out"), referenced.value("out"), atol=1e-3)


def test_edit_nodes_refuse_another_clip(edit_engine, tiny_z_image):
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_3.safetensors", type="lumina2").out(0)
    pos = g.node("TextEncodeQwenImageEdit", clip=clip, prompt=PROMPT)
    g.node("PreviewAny", "out", source=pos)
    result = edit_engine.run(g)
    assert result.failure is not None
    assert "TextEncodeQwenImageEdit.clip" in str(result.failure) and "qwen_image" in str(result.failure)
