"""FLUX.3 through ComfyUI's nodes (UNETLoader with BFL's single-file layout, CLIPLoader type flux3 with a Qwen3-VL
file, VAELoader with Flux.2's VAE; CLIPTextEncode, EmptyFlux2LatentImage, KSampler euler/simple,
ReferenceMultiLatent, VAEDecode — the official templates' nodes) equals diffusers' FLUX.3 modular pipeline
(``Flux3AutoBlocks`` / ``Flux3DistilledAutoBlocks`` without the prompt upsampler) on the same tiny weights, seed,
steps and guidance: text-to-image with true CFG, the step-distilled flow map at cfg 1, and an edit with two
reference images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_flux3 import NAMES, Processor, build_flux3, to_bfl
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, NEGATIVE, SEED, STEPS, CFG = "a red fox in snow", "blue sky", 7, 4, 3.5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux3_models")
    return root, build_flux3(root)


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny[0], tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def flux3_graph(unet: str = NAMES["unet"], cfg: float = CFG, negative: str = NEGATIVE,
                references: tuple[str, ...] = (), sampler: str = "euler", lora: str | None = None,
                lora_strength: float = 1.0) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    if lora is not None:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=lora_strength).out(0)
    clip = g.node("CLIPLoader", clip_name=NAMES["clip"], type="flux3").out(0)
    vae = g.node("VAELoader", vae_name=NAMES["vae"]).out(0)
    pos = g.node("CLIPTextEncode", "cond", text=PROMPT, clip=clip).out(0)
    neg = g.node("CLIPTextEncode", text=negative, clip=clip).out(0)
    if references:
        images = {f"images.image{i}": g.node("LoadImage", image=name).out(0) for i, name in enumerate(references)}
        ref = g.node("ReferenceMultiLatent", positive=pos, negative=neg, vae=vae, resolution="keep resolution",
                      **images)
        pos, neg = ref.out(0), ref.out(1)
    lat = g.node("EmptyFlux2LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", "lat", model=model, positive=pos, negative=neg, latent_image=lat, seed=SEED, steps=STEPS,
                cfg=cfg, sampler_name=sampler, scheduler="simple", denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def pipeline(t, distilled: bool = False):
    from diffusers.modular_pipelines import Flux3AutoBlocks, Flux3DistilledAutoBlocks

    blocks = Flux3DistilledAutoBlocks() if distilled else Flux3AutoBlocks()
    blocks.sub_blocks.pop("prompt_upsampler")  # the templates' upsampler switch is off as saved
    pipe = blocks.init_pipeline()
    pipe.update_components(transformer=t.distilled if distilled else t.transformer, vae=t.vae,
                           text_encoder=t.text_encoder, tokenizer=Processor(t.tokenizer))
    return pipe


def reference(t, *, distilled: bool = False, negative: str | None = NEGATIVE, images=None, lora=None) -> dict:
    noise, _ = engine_noise((1, 128, 4, 4), SEED)
    kwargs = {} if distilled else {"negative_prompt": negative}
    if images is not None:
        kwargs["image"] = images
    pipe = pipeline(t, distilled)
    if lora is not None:
        pipe.load_lora_weights(dict(lora))
    try:
        with torch.no_grad():
            out = pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=STEPS, latents=noise,
                       output_type="pt", output=["latents", "images"], **kwargs)
    finally:
        if lora is not None:
            pipe.unload_lora_weights()
    return {"latents": out["latents"], "image": out["images"].permute(0, 2, 3, 1)}


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a.float(), b.float(), atol=atol), (a.float() - b.float()).abs().max()


def test_bfl_layout_round_trips_through_diffusers_converter(tiny):
    from diffusers.loaders.single_file_utils import convert_flux3_transformer_checkpoint_to_diffusers

    for net in (tiny[1].transformer, tiny[1].distilled):
        sd = net.state_dict()
        back = convert_flux3_transformer_checkpoint_to_diffusers(to_bfl(dict(sd)))
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_flux3_txt2img_matches_pipeline(engine, tiny):
    result = engine.run(flux3_graph()).raise_for_status()
    ref = reference(tiny[1])
    _close(result.value("lat")["samples"], ref["latents"])
    _close(result.value("out"), ref["image"])


def test_flux3_negative_prompt_reaches_the_model(engine, tiny):
    a = engine.run(flux3_graph()).raise_for_status().value("out")
    b = engine.run(flux3_graph(negative="")).raise_for_status().value("out")
    assert not torch.allclose(a, b, atol=1e-3)
    _close(b, reference(tiny[1], negative="")["image"])


def test_flux3_distilled_flow_map_matches_pipeline(engine, tiny):
    """The step-distilled model at cfg 1: each step also gets the time it jumps to (the next sigma)."""
    result = engine.run(flux3_graph(unet=NAMES["distilled"], cfg=1.0)).raise_for_status()
    ref = reference(tiny[1], distilled=True)
    _close(result.value("lat")["samples"], ref["latents"])
    _close(result.value("out"), ref["image"])


def test_flux3_edit_with_two_references_matches_pipeline(engine, tiny, tmp_path):
    """ReferenceMultiLatent (keep resolution) with two images equals the pipeline's multi-reference edit (each
    reference encoded on its own, told apart on the l axis); sizes on the 16-px grid, under 1 MP, so the
    pipeline neither resizes nor crops them."""
    from PIL import Image

    rng = np.random.default_rng(4)
    (tmp_path / "input").mkdir(parents=True, exist_ok=True)
    pictures = []
    for name, (h, w) in (("ref_a.png", (64, 48)), ("ref_b.png", (32, 64))):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(tmp_path / "input" / name)
        pictures.append(Image.fromarray(pixels, "RGB"))
    result = engine.run(flux3_graph(references=("ref_a.png", "ref_b.png"))).raise_for_status()
    ref = reference(tiny[1], images=pictures)
    _close(result.value("lat")["samples"], ref["latents"])
    _close(result.value("out"), ref["image"])
    plain = engine.run(flux3_graph()).raise_for_status().value("out")
    assert not torch.allclose(plain, result.value("out"), atol=1e-3)


def test_flux3_loader_errors(engine, tiny):
    """CLIPLoader type flux3 with a file that is not Qwen3-VL, and a transformer with int8 weights but none of
    ComfyUI's quantisation markers (marked ``*_int8_convrot`` files are read: test_flux3_templates), fail with
    errors naming the file or the weights."""
    from safetensors.torch import save_file

    root = tiny[0] / "models"
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4)},
              str(root / "text_encoders" / "not_qwen3vl.safetensors"))
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="not_qwen3vl.safetensors", type="flux3")
    g.node("PreviewAny", source=g.node("CLIPTextEncode", text="x", clip=clip))
    with pytest.raises(Exception, match="not_qwen3vl.safetensors is not a Qwen3-VL model"):
        engine.run(g).raise_for_status()
    sd = to_bfl(tiny[1].transformer.state_dict())
    sd["single_blocks.0.q_proj.weight"] = torch.zeros_like(sd["single_blocks.0.q_proj.weight"], dtype=torch.int8)
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in sd.items()},
              str(root / "diffusion_models" / "tiny_flux3_int8.safetensors"))
    with pytest.raises(Exception, match="integer-quantized weights .* without ComfyUI's quantisation markers"):
        engine.run(flux3_graph(unet="tiny_flux3_int8.safetensors")).raise_for_status()


def test_flux3_budget_streams_blocks_and_keeps_the_image(tiny, tmp_path):
    """--vram-budget-gb / --lowvram: an fp16 FLUX.3 file under a budget smaller than the transformer streams its
    blocks, stays under the budget and gives the unbudgeted image."""
    from tests.dit.offload_runs import budgeted_run, fp16_copy, unbudgeted_run

    root = fp16_copy(tiny[0], tmp_path / "fp16", (f"diffusion_models/{NAMES['unet']}",))
    registry = default_registry(packs=False)
    base = unbudgeted_run(root, tmp_path, registry, flux3_graph)
    for mode in ("budget", "lowvram"):
        budgeted_run(root, tmp_path, registry, flux3_graph, base, mode)
    assert base.image.std() > 0.01


def bfl_lora(t, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA in ComfyUI's / ai-toolkit's BFL names (``diffusion_model.<layer>.lora_A/B.weight``) on a block layer
    of each stack: the joint blocks, the image and the text mode blocks."""
    gen = torch.Generator().manual_seed(9)
    sd = {}
    for layer in ("single_blocks.0.q_proj", "single_blocks.1.mlp_in", "content_mode_blocks.image.0.attn_out",
                  "txt_mode_blocks.0.v_proj"):
        module = t.transformer.get_submodule(layer.replace("single_blocks", "single_transformer_blocks")
                                             .replace("content_mode_blocks", "mode_blocks")
                                             .replace("q_proj", "attn.to_q").replace("v_proj", "attn.to_v")
                                             .replace("attn_out", "attn.to_out.0").replace("mlp_in", "ff.linear_in"))
        out_f, in_f = module.weight.shape
        sd[f"diffusion_model.{layer}.lora_A.weight"] = torch.randn(rank, in_f, generator=gen) * 0.3
        sd[f"diffusion_model.{layer}.lora_B.weight"] = torch.randn(out_f, rank, generator=gen) * 0.3
    return sd


