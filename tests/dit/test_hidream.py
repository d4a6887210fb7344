"""HiDream I1 text-to-image through ComfyUI's nodes (UNETLoader, QuadrupleCLIPLoader, CLIPTextEncode /
CLIPTextEncodeHiDream, ModelSamplingSD3, KSampler, VAEDecode) equals diffusers' HiDreamImagePipeline on the
same tiny weights, seed, steps, guidance and shift; the pipeline encodes the prompts itself (its recipe
gives ComfyUI's states for short prompts, checked here too); also from the pipeline's diffusers folder
(CheckpointLoaderSimple).

ComfyUI's cfg is the pipeline's ``guidance_scale``; KSampler's ``normal`` scheduler gives diffusers' Euler sigmas."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from tests.dit.tiny_hidream import build_hidream, pipeline
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, NEGATIVE = "a photo of a cat", "blue sky"
SEED, STEPS, SHIFT, CFG = 5, 3, 3.0, 5.0
CLIPS = ["tiny_t5xxl.safetensors", "tiny_llama_3.1_8b_instruct.safetensors", "tiny_clip_g_hidream.safetensors",
         "tiny_clip_l_hidream.safetensors"]  # any order


@pytest.fixture(scope="module")
def hidream_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hidream_models")


@pytest.fixture(scope="module")
def tiny_hidream(hidream_root):
    return build_hidream(hidream_root)


@pytest.fixture
def engine(hidream_root, tiny_hidream, tmp_path):
    eng = make_engine(hidream_root, tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def hidream_graph(unet: str = "tiny_hidream_i1.safetensors", per_encoder: bool = False, folder: bool = False) -> Graph:
    g = Graph()
    if folder:  # the scheduler config's shift is the default: no ModelSamplingSD3
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_hidream")
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    else:
        model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
        clip = g.node("QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1], clip_name3=CLIPS[2],
                      clip_name4=CLIPS[3]).out(0)
        vae = g.node("VAELoader", vae_name="tiny_hidream_ae.safetensors").out(0)
        model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    if per_encoder:
        pos = g.node("CLIPTextEncodeHiDream", clip=clip, clip_l=PROMPT, clip_g=PROMPT, t5xxl=PROMPT, llama=PROMPT)
        neg = g.node("CLIPTextEncodeHiDream", clip=clip, clip_l=NEGATIVE, clip_g=NEGATIVE, t5xxl=NEGATIVE,
                     llama=NEGATIVE)
    else:
        pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
        neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=vae)
    g.node("PreviewAny", source=dec)
    return g


def reference(tiny) -> torch.Tensor:
    pipe = pipeline(tiny)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                     latents=noise, height=64, width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("per_encoder,folder", [(False, False), (True, False), (False, True)])
def test_hidream_txt2img_matches_pipeline(engine, tiny_hidream, per_encoder, folder):
    image = engine.run(hidream_graph(per_encoder=per_encoder, folder=folder)).raise_for_status().value("out")
    ref = reference(tiny_hidream)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


LONG_PROMPT = ", ".join(["a photo of a cat", "a red fox in snow", "a dog under a tree", "blue sky"] * 3)


@pytest.mark.parametrize("text", [PROMPT, LONG_PROMPT])
def test_hidream_prompt_states_match_encode_prompt(engine, tiny_hidream, text):
    """CLIPTextEncode's states equal the pipeline's encode_prompt, also for a prompt longer than 77 CLIP tokens
    (the long CLIPs take it in one window)."""
    clip_tokens = len(tiny_hidream.tokenizer(text)["input_ids"])
    assert (clip_tokens > 77) == (text == LONG_PROMPT) and clip_tokens < 128
    g = Graph()
    clip = g.node("QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1], clip_name3=CLIPS[2],
                  clip_name4=CLIPS[3]).out(0)
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "cond", text=text, clip=clip))
    states, extras = engine.run(g).raise_for_status().value("cond")[0]
    with torch.no_grad():
        t5, _, llama, _, pooled, _ = pipeline(tiny_hidream).encode_prompt(
            text, None, None, None, do_classifier_free_guidance=False, device="cpu", max_sequence_length=128)
    assert torch.allclose(states, t5, atol=1e-5)
    assert torch.allclose(extras["pooled_output"], pooled, atol=1e-5)
    assert torch.allclose(extras["conditioning_llama3"], llama.movedim(0, 1), atol=1e-5)


def test_hidream_prefixed_file_and_prompt_states(engine, tiny_hidream):
    """The ``model.diffusion_model.``-prefixed layout gives the same image; CLIPTextEncode's states equal
    the pipeline's encode_prompt (T5 at 128 tokens, Llama's layers, projected pooled L ++ G)."""
    from nodegraph_nodes.dit.hidream import transformer_config

    a = engine.run(hidream_graph()).raise_for_status().value("out")
    b = engine.run(hidream_graph("tiny_hidream_i1_prefixed.safetensors")).raise_for_status().value("out")
    assert torch.equal(a, b)
    g = Graph()
    clip = g.node("QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1], clip_name3=CLIPS[2],
                  clip_name4=CLIPS[3]).out(0)
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "cond", text=PROMPT, clip=clip))
    cond = engine.run(g).raise_for_status().value("cond")
    states, extras = cond[0]
    pipe = pipeline(tiny_hidream)
    with torch.no_grad():
        t5, _, llama, _, pooled, _ = pipe.encode_prompt(PROMPT, None, None, None, do_classifier_free_guidance=False,
                                                        device="cpu", max_sequence_length=128)
    assert states.shape == t5.shape and torch.allclose(states, t5, atol=1e-5)
    assert torch.allclose(extras["pooled_output"], pooled, atol=1e-5)
    assert torch.allclose(extras["conditioning_llama3"], llama.movedim(0, 1), atol=1e-5)
    cfg = transformer_config(tiny_hidream.transformer.state_dict())
    for key in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "caption_channels",
                "text_emb_dim", "num_routed_experts", "in_channels"):
        assert cfg[key] == tiny_hidream.transformer.config[key] or list(cfg[key]) == list(tiny_hidream.transformer.config[key])


def test_quadruple_clip_loader_refuses_an_unprojected_clip(engine, hidream_root, tiny_hidream):
    from safetensors.torch import save_file

    te = hidream_root / "models" / "text_encoders"
    sd = {k: v.contiguous() for k, v in tiny_hidream.clip_l.state_dict().items() if not k.startswith("text_projection")}
    save_file(sd, str(te / "tiny_clip_l_plain.safetensors"))
    g = Graph()
    clip = g.node("QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1], clip_name3=CLIPS[2],
                  clip_name4="tiny_clip_l_plain.safetensors").out(0)
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "cond", text=PROMPT, clip=clip))
    result = engine.run(g)
    assert result.failure is not None and "text_projection" in str(result.failure), result.failure


# -- ComfyUI's official HiDream templates ----------------------------------------------------------

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "comfy_templates_hidream"


@pytest.fixture(scope="module")
def template_files(hidream_root, tiny_hidream):
    import shutil

    models = hidream_root / "models"
    copies = {"vae/ae.safetensors": "vae/tiny_hidream_ae.safetensors",
              "text_encoders/clip_l_hidream.safetensors": "text_encoders/tiny_clip_l_hidream.safetensors",
              "text_encoders/clip_g_hidream.safetensors": "text_encoders/tiny_clip_g_hidream.safetensors",
              "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors": "text_encoders/tiny_t5xxl.safetensors",
              "text_encoders/llama_3.1_8b_instruct_fp8_scaled.safetensors":
                  "text_encoders/tiny_llama_3.1_8b_instruct.safetensors"}
    copies.update({f"diffusion_models/hidream_i1_{v}_fp8.safetensors": "diffusion_models/tiny_hidream_i1.safetensors"
                   for v in ("full", "dev", "fast")})
    for name, source in copies.items():
        shutil.copy(models / source, models / name)
    return models


@pytest.mark.parametrize("variant", ["full", "dev", "fast"])
def test_hidream_template_runs_end_to_end(engine, template_files, variant):
    import json

    from nodegraph.workflow.loader import load_workflow_data

    from tests.dit.template_runs import last_saved_image

    data = json.loads((TEMPLATES / f"hidream_i1_{variant}.json").read_text())
    api = load_workflow_data(data, engine.registry).api
    for node in api.values():
        if node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"].update(steps=3)
    result = engine.run(api).raise_for_status()
    saves = [n for n, v in api.items() if v["class_type"] == "SaveImage"]
    assert saves and all(s in result.executed for s in saves)
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01


def test_package_hidream_templates_validate_with_file_errors_only():
    """The package's HiDream templates validate with at most file errors: I1 with model files only; E1
    (edit) and O1 (all-in-one, edit of a loaded image) with their input image too."""
    from tests.helpers.package_templates import check_templates, package_templates

    paths = package_templates(lambda name: "hidream" in name)
    if not paths:
        pytest.skip("comfyui-workflow-templates-json is not installed")
    check = check_templates(paths, default_registry(packs=False))
    check.assert_missing(set())
    assert {"hidream_i1_full.json", "hidream_i1_dev.json", "hidream_i1_fast.json", "hidream_e1_1.json",
            "hidream_e1_full.json", "image_hidream_o1.json", "image_hidream_o1_dev.json"} <= set(check.clean), \
        check.clean


def _cond(engine, node: str, **inputs):
    g = Graph()
    clip = g.node(node, **inputs).out(0)
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "cond", text=PROMPT, clip=clip))
    return engine.run(g).raise_for_status().value("cond")[0]


def test_dual_and_single_clip_loader_hidream_give_zeros_for_missing_encoders(engine, tiny_hidream):
    """DualCLIPLoader / CLIPLoader type hidream: the given encoders' parts as with all four, the others zeros
    of the released widths (ComfyUI's)."""
    full_states, full = _cond(engine, "QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1],
                              clip_name3=CLIPS[2], clip_name4=CLIPS[3])
    states, extras = _cond(engine, "DualCLIPLoader", clip_name1=CLIPS[1], clip_name2=CLIPS[0], type="hidream")
    assert torch.equal(states, full_states)
    assert torch.equal(extras["conditioning_llama3"], full["conditioning_llama3"])
    assert extras["pooled_output"].shape == (1, 768 + 1280) and not extras["pooled_output"].any()
    states, extras = _cond(engine, "CLIPLoader", clip_name=CLIPS[3], type="hidream")
    assert states.shape == (1, 128, 4096) and not states.any()
    assert extras["conditioning_llama3"].shape == (1, 32, 1, 4096)
    assert torch.equal(extras["pooled_output"][:, :32], full["pooled_output"][:, :32])


def test_hidream_under_a_budget_streams_blocks_and_keeps_the_image(tmp_path_factory, tmp_path, tiny_hidream,
                                                                   hidream_root):
    """--vram-budget-gb: the fp16 tiny HiDream (and Llama) under a budget smaller than the transformer stream
    block by block, stay under the budget and give the unbudgeted image (tests/dit/offload_runs.py)."""
    from tests.dit.offload_runs import budgeted_run, fp16_copy, unbudgeted_run

    root = fp16_copy(hidream_root, tmp_path_factory.mktemp("hidream_fp16"),
                     ("diffusion_models/tiny_hidream_i1.safetensors",
                      "text_encoders/tiny_llama_3.1_8b_instruct.safetensors"))
    registry = default_registry(packs=False)
    base = unbudgeted_run(root, tmp_path, registry, hidream_graph)
    budgeted_run(root, tmp_path, registry, hidream_graph, base, "budget")
    assert base.image.std() > 0.01


LORA_LAYERS = ("double_stream_blocks.0.block.attn1.to_q", "double_stream_blocks.1.block.ff_i.experts.0.w1",
               "single_stream_blocks.1.block.attn1.to_out", "caption_projection.2.linear")


@pytest.mark.parametrize("layout", ["comfy", "kohya", "peft"])
def test_hidream_lora_equals_merged_weights(engine, hidream_root, tiny_hidream, layout):
    """LoraLoaderModelOnly with a LoRA in ComfyUI's (``diffusion_model.…`` + alpha), kohya's or diffusers /
    PEFT names equals UNETLoader on the transformer with the LoRA merged into its weights (1e-4)."""
    from safetensors.torch import save_file

    strength, rank, alpha = 0.8, 2, 1.0
    weights = tiny_hidream.transformer.state_dict()
    g = torch.Generator().manual_seed(3)
    lora, merged = {}, {k: v.clone() for k, v in weights.items()}
    for layer in LORA_LAYERS:
        out_dim, in_dim = weights[layer + ".weight"].shape
        down, up = torch.randn(rank, in_dim, generator=g) * 0.3, torch.randn(out_dim, rank, generator=g) * 0.3
        if layout == "comfy":
            key = "diffusion_model." + layer
            lora.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(alpha)})
            scale = alpha / rank
        elif layout == "kohya":
            key = "lora_unet_" + layer.replace(".", "_")
            lora.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(alpha)})
            scale = alpha / rank
        else:
            key = "transformer." + layer
            lora.update({key + ".lora_A.weight": down, key + ".lora_B.weight": up})
            scale = 1.0
        merged[layer + ".weight"] = (merged[layer + ".weight"] + strength * scale * (up @ down)).contiguous()
    models = hidream_root / "models"
    (models / "loras").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in lora.items()}, str(models / "loras" / f"tiny_hidream_{layout}.safetensors"))
    save_file({k: v.contiguous() for k, v in merged.items()},
              str(models / "diffusion_models" / f"tiny_hidream_merged_{layout}.safetensors"))

    g_lora = Graph()
    model = g_lora.node("UNETLoader", unet_name="tiny_hidream_i1.safetensors", weight_dtype="default").out(0)
    model = g_lora.node("LoraLoaderModelOnly", model=model, lora_name=f"tiny_hidream_{layout}.safetensors",
                        strength_model=strength).out(0)
    with_lora = engine.run(_sample(g_lora, model)).raise_for_status().value("out")
    g_merged = Graph()
    model = g_merged.node("UNETLoader", unet_name=f"tiny_hidream_merged_{layout}.safetensors", weight_dtype="default").out(0)
    merged_image = engine.run(_sample(g_merged, model)).raise_for_status().value("out")
    plain = engine.run(hidream_graph()).raise_for_status().value("out")
    assert torch.allclose(with_lora, merged_image, atol=1e-4), (with_lora - merged_image).abs().max()
    assert not torch.allclose(with_lora, plain, atol=1e-3)


