"""HunyuanVideo 1.5 text-to-video through ComfyUI's nodes (UNETLoader, DualCLIPLoader type hunyuan_video_15,
VAELoader, EmptyHunyuanVideo15Latent → KSampler → VAEDecode) equals diffusers' HunyuanVideo15Pipeline on the
same tiny weights, seed, steps, guidance and shift; the key layouts convert to diffusers' names exactly; the
official t2v template runs end to end on the tiny files saved under its file names."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_hunyuan_video15 import build_hunyuan_video15, transformer_file_layout
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT = 'a red fox in snow with a sign saying "hello"'
NEGATIVE = "blue sky"
SEED, STEPS, CFG, SHIFT = 13, 4, 4.0, 5.0  # 4 steps: the simple schedule's sigmas are exact for steps dividing 1000
WIDTH, HEIGHT, LENGTH = 32, 32, 5  # latent [1, 32, 2, 2, 2]


@pytest.fixture(scope="module")
def tiny_hv15(tmp_path_factory):
    return build_hunyuan_video15(tmp_path_factory.mktemp("hv15_models"))


@pytest.fixture
def hv15_engine(tiny_hv15, tmp_path):
    eng = make_engine(tiny_hv15.root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def hv15_graph(prompt: str = PROMPT, shift: float | None = SHIFT, unet: str = "tiny_hv15_t2v.safetensors") -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_byt5.safetensors", clip_name2="tiny_qwen25vl.safetensors",
                  type="hunyuan_video_15").out(0)
    vae = g.node("VAELoader", vae_name="tiny_hv15_vae.safetensors").out(0)
    if shift is not None:
        model = g.node("ModelSamplingSD3", model=model, shift=shift).out(0)
    pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    lat = g.node("EmptyHunyuanVideo15Latent", width=WIDTH, height=HEIGHT, length=LENGTH, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    return g


def reference(tiny, prompt: str = PROMPT, shift: float = SHIFT) -> torch.Tensor:
    """HunyuanVideo15Pipeline's frames ``[F, H, W, 3]`` from the engine's starting noise, with ComfyUI's spelling of
    the system message (diffusers' differs in whitespace only) and the crop after it."""
    from diffusers import HunyuanVideo15Pipeline

    pipe = HunyuanVideo15Pipeline(transformer=tiny.transformer, **_pipeline_parts(tiny, shift))
    return _pipeline_frames(tiny, pipe, prompt, height=HEIGHT, width=WIDTH)


def _pipeline_parts(tiny, shift: float) -> dict:
    """The HunyuanVideo 1.5 pipelines' text encoders, tokenizers, VAE, scheduler and guider on the tiny files."""
    from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler
    from transformers import ByT5Tokenizer

    return dict(text_encoder=tiny.text_encoder.model.language_model, tokenizer=tiny.tokenizer, vae=tiny.vae,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), text_encoder_2=tiny.byt5,
                tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=CFG))


