"""Flux.2 text-to-image through ComfyUI's nodes (UNETLoader with BFL's layout or diffusers' layout,
CLIPLoader type flux2 with a Mistral file, VAELoader with the LDM-layout VAE, or CheckpointLoaderSimple
on a Flux2Pipeline folder; CLIPTextEncode, FluxGuidance, EmptyFlux2LatentImage, Flux2Scheduler,
BasicGuider, SamplerCustomAdvanced — the official Flux.2 template's nodes) equals diffusers' Flux2Pipeline
on the same tiny weights, seed, steps and guidance.

The text states are compared with the pipeline's own Mistral encoding of the same prompt (its chat
template, no padding); the pipeline is then given ComfyUI's model input (those states left-padded with
zeros to 512 tokens, as ComfyUI's Flux.2 model pads them — the pipeline would pad the tokens instead)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.template_runs import last_saved_image
from tests.dit.tiny_flux2 import build_flux2, scheduler
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, SEED, STEPS, GUIDANCE = "a red fox in snow", 7, 4, 4.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux2_models")
    return root, build_flux2(root)


@pytest.fixture
def engine(tiny, tmp_path):
    eng = make_engine(tiny[0], tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def flux2_graph(how: str, unet: str = "tiny_flux2_dev.safetensors", guidance: float = GUIDANCE,
                reference_image: str | None = None, lora: str | None = None, lora_strength: float = 1.0) -> Graph:
    g = Graph()
    if how == "files":
        model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_mistral_3_small_flux2.safetensors", type="flux2").out(0)
        vae = g.node("VAELoader", vae_name="tiny_flux2_vae.safetensors").out(0)
    else:
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_flux2")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    if lora is not None:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=lora_strength).out(0)
    cond = g.node("CLIPTextEncode", "cond", text=PROMPT, clip=clip)
    if reference_image is not None:  # the edit template: the input image's latent as a reference
        img = g.node("LoadImage", image=reference_image)
        enc = g.node("VAEEncode", pixels=img.out(0), vae=vae)
        cond = g.node("ReferenceLatent", conditioning=cond, latent=enc)
    guided = g.node("FluxGuidance", conditioning=cond, guidance=guidance)
    guider = g.node("BasicGuider", model=model, conditioning=guided)
    lat = g.node("EmptyFlux2LatentImage", width=64, height=64, batch_size=1)
    sigmas = g.node("Flux2Scheduler", steps=STEPS, width=64, height=64)
    sampler = g.node("KSamplerSelect", sampler_name="euler")
    noise = g.node("RandomNoise", noise_seed=SEED)
    sca = g.node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image=lat)
    dec = g.node("VAEDecode", "out", samples=sca.out(0), vae=vae)
    g.node("PreviewAny", source=dec)
    g.node("PreviewAny", source=cond)
    return g


def pipeline_states(t) -> torch.Tensor:
    from diffusers import Flux2Pipeline

    from nodegraph_nodes.dit.flux2 import TEMPLATE

    length = 1 + len(t.tokenizer(TEMPLATE.format(PROMPT), add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        return Flux2Pipeline._get_mistral_3_small_prompt_embeds(t.text_encoder, t.tokenizer, PROMPT,
                                                                max_sequence_length=length)


def reference(t, states: torch.Tensor, guidance: float = GUIDANCE, transformer=None) -> torch.Tensor:
    from diffusers import Flux2Pipeline

    from nodegraph_nodes.dit.flux2 import pad_text

    pipe = Flux2Pipeline(scheduler=scheduler(), vae=t.vae, text_encoder=t.text_encoder, tokenizer=t.tokenizer,
                         transformer=transformer or t.transformer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 128, 4, 4), SEED)
    with torch.no_grad():
        image = pipe(prompt_embeds=pad_text(states), num_inference_steps=STEPS, guidance_scale=guidance,
                     latents=noise, height=64, width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how,unet", [("files", "tiny_flux2_dev.safetensors"),
                                      ("files", "tiny_flux2_diffusers.safetensors"), ("folder", "")])
def test_flux2_txt2img_matches_pipeline(engine, tiny, how, unet):
    t = tiny[1]
    result = engine.run(flux2_graph(how, unet)).raise_for_status()
    states = pipeline_states(t)
    cond = result.value("cond")
    assert cond[0][0].shape == states.shape and states.shape[-1] == 3 * 32
    assert torch.allclose(cond[0][0], states, atol=1e-5), (cond[0][0] - states).abs().max()
    image, ref = result.value("out"), reference(t, states)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_flux2_guidance_reaches_the_model(engine, tiny):
    """FluxGuidance's value is the guidance embedding's input: 1.5 equals the pipeline at 1.5 and differs
    from 4."""
    t = tiny[1]
    states = pipeline_states(t)
    image = engine.run(flux2_graph("files", guidance=1.5)).raise_for_status().value("out")
    ref = reference(t, states, guidance=1.5)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(t, states), atol=1e-3)


def test_flux2_reference_latent_matches_pipeline_edit(engine, tiny, tmp_path):
    """Flux.2 editing: LoadImage → VAEEncode → ReferenceLatent equals Flux2Pipeline(image=…) (reference
    tokens at time 10 after the image's)."""
    from diffusers import Flux2Pipeline
    from PIL import Image

    from nodegraph_nodes.dit.flux2 import pad_text

    t = tiny[1]
    gen = torch.Generator().manual_seed(3)
    pixels = (torch.rand(64, 64, 3, generator=gen) * 255).to(torch.uint8).numpy()
    (tmp_path / "input").mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(tmp_path / "input" / "ref.png")
    image = engine.run(flux2_graph("files", reference_image="ref.png")).raise_for_status().value("out")
    states = pipeline_states(t)
    pipe = Flux2Pipeline(scheduler=scheduler(), vae=t.vae, text_encoder=t.text_encoder, tokenizer=t.tokenizer,
                         transformer=t.transformer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 128, 4, 4), SEED)
    with torch.no_grad():
        ref = pipe(image=Image.fromarray(pixels, "RGB"), prompt_embeds=pad_text(states), num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, latents=noise, height=64, width=64, output_type="pt").images
    ref = ref.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(t, states), atol=1e-3)