def _sample(g: Graph, model) -> Graph:
    clip = g.node("QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1], clip_name3=CLIPS[2],
                  clip_name4=CLIPS[3]).out(0)
    vae = g.node("VAELoader", vae_name="tiny_hidream_ae.safetensors").out(0)
    model = g.node("ModelSamplingSD3", model=model, shift=SHIFT).out(0)
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))
    return g


def test_hidream_lora_on_clip_l_changes_only_its_pooled_part(engine, hidream_root, tiny_hidream):
    """LoraLoader: a kohya text-encoder LoRA (``lora_te1_…``) patches CLIP-L, so only CLIP-L's part of the pooled
    output moves; T5 and Llama states stay."""
    from safetensors.torch import save_file

    key = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    g = torch.Generator().manual_seed(4)
    lora = {key + ".lora_down.weight": torch.randn(2, 32, generator=g), key + ".lora_up.weight": torch.randn(32, 2, generator=g),
            key + ".alpha": torch.tensor(2.0)}
    (hidream_root / "models" / "loras").mkdir(exist_ok=True)
    save_file(lora, str(hidream_root / "models" / "loras" / "tiny_hidream_te.safetensors"))
    graph = Graph()
    model = graph.node("UNETLoader", unet_name="tiny_hidream_i1.safetensors", weight_dtype="default").out(0)
    clip = graph.node("QuadrupleCLIPLoader", clip_name1=CLIPS[0], clip_name2=CLIPS[1], clip_name3=CLIPS[2],
                      clip_name4=CLIPS[3]).out(0)
    patched = graph.node("LoraLoader", model=model, clip=clip, lora_name="tiny_hidream_te.safetensors",
                         strength_model=1.0, strength_clip=1.0).out(1)
    graph.node("PreviewAny", source=graph.node("CLIPTextEncode", "a", text=PROMPT, clip=clip))
    graph.node("PreviewAny", source=graph.node("CLIPTextEncode", "b", text=PROMPT, clip=patched))
    result = engine.run(graph).raise_for_status()
    (sa, ea), (sb, eb) = result.value("a")[0], result.value("b")[0]
    assert torch.equal(sa, sb) and torch.equal(ea["conditioning_llama3"], eb["conditioning_llama3"])
    assert torch.equal(ea["pooled_output"][:, 32:], eb["pooled_output"][:, 32:])
    assert not torch.allclose(ea["pooled_output"][:, :32], eb["pooled_output"][:, :32], atol=1e-3)