def test_flux3_lora_in_bfl_names_matches_diffusers_lora_loading(engine, tiny):
    """LoraLoaderModelOnly with a BFL-named LoRA changes the image as diffusers' Flux3LoraLoaderMixin
    (``load_lora_weights`` on the pipeline, which converts the same file) does, at 1e-4."""
    from safetensors.torch import save_file

    t = tiny[1]
    sd = bfl_lora(t)
    (tiny[0] / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(sd, str(tiny[0] / "models" / "loras" / "flux3_bfl_lora.safetensors"))
    result = engine.run(flux3_graph(lora="flux3_bfl_lora.safetensors")).raise_for_status()
    ref = reference(t, lora=sd)
    _close(result.value("lat")["samples"], ref["latents"])
    _close(result.value("out"), ref["image"])
    plain = engine.run(flux3_graph()).raise_for_status().value("out")
    assert not torch.allclose(plain, result.value("out"), atol=1e-3)
    # the same LoRA in diffusers / PEFT names (``transformer.<module>``) gives the same image
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_flux3_lora_to_diffusers

    save_file(_convert_non_diffusers_flux3_lora_to_diffusers(dict(sd)),
              str(tiny[0] / "models" / "loras" / "flux3_peft_lora.safetensors"))
    peft = engine.run(flux3_graph(lora="flux3_peft_lora.safetensors")).raise_for_status().value("out")
    _close(peft, result.value("out"), atol=1e-6)