def test_flux2_template_runs(engine, tiny):
    """ComfyUI's image_flux2_text_to_image template (tests/data/comfy_templates_dit, MIT) on the tiny models
    under its file names, with a small-decoder VAE as its full_encoder_small_decoder file; 64×64 and 4
    steps instead of 1024² and 20. The Turbo LoRA sits behind a switch that is off: it must exist, it is
    not applied."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file

    from nodegraph.workflow.loader import load_workflow_data

    from tests.dit.tiny_flow import _contig
    from tests.dit.tiny_flux2 import small_decoder_vae

    models = tiny[0] / "models"
    shutil.copy(models / "diffusion_models" / "tiny_flux2_dev.safetensors",
                models / "diffusion_models" / "flux2_dev_fp8mixed.safetensors")
    shutil.copy(models / "text_encoders" / "tiny_mistral_3_small_flux2.safetensors",
                models / "text_encoders" / "mistral_3_small_flux2_bf16.safetensors")
    save_file(_contig(small_decoder_vae().state_dict()), str(models / "vae" / "full_encoder_small_decoder.safetensors"))
    (models / "loras").mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(models / "loras" / "Flux_2-Turbo-LoRA_comfyui.safetensors"))
    template = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_dit" / "image_flux2_text_to_image.json"
    api = load_workflow_data(json.loads(template.read_text()), engine.registry).api
    for n in api.values():
        if n["class_type"] in ("EmptyFlux2LatentImage", "Flux2Scheduler"):
            n["inputs"].update(width=64, height=64)
        if n["class_type"] == "PrimitiveInt" and n["inputs"].get("value") == 20:
            n["inputs"]["value"] = 4
    result = engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"UNETLoader", "CLIPLoader", "VAELoader", "Flux2Scheduler", "EmptyFlux2LatentImage",
            "SamplerCustomAdvanced", "SaveImage"} <= kinds
    assert "LoraLoaderModelOnly" not in kinds
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01


@pytest.fixture(scope="module")
def klein(tiny):
    from tests.dit.tiny_flux2 import build_klein

    return build_klein(tiny[0], tiny[1].vae)


@pytest.mark.parametrize("cfg,how", [(1.0, "files"), (4.0, "files"), (4.0, "folder")])
def test_flux2_klein_matches_pipeline(engine, klein, cfg, how):
    """Klein (Qwen3 encoder under CLIPLoader type flux2, or a Flux2KleinPipeline folder; no guidance
    embedding): distilled settings (cfg 1) and base settings (CFGGuider cfg 4 with an empty negative prompt)
    equal Flux2KleinPipeline, which
    encodes the prompts itself (the same right padding to 512)."""
    from diffusers import Flux2KleinPipeline

    g = Graph()
    if how == "files":
        model = g.node("UNETLoader", unet_name="tiny_flux2_klein.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_qwen_3_klein.safetensors", type="flux2").out(0)
        vae = g.node("VAELoader", vae_name="tiny_flux2_vae.safetensors").out(0)
    else:  # a Flux2KleinPipeline folder
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_flux2_klein")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    guider = g.node("CFGGuider", model=model, positive=pos, negative=neg, cfg=cfg)
    sca = g.node("SamplerCustomAdvanced", noise=g.node("RandomNoise", noise_seed=SEED), guider=guider,
                 sampler=g.node("KSamplerSelect", sampler_name="euler"),
                 sigmas=g.node("Flux2Scheduler", steps=STEPS, width=64, height=64),
                 latent_image=g.node("EmptyFlux2LatentImage", width=64, height=64, batch_size=1))
    dec = g.node("VAEDecode", "out", samples=sca.out(0), vae=vae)
    g.node("PreviewAny", source=dec)
    image = engine.run(g).raise_for_status().value("out")

    pipe = Flux2KleinPipeline(scheduler=scheduler(), vae=klein.vae, text_encoder=klein.text_encoder,
                              tokenizer=klein.tokenizer, transformer=klein.transformer, is_distilled=cfg == 1.0)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 128, 4, 4), SEED)
    with torch.no_grad():
        ref = pipe(prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=cfg, latents=noise, height=64, width=64,
                   output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_flux2_package_templates_validate_with_file_errors_only():
    """Every Flux.2 template of comfyui-workflow-templates-json (not the api_ ones) validates against
    nodegraph's nodes with file errors only (the Klein KV edit's FluxKVCache included: tests/dit/test_flux2_kv.py)."""
    from tests.helpers.package_templates import check_templates, package_templates

    paths = package_templates(lambda name: "flux2" in name)
    assert len(paths) >= 10
    check = check_templates(paths, default_registry(packs=False))
    assert check.missing_types == set()
    assert "image_flux2_klein_9b_kv_image_edit.json" in check.clean


def test_flux2_loader_errors(engine, tiny):
    """CLIPLoader type flux2 names what it takes; a Mistral file without a tokenizer says where to put one."""
    import shutil

    models = tiny[0] / "models"
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="tiny_flux2_diffusers.safetensors", type="flux2")
    g.node("PreviewAny", source=g.node("CLIPTextEncode", text="x", clip=clip))
    (models / "text_encoders" / "tiny_flux2_diffusers.safetensors").write_bytes(
        (models / "diffusion_models" / "tiny_flux2_diffusers.safetensors").read_bytes())
    with pytest.raises(Exception, match=r"mistral_3_small_flux2.*is neither"):
        engine.run(g).raise_for_status()

    lonely = tiny[0] / "lonely" / "models"
    (lonely / "text_encoders").mkdir(parents=True)
    shutil.copy(models / "text_encoders" / "tiny_mistral_3_small_flux2.safetensors", lonely / "text_encoders")
    from nodegraph_nodes.diffusion.files import ModelFileError
    from nodegraph_nodes.dit.flux2_loading import find_tokenizer

    with pytest.raises(ModelFileError, match="mistral3_tokenizer"):
        find_tokenizer(lonely, lonely / "text_encoders" / "tiny_mistral_3_small_flux2.safetensors")


def test_flux2_lora_in_comfy_layout_matches_merged_weights(engine, tiny):
    """A LoRA saved in BFL's names (ComfyUI / ai-toolkit: fused qkv, linear1, the final modulation, with
    alpha) through LoraLoaderModelOnly equals the pipeline on a transformer whose diffusers modules got
    strength · alpha/rank · B·A added (the LoRA was made in diffusers' names and fused here for the file)."""
    import copy

    from safetensors.torch import save_file

    from tests.dit.tiny_flux2 import flux2_lora

    t = tiny[1]
    modules, bfl = flux2_lora(t.transformer)
    (tiny[0] / "models" / "loras").mkdir(exist_ok=True)
    save_file(bfl, str(tiny[0] / "models" / "loras" / "tiny_flux2_lora.safetensors"))
    merged = copy.deepcopy(t.transformer)
    with torch.no_grad():
        for name, (down, up, scale) in modules.items():
            merged.get_submodule(name).weight += 0.8 * scale * (up @ down)
    image = engine.run(flux2_graph("files", lora="tiny_flux2_lora.safetensors", lora_strength=0.8)) \
        .raise_for_status().value("out")
    states = pipeline_states(t)
    ref = reference(t, states, transformer=merged)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(t, states), atol=1e-3)