@pytest.mark.parametrize("name", ["hidream_e1_full", "hidream_e1_1"])
def test_hidream_e1_template_runs_end_to_end(engine, template_files, name):
    """ComfyUI's HiDream E1 editing templates on the tiny transformer under their names (input scaled to 64×64,
    E1.1 to ImageScaleToTotalPixels' minimum 0.01 MP)."""
    import json
    import shutil

    from PIL import Image

    from nodegraph.workflow.loader import load_workflow_data

    from tests.dit.template_runs import last_saved_image

    shutil.copy(template_files / "diffusion_models" / "tiny_hidream_i1.safetensors",
                template_files / "diffusion_models" / f"{name}_bf16.safetensors")
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    Image.fromarray(pixels).save(engine.paths.input_dir / f"{name}_input_image.jpg")
    api = load_workflow_data(json.loads((TEMPLATES / f"{name}.json").read_text()), engine.registry).api
    for node in api.values():
        if node["class_type"] == "ImageScale":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "ImageScaleToTotalPixels":
            node["inputs"].update(megapixels=0.01)  # its minimum: 100×100
        if node["class_type"] == "BasicScheduler":
            node["inputs"].update(steps=3)
    result = engine.run(api).raise_for_status()
    saves = [n for n, v in api.items() if v["class_type"] == "SaveImage"]
    assert saves and all(s in result.executed for s in saves)
    image = last_saved_image(engine.paths.output_dir)
    side = 64 if name == "hidream_e1_full" else 96  # 100×100 encodes to 12×12 latents
    assert image.shape == (side, side, 3) and image.std() > 0.01


