"""Chroma text-to-image through ComfyUI's nodes (UNETLoader with the single file, CLIPLoader type chroma
with the T5 file, VAELoader with Flux's VAE; and CheckpointLoaderSimple with the ChromaPipeline folder)
equals diffusers' ChromaPipeline on the same tiny weights, seed, steps, CFG and ComfyUI's default shift.

The pipeline is given the prompt states of ComfyUI's recipe (T5 of the prompt's tokens and ``</s>``, no
padding; diffusers' own encoding pads to 512 and lets one pad token through the mask) and the engine's
starting noise."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.dit import chroma, convert
from nodegraph_nodes.dit.model import pack_latents
from tests.dit.template_runs import last_saved_image, sample_and_preview, small_template
from tests.dit.tiny_chroma import build_chroma, chroma_to_comfy
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, NEGATIVE = "a photo of a red fox in snow", "blue sky"
SEED, STEPS, CFG = 5, 4, 4.0


@pytest.fixture(scope="module")
def chroma_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("chroma_models")
    return root, build_chroma(root)


@pytest.fixture
def engine(chroma_root, tmp_path):
    eng = make_engine(chroma_root[0], tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def chroma_graph(how: str, negative: str = NEGATIVE, shift_node: bool = False) -> Graph:
    g = Graph()
    if how == "folder":
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_chroma")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    else:
        model = g.node("UNETLoader", unet_name="tiny_chroma.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_t5xxl.safetensors", type="chroma").out(0)
        vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
    if shift_node:
        model = g.node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=64, height=64).out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=negative, clip=clip)
    sample_and_preview(g, model, pos, neg, vae, SEED, STEPS, CFG)
    return g


def comfy_t5(tiny, text: str) -> torch.Tensor:
    """ComfyUI's Chroma prompt states: T5 over the prompt's tokens and ``</s>``, no padding."""
    tok = tiny.text.tokenizer_t5
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        return tiny.text.t5(input_ids=torch.tensor([ids]))[0]


def reference(tiny, negative: str = NEGATIVE, base_shift: float = 1.15) -> torch.Tensor:
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(tiny.diffusers_dir / "scheduler"),
                                                                base_shift=base_shift)
    pipe = ChromaPipeline(transformer=tiny.transformer, vae=tiny.vae, text_encoder=tiny.text.t5,
                          tokenizer=tiny.text.tokenizer_t5, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    pos, neg = comfy_t5(tiny, PROMPT), comfy_t5(tiny, negative)
    with torch.no_grad():
        image = pipe(prompt_embeds=pos, prompt_attention_mask=torch.ones(pos.shape[:2]),
                     negative_prompt_embeds=neg, negative_prompt_attention_mask=torch.ones(neg.shape[:2]),
                     num_inference_steps=STEPS, guidance_scale=CFG, latents=pack_latents(noise), height=64,
                     width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how", ["files", "folder"])
def test_chroma_txt2img_matches_pipeline(engine, chroma_root, how):
    tiny = chroma_root[1]
    image = engine.run(chroma_graph(how)).raise_for_status().value("out")
    ref = reference(tiny)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_chroma_model_sampling_flux_and_empty_negative(engine, chroma_root):
    """ModelSamplingFlux's resolution shift (mu from 64x64) equals the pipeline's dynamic shift; an empty
    negative prompt is T5 over ``</s>`` alone."""
    tiny = chroma_root[1]
    image = engine.run(chroma_graph("files", negative="", shift_node=True)).raise_for_status().value("out")
    ref = reference(tiny, negative="", base_shift=0.5)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(tiny, negative=""), atol=1e-3)


def test_chroma_single_file_is_detected_and_converts_exactly(chroma_root):
    tiny = chroma_root[1]
    sd = {"model.diffusion_model." + k: v for k, v in chroma_to_comfy(tiny.transformer).items()}
    assert chroma.detect_prefix(sd) == "model.diffusion_model."
    assert convert.detect_transformer(sd) is None  # not taken for a Flux.1 schnell file
    back = chroma.to_diffusers(convert.strip_prefix(sd, "model.diffusion_model."))
    own = tiny.transformer.state_dict()
    assert set(back) == set(own)
    assert all(torch.equal(back[k], own[k]) for k in own)
    assert chroma.detect_prefix(own) == ""  # diffusers' names load too


def test_chroma_clip_type_refuses_other_encoders(engine, chroma_root):
    from safetensors.torch import save_file

    root = chroma_root[0]
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(4, 8)},
              str(root / "models" / "text_encoders" / "not_t5.safetensors"))
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="not_t5.safetensors", type="chroma")
    g.node("PreviewAny", source=g.node("CLIPTextEncode", text="a", clip=clip))
    result = engine.run(g)
    assert result.failure is not None
    assert "type chroma takes a T5-XXL" in str(result.failure)


def test_t5_tokenizer_options_min_padding_one(engine, chroma_root):
    """T5TokenizerOptions min_padding 1 (the Chroma templates' 'official' setting) appends one pad token
    after ``</s>``: the pipeline given those states (mask all ones) agrees."""
    tiny = chroma_root[1]
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_chroma.safetensors", weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_t5xxl.safetensors", type="chroma").out(0)
    clip = g.node("T5TokenizerOptions", clip=clip, min_padding=1, min_length=0).out(0)
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    sample_and_preview(g, model, pos, neg, vae, SEED, STEPS, CFG)
    image = engine.run(g).raise_for_status().value("out")

    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    tok = tiny.text.tokenizer_t5

    def states(text):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
        with torch.no_grad():
            return tiny.text.t5(input_ids=torch.tensor([ids]))[0]

    pipe = ChromaPipeline(transformer=tiny.transformer, vae=tiny.vae, text_encoder=tiny.text.t5, tokenizer=tok,
                          scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
                              str(tiny.diffusers_dir / "scheduler")))
    pipe.set_progress_bar_config(disable=True)
    pos_s, neg_s = states(PROMPT), states(NEGATIVE)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        ref = pipe(prompt_embeds=pos_s, prompt_attention_mask=torch.ones(pos_s.shape[:2]),
                   negative_prompt_embeds=neg_s, negative_prompt_attention_mask=torch.ones(neg_s.shape[:2]),
                   num_inference_steps=STEPS, guidance_scale=CFG, latents=pack_latents(noise), height=64, width=64,
                   output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(tiny), atol=1e-3)


def test_chroma_template_runs(engine, chroma_root):
    """ComfyUI's image_chroma_text_to_image template (copied, MIT) runs end to end on the tiny model saved
    under its file names (CLIPLoader type chroma, T5TokenizerOptions, ModelSamplingAuraFlow shift 1,
    CFGGuider, BasicScheduler beta, SamplerCustomAdvanced, SaveImage); only the empty latent is made 64x64
    and the 26 steps 4."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(chroma_root[0], {"diffusion_models/tiny_chroma.safetensors": "diffusion_models/Chroma1-HD-fp8mixed.safetensors",
                             "text_encoders/tiny_t5xxl.safetensors": "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors",
                             "vae/tiny_flux_ae.safetensors": "vae/ae.safetensors"})
    api = small_template("image_chroma_text_to_image", default_registry(packs=False), "BasicScheduler")
    result = engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"CLIPLoader", "T5TokenizerOptions", "UNETLoader", "CFGGuider", "SaveImage"} <= kinds
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def test_chroma_kohya_lora_equals_merged_weights(engine, chroma_root):
    """LoraLoaderModelOnly with a LoRA in kohya's names of the BFL blocks (fused qkv, single blocks'
    linear1) equals the single file with the LoRA merged into those weights."""
    from safetensors.torch import load_file, save_file

    models = chroma_root[0] / "models"
    base = load_file(str(models / "diffusion_models" / "tiny_chroma.safetensors"))
    g = torch.Generator().manual_seed(3)
    lora, merged = {}, dict(base)
    for layer in ("double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.0", "single_blocks.1.linear1"):
        w = base["model.diffusion_model." + layer + ".weight"]
        down = torch.randn(2, w.shape[1], generator=g) * 0.05
        up = torch.randn(w.shape[0], 2, generator=g) * 0.05
        kohya = "lora_unet_" + layer.replace(".", "_")
        lora.update({kohya + ".lora_down.weight": down, kohya + ".lora_up.weight": up,
                     kohya + ".alpha": torch.tensor(1.0)})
        merged["model.diffusion_model." + layer + ".weight"] = w + 0.8 * (up @ down) * 0.5
    (models / "loras").mkdir(exist_ok=True)
    save_file(lora, str(models / "loras" / "tiny_chroma_lora.safetensors"))
    save_file({k: v.contiguous() for k, v in merged.items()},
              str(models / "diffusion_models" / "tiny_chroma_merged.safetensors"))

    def run(unet: str, with_lora: bool) -> torch.Tensor:
        g2 = Graph()
        model = g2.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
        if with_lora:
            model = g2.node("LoraLoaderModelOnly", model=model, lora_name="tiny_chroma_lora.safetensors",
                            strength_model=0.8).out(0)
        clip = g2.node("CLIPLoader", clip_name="tiny_t5xxl.safetensors", type="chroma").out(0)
        pos = g2.node("CLIPTextEncode", text=PROMPT, clip=clip)
        neg = g2.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
        vae = g2.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
        sample_and_preview(g2, model, pos, neg, vae, SEED, STEPS, CFG)
        return engine.run(g2).raise_for_status().value("out")

    with_lora, merged_out, plain = run("tiny_chroma.safetensors", True), run("tiny_chroma_merged.safetensors", False), \
        run("tiny_chroma.safetensors", False)
    assert torch.allclose(with_lora, merged_out, atol=1e-4), (with_lora - merged_out).abs().max()
    assert not torch.allclose(with_lora, plain, atol=1e-3)