def test_flux2_budget_streams_blocks_and_keeps_the_image(tiny, tmp_path):
    """--vram-budget-gb / --lowvram: fp16 Flux.2 files (as released, bf16) under a budget smaller than the
    transformer stream its blocks, stay under the budget and give the unbudgeted image."""
    from tests.dit.offload_runs import budgeted_run, fp16_copy, unbudgeted_run

    root = fp16_copy(tiny[0], tmp_path / "fp16", ("diffusion_models/tiny_flux2_dev.safetensors",
                                                  "text_encoders/tiny_mistral_3_small_flux2.safetensors"))
    registry = default_registry(packs=False)
    base = unbudgeted_run(root, tmp_path, registry, lambda: flux2_graph("files"))
    for mode in ("budget", "lowvram"):
        budgeted_run(root, tmp_path, registry, lambda: flux2_graph("files"), base, mode)
    assert base.image.std() > 0.01


def test_flux2_tokenizer_from_the_files_tekken_model(tiny, tmp_path):
    """ComfyUI's repackaged Mistral file carries Mistral's tekken.json (``tekken_model``): with no tokenizer
    folder anywhere, CLIPLoader type flux2 reads it and the text states equal the pipeline's (whose
    tokenizer is the BPE the tekken.json was written from)."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    from tests.dit.tiny_flux2 import tekken_json

    t = tiny[1]
    root = tmp_path / "tekken"
    (root / "models" / "text_encoders").mkdir(parents=True)
    sd = load_file(str(tiny[0] / "models" / "text_encoders" / "tiny_mistral_3_small_flux2.safetensors"))
    sd["tekken_model"] = torch.from_numpy(np.frombuffer(tekken_json(t.tokenizer), dtype=np.uint8).copy())
    save_file(sd, str(root / "models" / "text_encoders" / "mistral_3_small_flux2_bf16.safetensors"))
    g = Graph()
    clip = g.node("CLIPLoader", clip_name="mistral_3_small_flux2_bf16.safetensors", type="flux2")
    cond = g.node("CLIPTextEncode", "cond", text=PROMPT, clip=clip)
    g.node("PreviewAny", source=cond)
    engine = make_engine(root, tmp_path / "run", default_registry(packs=False))
    try:
        states = engine.run(g).raise_for_status().value("cond")[0][0]
    finally:
        engine.close()
    ref = pipeline_states(t)
    assert states.shape == ref.shape
    assert torch.allclose(states, ref, atol=1e-5), (states - ref).abs().max()


def test_flux2_klein_template_runs(engine, tiny, klein):
    """ComfyUI's image_flux2_klein_text_to_image template (copied, MIT) on the tiny Klein under its file
    names; 64×64 (its size primitives) and 4 steps instead of 1024² and 20."""
    import json
    import shutil
    from pathlib import Path

    from nodegraph.workflow.loader import load_workflow_data

    models = tiny[0] / "models"
    for src, dst in (("diffusion_models/tiny_flux2_klein.safetensors", "diffusion_models/flux-2-klein-base-4b.safetensors"),
                     ("text_encoders/tiny_qwen_3_klein.safetensors", "text_encoders/qwen_3_4b.safetensors"),
                     ("vae/tiny_flux2_vae.safetensors", "vae/flux2-vae.safetensors")):
        shutil.copy(models / src, models / dst)
    template = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_dit" / "image_flux2_klein_text_to_image.json"
    api = load_workflow_data(json.loads(template.read_text()), engine.registry).api
    for n in api.values():
        if n["class_type"] == "PrimitiveInt" and n["inputs"].get("value") == 1024:
            n["inputs"]["value"] = 64
        if n["class_type"] == "Flux2Scheduler":
            n["inputs"]["steps"] = 4
    result = engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"UNETLoader", "CLIPLoader", "CFGGuider", "Flux2Scheduler", "SaveImage"} <= kinds
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def test_flux2_edit_template_runs(engine, tiny):
    """ComfyUI's image_flux2 edit template (copied, MIT): the input image scaled to 0.01 megapixels instead
    of 1 (the latent and schedule follow its size through GetImageSize), 4 steps instead of 20."""
    import json
    import shutil
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from nodegraph.workflow.loader import load_workflow_data

    models = tiny[0] / "models"
    for src, dst in (("diffusion_models/tiny_flux2_dev.safetensors", "diffusion_models/flux2_dev_fp8mixed.safetensors"),
                     ("text_encoders/tiny_mistral_3_small_flux2.safetensors",
                      "text_encoders/mistral_3_small_flux2_bf16.safetensors"),
                     ("vae/tiny_flux2_vae.safetensors", "vae/full_encoder_small_decoder.safetensors")):
        shutil.copy(models / src, models / dst)
    (models / "loras").mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, str(models / "loras" / "Flux_2-Turbo-LoRA_comfyui.safetensors"))
    inputs = engine.paths.input_dir
    Path(inputs).mkdir(parents=True, exist_ok=True)
    pixels = (np.random.RandomState(0).rand(96, 96, 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(Path(inputs) / "image_flux2_input_image.png")
    template = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_dit" / "image_flux2.json"
    api = load_workflow_data(json.loads(template.read_text()), engine.registry).api
    for n in api.values():
        if n["class_type"] == "ImageScaleToTotalPixels":
            n["inputs"]["megapixels"] = 0.01
        if n["class_type"] == "PrimitiveInt" and n["inputs"].get("value") == 20:
            n["inputs"]["value"] = 4
    result = engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"ReferenceLatent", "VAEEncode", "GetImageSize", "Flux2Scheduler", "SaveImage"} <= kinds
    assert "LoraLoaderModelOnly" not in kinds
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (96, 96, 3) and image.std() > 0.01


def test_mistral3_layout_builds_the_same_language_model(tiny):
    """Today's transformers layout of Mistral3ForConditionalGeneration (``model.language_model.…`` beside
    ``model.vision_tower.…``, as diffusers' FLUX.2-dev text_encoder folder holds it) gives the same text
    model as ComfyUI's ``model.layers.…`` file."""
    from nodegraph_nodes.dit.flux2_loading import build_mistral, is_mistral

    t = tiny[1]
    sd = {k: v.clone() for k, v in t.text_encoder.state_dict().items()}
    mistral3 = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v for k, v in sd.items()}
    mistral3["model.vision_tower.patch_conv.weight"] = torch.zeros(4, 3, 2, 2)
    assert is_mistral(sd) and is_mistral(mistral3)
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    a = build_mistral(sd, torch.float32)(input_ids=ids, output_hidden_states=True).hidden_states[20]
    b = build_mistral(mistral3, torch.float32)(input_ids=ids, output_hidden_states=True).hidden_states[20]
    ref = t.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[20]
    assert torch.equal(a, b) and torch.allclose(a, ref, atol=1e-6)