def test_hidream_e1_image_latent_goes_right_of_the_latent(tiny_hidream):
    """The runner with an entry's concat_latent_image gives minus the network on [latent | image latent in the
    model's space] (width axis), cropped to the latent (ComfyUI's HiDream E1 input)."""
    from nodegraph_nodes.dit.formats import FLUX
    from nodegraph_nodes.dit.hidream import HiDreamRunner, build_transformer
    from nodegraph_nodes.sampling.model import CondPart

    net = build_transformer({k: v.clone() for k, v in tiny_hidream.transformer.state_dict().items()}, torch.float32)
    g = torch.Generator().manual_seed(2)
    x, image = torch.randn(1, 16, 6, 8, generator=g), torch.randn(1, 16, 6, 8, generator=g)
    t5, llama, pooled = torch.randn(1, 128, 96, generator=g), torch.randn(1, 3, 128, 32, generator=g), torch.randn(1, 80, generator=g)
    extras = {"pooled_output": pooled, "conditioning_llama3": llama, "concat_latent_image": image}
    with torch.no_grad():
        out = HiDreamRunner(net, "cpu")(x, torch.tensor([600.0]), [CondPart(t5, extras, 1)])
        ref = -tiny_hidream.transformer(hidden_states=torch.cat([x, FLUX.process_in(image)], dim=-1),
                                        timesteps=torch.tensor([600.0]), encoder_hidden_states_t5=t5,
                                        encoder_hidden_states_llama3=llama.movedim(1, 0), pooled_embeds=pooled,
                                        return_dict=False)[0][..., :8]
        plain = HiDreamRunner(net, "cpu")(x, torch.tensor([600.0]), [CondPart(t5, {**extras, "concat_latent_image": None}, 1)])
    assert out.shape == (1, 16, 6, 8)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, plain, atol=1e-3)