def _pipeline_frames(tiny, pipe, prompt: str, **inputs) -> torch.Tensor:
    """``pipe``'s frames ``[F, H, W, 3]`` for ``prompt`` (and ``inputs``) from the engine's starting noise, with
    ComfyUI's spelling of the system message and the crop after it."""
    from nodegraph_nodes.dit.hunyuan_video15_text import TEMPLATE, system_message
    from nodegraph_nodes.dit.llm_text import template_end

    pipe.set_progress_bar_config(disable=True)
    pipe.system_message = system_message()
    ids = tiny.tokenizer(TEMPLATE.format(prompt), add_special_tokens=False)["input_ids"]
    pipe.prompt_template_encode_start_idx = template_end(tiny.tokenizer, ids)
    noise, _ = engine_noise((1, 32, (LENGTH - 1) // 4 + 1, HEIGHT // 16, WIDTH // 16), SEED)
    with torch.no_grad():
        video = pipe(prompt=prompt, negative_prompt=NEGATIVE, num_frames=LENGTH, num_inference_steps=STEPS,
                     latents=noise, output_type="pt", **inputs).frames
    return video[0].permute(0, 2, 3, 1).float()


def test_key_layouts_convert_to_diffusers_names(tiny_hv15):
    """ComfyUI's names (fused q/k/v) and Tencent's (separate q/k/v) both give diffusers' state dict back."""
    from nodegraph_nodes.dit.hunyuan_video15 import detect_transformer, transformer_config
    from nodegraph_nodes.dit.hunyuan_video15_convert import transformer_to_diffusers

    ref = tiny_hv15.transformer.state_dict()
    for tencent, prefix in ((False, ""), (True, "model.diffusion_model.")):
        sd = transformer_file_layout(ref, tencent=tencent, prefix=prefix)
        assert detect_transformer(sd.keys()) == prefix
        out = transformer_to_diffusers({k[len(prefix):]: v for k, v in sd.items()})
        assert set(out) == set(ref)
        assert all(torch.equal(out[k], ref[k]) for k in ref)
        config = transformer_config(out)
        assert {k: tiny_hv15.transformer.config[k] for k in ("in_channels", "num_layers", "num_refiner_layers",
                                                              "mlp_ratio", "text_embed_2_dim", "image_embed_dim")} == \
            {k: config[k] for k in ("in_channels", "num_layers", "num_refiner_layers", "mlp_ratio",
                                    "text_embed_2_dim", "image_embed_dim")}


def test_meanflow_files_are_refused():
    from nodegraph_nodes.diffusion.files import ModelFileError
    from nodegraph_nodes.dit.hunyuan_video15_convert import transformer_to_diffusers

    with pytest.raises(ModelFileError, match="meanflow"):
        transformer_to_diffusers({"time_r_in.mlp.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelFileError, match="unknown HunyuanVideo 1.5 transformer weight"):
        transformer_to_diffusers({"double_blocks.0.mystery.weight": torch.zeros(2, 2)})


def test_empty_latent_and_glyph_conditioning(hv15_engine):
    g = Graph()
    lat = g.node("EmptyHunyuanVideo15Latent", "lat", width=48, height=32, length=9, batch_size=2)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_qwen25vl.safetensors", clip_name2="tiny_byt5.safetensors",
                  type="hunyuan_video_15").out(0)
    quoted = g.node("CLIPTextEncode", "quoted", text='a sign saying "hi" and “yo”', clip=clip)
    plain = g.node("CLIPTextEncode", "plain", text="", clip=clip)
    for n in (lat, quoted, plain):
        g.node("PreviewAny", source=n)
    result = hv15_engine.run(g).raise_for_status()
    latent = result.value("lat")
    assert latent["samples"].shape == (2, 32, 3, 2, 3) and latent["downscale_ratio_spacial"] == 16
    (states, extras), = result.value("quoted")
    assert states.shape[-1] == 128
    # 'Text "hi". Text "yo". ' in bytes (+ the end token)
    assert extras["conditioning_byt5small"].shape[:2] == (1, len('Text "hi". Text "yo". '.encode()) + 1)
    (_, plain_extras), = result.value("plain")
    assert "conditioning_byt5small" not in plain_extras


def test_hv15_t2v_matches_pipeline(hv15_engine, tiny_hv15):
    frames = hv15_engine.run(hv15_graph()).raise_for_status().value("out")
    ref = reference(tiny_hv15)
    assert frames.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(frames, ref, atol=1e-4), (frames - ref).abs().max()
    assert frames.std() > 0.01
    assert not torch.allclose(frames[0], frames[-1], atol=1e-3)


def test_hv15_prompt_and_default_shift_reach_the_model(hv15_engine, tiny_hv15):
    base = hv15_engine.run(hv15_graph()).raise_for_status().value("out")
    other = hv15_engine.run(hv15_graph(prompt="a dog under a tree")).raise_for_status().value("out")
    default_shift = hv15_engine.run(hv15_graph(shift=None)).raise_for_status().value("out")
    assert not torch.allclose(base, other, atol=1e-3)
    assert torch.allclose(default_shift, reference(tiny_hv15, shift=7.0), atol=1e-4)  # ComfyUI's default shift 7


def _start_image(folder):
    """A random 32×32 RGB start image saved as ``start.png`` in ``folder``; the PIL image."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")
    image.save(folder / "start.png")
    return image


def i2v_reference(tiny, start) -> torch.Tensor:
    """HunyuanVideo15ImageToVideoPipeline's frames (its SigLIP states of the start image, the image's latent on the
    first latent frame with mask 1 there), as :func:`reference`."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline
    from transformers import SiglipImageProcessor

    pipe = HunyuanVideo15ImageToVideoPipeline(
        transformer=tiny.i2v_transformer, image_encoder=tiny.siglip,
        feature_extractor=SiglipImageProcessor(size={"height": HEIGHT, "width": WIDTH}), **_pipeline_parts(tiny, SHIFT))
    return _pipeline_frames(tiny, pipe, PROMPT, image=start)


def test_hv15_i2v_matches_pipeline(hv15_engine, tiny_hv15):
    """Image-to-video from Tencent's file names: LoadImage → CLIPVisionLoader (SigLIP) → CLIPVisionEncode (crop
    none) and HunyuanVideo15ImageToVideo's start latent and mask → KSampler → VAEDecode."""
    start = _start_image(hv15_engine.paths.input_dir)
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_hv15_i2v.safetensors", weight_dtype="default").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    clip = g.node("DualCLIPLoader", clip_name1="tiny_qwen25vl.safetensors", clip_name2="tiny_byt5.safetensors",
                  type="hunyuan_video_15").out(0)
    vae = g.node("VAELoader", vae_name="tiny_hv15_vae.safetensors").out(0)
    image = g.node("LoadImage", image="start.png").out(0)
    vision = g.node("CLIPVisionLoader", clip_name="tiny_siglip.safetensors").out(0)
    encoded = g.node("CLIPVisionEncode", clip_vision=vision, image=image, crop="none")
    i2v = g.node("HunyuanVideo15ImageToVideo", "i2v", positive=g.node("CLIPTextEncode", text=PROMPT, clip=clip),
                 negative=g.node("CLIPTextEncode", text=NEGATIVE, clip=clip), vae=vae, width=WIDTH, height=HEIGHT,
                 length=LENGTH, batch_size=1, start_image=image, clip_vision_output=encoded)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="simple",
                positive=i2v.out(0), negative=i2v.out(1), latent_image=i2v.out(2), denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    frames = hv15_engine.run(g).raise_for_status().value("out")
    ref = i2v_reference(tiny_hv15, start)
    assert frames.shape == ref.shape == (LENGTH, HEIGHT, WIDTH, 3)
    assert torch.allclose(frames, ref, atol=1e-4), (frames - ref).abs().max()
    assert frames.std() > 0.01


def test_hv15_vae_decode_tiled(hv15_engine):
    """VAEDecodeTiled on HunyuanVideo 1.5 latents: temporal chunks (the frames before the first overlap equal
    VAEDecode's; the VAE is causal) and spatial tiles (HunyuanVideo 1.5's own tiling parameters)."""
    g = Graph()
    vae = g.node("VAELoader", vae_name="tiny_hv15_vae.safetensors").out(0)
    lat = g.node("EmptyHunyuanVideo15Latent", width=96, height=96, length=13, batch_size=1)
    whole = g.node("VAEDecode", "whole", samples=lat, vae=vae)
    chunks = g.node("VAEDecodeTiled", "chunks", samples=lat, vae=vae, tile_size=512, overlap=64, temporal_size=8,
                    temporal_overlap=4)
    tiles = g.node("VAEDecodeTiled", "tiles", samples=lat, vae=vae, tile_size=64, overlap=16, temporal_size=64,
                   temporal_overlap=8)
    for n in (whole, chunks, tiles):
        g.node("PreviewAny", source=n)
    result = hv15_engine.run(g).raise_for_status()
    whole, chunks, tiles = (result.value(n) for n in ("whole", "chunks", "tiles"))
    assert whole.shape == chunks.shape == tiles.shape == (13, 96, 96, 3)
    assert torch.allclose(chunks[:4], whole[:4], atol=1e-5)
    assert not torch.allclose(chunks, whole, atol=1e-3)  # later chunks start without the earlier frames
    assert torch.isfinite(tiles).all() and tiles.std() > 0.01
