"""Qwen-Image 2.1 text-to-image through ComfyUI's nodes (UNETLoader + CLIPLoader type qwen_image + VAELoader,
TextEncodeQwenImage21, QwenImage21Cache, KSampler) equals diffusers' QwenImage21Pipeline on the same tiny
random weights, seed, steps and shift; the transformer is saved in ComfyUI's repackaged layout (fused
``img_mlp.gate_up``, ``model.diffusion_model.`` prefix), the Qwen3-VL encoder in the older transformers names.

The pipeline's true CFG (no norm rescale in 2.1) is ``neg + s (pos - neg)``, which KSampler's CFG equals; the
main comparison runs at cfg 1 as the templates do, one more at cfg 3 with a negative prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_qwen import qwen25vl_comfy_layout, vl_token_ids, write_qwen_tokenizer
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise
from tests.helpers.tiny_sd import _randomize

PROMPT = "a red fox in snow"
SEED, STEPS, SHIFT = 77, 4, 3.1
TE_WIDTH = 64
CHAT_TEMPLATE = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}{%- if m['content'] is string %}"
                 "{{- m['content'] }}{%- else %}{%- for c in m['content'] %}{{- c['text'] }}{%- endfor %}{%- endif %}"
                 "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
                 "{%- endif %}")


@dataclass
class TinyQwen21:
    transformer: Any
    text_encoder: Any
    tokenizer: Any
    vae: Any


def qwen3vl(tokenizer):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from nodegraph_nodes.dit.qwen_image21_text import mrope_section

    torch.manual_seed(21)
    ids = vl_token_ids(tokenizer)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TE_WIDTH, intermediate_size=96, num_hidden_layers=2,
                         head_dim=32, num_attention_heads=2, num_key_value_heads=1, rms_norm_eps=1e-6,
                         max_position_embeddings=262144,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": mrope_section(32), "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=72, num_heads=1, intermediate_size=96, patch_size=16,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=TE_WIDTH,
                           num_position_embeddings=16, deepstack_visual_indexes=[1]), **ids)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    _randomize(model)
    return model


def transformer():
    from diffusers import QwenImage21Transformer2DModel

    torch.manual_seed(0)
    net = QwenImage21Transformer2DModel(in_channels=64, out_channels=64, num_layers=2, attention_head_dim=32,
                                        num_attention_heads=2, context_in_dim=TE_WIDTH, mlp_ratio=3,
                                        axes_dims_rope=(4, 14, 14)).eval()
    _randomize(net)
    return net


def comfy_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's repackaged names: gate and up fused (gate rows first), under ``model.diffusion_model.``."""
    out = {}
    for k, v in sd.items():
        if k.endswith("img_mlp.gate_layer.weight"):
            out["model.diffusion_model." + k.replace("gate_layer", "gate_up")] = torch.cat(
                [v, sd[k.replace("gate_layer", "proj")]])
        elif not k.endswith("img_mlp.proj.weight"):
            out["model.diffusion_model." + k] = v.contiguous()
    return out


def vae():
    from diffusers import AutoencoderKLQwenImage21

    torch.manual_seed(3)
    v = AutoencoderKLQwenImage21(base_dim=8, decoder_base_dim=12, z_dim=64, dim_mult=[1, 1, 1, 1, 1],
                                 num_res_blocks=1, temperal_downsample=[False, False, False, False]).eval()
    _randomize(v, 0.1)
    return v


def build(root: Path, names: dict[str, str] | None = None) -> TinyQwen21:
    """Writes the tiny files into ``root/models`` (file names overridable: keys ``unet``, ``clip``, ``vae``)."""
    names = {"unet": "tiny_qwen_image21.safetensors", "clip": "tiny_qwen3vl.safetensors",
             "vae": "tiny_qwen_image21_vae.safetensors", **(names or {})}
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    tok = write_qwen_tokenizer(models / "text_encoders" / "qwen3vl_tokenizer")
    te, net, v = qwen3vl(tok), transformer(), vae()
    save_file(comfy_layout(net.state_dict()), str(models / "diffusion_models" / names["unet"]))
    save_file(qwen25vl_comfy_layout(te), str(models / "text_encoders" / names["clip"]))
    save_file({k: t.contiguous() for k, t in v.state_dict().items()}, str(models / "vae" / names["vae"]))
    write_folder(models / "diffusers" / "tiny_qwen_image21", net, te, tok, v)
    return TinyQwen21(net, te, tok, v)


def write_folder(folder: Path, net, te, tok, v) -> None:
    """The same weights as a ``QwenImage21Pipeline`` folder (the tokenizer in ``processor/``, as released)."""
    import json

    from diffusers import FlowMatchEulerDiscreteScheduler

    net.save_pretrained(str(folder / "transformer"))
    v.save_pretrained(str(folder / "vae"))
    te.save_pretrained(str(folder / "text_encoder"))
    tok.save_pretrained(str(folder / "processor"))
    FlowMatchEulerDiscreteScheduler(shift=SHIFT).save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "QwenImage21Pipeline", "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "QwenImage21Transformer2DModel"], "vae": ["diffusers", "AutoencoderKLQwenImage21"],
        "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
        "processor": ["transformers", "Qwen3VLProcessor"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))


class TextProcessor:
    """Qwen3VLProcessor's behaviour without its video processor (which needs torchvision, not installed here):
    the chat template for the pipeline's system-turn count, the tokenizer with padding, and for images
    transformers' Qwen2-VL image processor with Qwen3-VL's settings (patch 16, merge 2, mean/std 0.5, no resize
    between 32² and 4096² px), each ``<|image_pad|>`` expanded once per merged patch as the processor does."""

    def __init__(self, tokenizer):
        from transformers import Qwen2VLImageProcessorPil

        tokenizer.chat_template = CHAT_TEMPLATE
        self.tokenizer = tokenizer
        self.image_processor = Qwen2VLImageProcessorPil(
            patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            size={"shortest_edge": 32 * 32, "longest_edge": 4096 * 4096})

    def apply_chat_template(self, messages, tokenize=True, return_dict=False):
        return [self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)]

    def __call__(self, text, padding=True, padding_side="left", return_tensors="pt", images=None):
        extra = {}
        if images is not None:
            feats = self.image_processor(images=images, return_tensors="pt")
            grids = iter(feats["image_grid_thw"].tolist())
            expanded = []
            for t in text:
                pieces = t.split("<|image_pad|>")
                expanded.append(pieces[0] + "".join("<|image_pad|>" * (g[0] * g[1] * g[2] // 4) + p
                                                    for g, p in zip(grids, pieces[1:])))
            text = expanded
            extra = {"pixel_values": feats["pixel_values"], "image_grid_thw": feats["image_grid_thw"]}
        enc = self.tokenizer(text, padding=padding, padding_side=padding_side, return_tensors=return_tensors,
                             add_special_tokens=False)
        if extra:  # the processor's token types: 1 at image slots
            pad = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            extra["mm_token_type_ids"] = (enc["input_ids"] == pad).long()
        enc.update(extra)
        return enc


def reference(tiny: TinyQwen21, *, shift=SHIFT, prompt=PROMPT, negative=None, cfg=1.0, size=64, kv=True, image=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline

    pipe = QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=tiny.vae,
                               text_encoder=tiny.text_encoder, processor=TextProcessor(tiny.tokenizer),
                               transformer=tiny.transformer)
    pipe.set_progress_bar_config(disable=True)
    lat = size // 16
    noise, _ = engine_noise((1, 64, lat, lat), SEED)
    latents = noise.view(1, 64, lat * lat).transpose(1, 2)
    with torch.no_grad():
        image = pipe(prompt, negative_prompt=negative, true_cfg_scale=cfg, num_inference_steps=STEPS,
                     latents=latents, height=size, width=size, output_type="pt", use_kv_cache=kv, image=image,
                     output_resolution=size).images
    return image.permute(0, 2, 3, 1)


def graph(*, shift=SHIFT, prompt=PROMPT, negative="", cfg=1.0, cache=("auto", "default"), size=64,
          image: str | None = None, folder: bool = False) -> Graph:
    g = Graph()
    if folder:  # the diffusers folder (its scheduler's shift is the default; ModelSamplingAuraFlow sets it anyway)
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_qwen_image21")
        model, clip, vae_ = ck.out(0), ck.out(1), ck.out(2)
    else:
        model = g.node("UNETLoader", unet_name="tiny_qwen_image21.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_qwen3vl.safetensors", type="qwen_image").out(0)
        vae_ = g.node("VAELoader", vae_name="tiny_qwen_image21_vae.safetensors").out(0)
    model = g.node("QwenImage21Cache", model=model, device=cache[0], dtype=cache[1]).out(0)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=shift).out(0)
    # the encoder's empty latent: resolution² without reference images (as the templates sample)
    refs = {}
    if image is not None:  # a reference image (LoadImage), also VAE-encoded
        refs = {"images.image_1": g.node("LoadImage", image=image).out(0), "vae": vae_}
    enc = g.node("TextEncodeQwenImage21", clip=clip, prompt=prompt, negative_prompt=negative, resolution=size, **refs)
    lat = enc.out(2)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple",
                positive=enc.out(0), negative=enc.out(1), latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae_))
    return g


@pytest.fixture(scope="module")
def q21_root(tmp_path_factory):
    return tmp_path_factory.mktemp("qwen21_models")


@pytest.fixture(scope="module")
def tiny21(q21_root):
    return build(q21_root)


@pytest.fixture
def engine21(q21_root, tiny21, tmp_path):
    eng = make_engine(q21_root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def test_txt2img_matches_pipeline(engine21, tiny21):
    image = engine21.run(graph()).raise_for_status().value("out")
    ref = reference(tiny21)
    assert image.shape == ref.shape == (1, 64, 64, 4)  # RGBA: the 2.1 VAE decodes four channels
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_cache_off_matches_pipeline_without_cache(engine21, tiny21):
    image = engine21.run(graph(cache=("off", "default"))).raise_for_status().value("out")
    ref = reference(tiny21, kv=False)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_cfg_with_negative_matches_true_cfg(engine21, tiny21):
    image = engine21.run(graph(cfg=3.0, negative="blue sky")).raise_for_status().value("out")
    ref = reference(tiny21, cfg=3.0, negative="blue sky")
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_quantized_cache_is_close_but_not_exact(engine21, tiny21):
    exact = engine21.run(graph()).raise_for_status().value("out")
    int8 = engine21.run(graph(cache=("cpu", "int8"))).raise_for_status().value("out")
    int4 = engine21.run(graph(cache=("auto", "int4"))).raise_for_status().value("out")
    assert not torch.equal(exact, int8)
    err8, err4 = (exact - int8).abs().max(), (exact - int4).abs().max()
    assert err8 < 0.02 and err8 < err4, (err8, err4)


def test_shift_and_prompt_reach_the_model(engine21, tiny21):
    base = engine21.run(graph()).raise_for_status().value("out")
    other = engine21.run(graph(prompt="blue sky")).raise_for_status().value("out")
    shifted = engine21.run(graph(shift=6.0)).raise_for_status().value("out")
    assert not torch.allclose(base, other, atol=1e-3)
    assert torch.allclose(shifted, reference(tiny21, shift=6.0), atol=1e-4)


def test_edit_with_reference_image_matches_pipeline(engine21, tiny21):
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    engine21.paths.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(engine21.paths.input_dir / "ref.png")
    image = engine21.run(graph(image="ref.png", prompt="make the sky green")).raise_for_status().value("out")
    ref = reference(tiny21, prompt="make the sky green", image=Image.fromarray(pixels))
    plain = reference(tiny21, prompt="make the sky green")
    assert image.shape == ref.shape == (1, 64, 64, 4)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(ref, plain, atol=1e-3)  # the reference reaches the model


def test_diffusers_folder_matches_pipeline(engine21, tiny21):
    image = engine21.run(graph(folder=True)).raise_for_status().value("out")
    ref = reference(tiny21)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_odd_latent_size_is_a_clear_error(engine21, tiny21):
    from nodegraph.errors import ExecutionFailed

    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_qwen3vl.safetensors", type="qwen_image").out(0)
    model = g.node("UNETLoader", unet_name="tiny_qwen_image21.safetensors", weight_dtype="default").out(0)
    enc = g.node("TextEncodeQwenImage21", clip=clip, prompt="x", negative_prompt="", resolution=64)
    # 48 px: an odd latent side at 1/16, which the 2x2 vision slots cannot cover
    lat = g.node("EmptySD3LatentImage", width=48, height=48, batch_size=1)
    ks = g.node("KSampler", model=model, seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=enc.out(0), negative=enc.out(1), latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=ks)
    with pytest.raises(ExecutionFailed, match="multiples of 32"):
        engine21.run(g).raise_for_status()


@pytest.mark.parametrize("device, modes", [("auto", ["extract"] + ["cached"] * (STEPS - 1)), ("off", [None] * STEPS)])
def test_cache_fills_once_then_serves_the_steps(engine21, tiny21, monkeypatch, device, modes):
    from nodegraph_nodes.dit.qwen_image21 import QwenImage21Runner

    seen, kv = [], QwenImage21Runner._kv

    def spy(self, key, layers):
        cache, mode = kv(self, key, layers)
        seen.append(mode)
        return cache, mode

    monkeypatch.setattr(QwenImage21Runner, "_kv", spy)
    engine21.run(graph(cache=(device, "default"))).raise_for_status()
    assert seen == modes
