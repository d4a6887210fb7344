"""LoRAs in a user layout change the output as diffusers' own LoRA loading does: the same file through
ComfyUI's LoraLoaderModelOnly in our engine, and through ``pipe.load_lora_weights`` (PEFT) in the diffusers
pipeline at the same strength, seed and latents, agree at 1e-4 (Flux.1 with a kohya file, SD3.5 with a
diffusers / PEFT file, Qwen-Image with a ComfyUI / lightx2v file, Flux.2
with a ComfyUI / BFL-layout file)."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save_file

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.test_flux2 import engine, tiny  # noqa: F401  (Flux.2's fixtures)
from tests.dit.tiny_flow import _contig, flux_to_bfl

RANK, ALPHA, STRENGTH = 4, 2.0, 0.8
# Layers left out because diffusers (0.42.1 here) takes them differently, not our engine (test_lora.py checks
# them against merged weights): single_blocks.N.linear1 - its kohya converter splits it at full-size Flux
# widths (3072 x3 + 12288), which a tiny model does not have; final_layer.adaLN_modulation.1 - it drops that
# layer's alpha (scale 1 instead of alpha / rank); img_in - lora_state_dict converts it right (x_embedder,
# alpha / rank) but it does not reach the transformer: a file with img_in alone loads no adapter at all
# ("not in the list of present adapters: set()"), and in a mixed file the image differs by 0.17.
FLUX_LAYERS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.0", "double_blocks.0.img_attn.proj",
               "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear2"]


def _pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape[0], RANK, generator=g) * 0.3, torch.randn(RANK, shape[1], generator=g) * 0.3


def _with_model_lora(prompt: dict, lora: str) -> dict:
    """The API prompt with a LoraLoaderModelOnly between its UNETLoader and the rest."""
    prompt = copy.deepcopy(prompt)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "UNETLoader")
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == [loader, 0]:
                node["inputs"][name] = ["lora", 0]
    prompt["lora"] = {"class_type": "LoraLoaderModelOnly",
                      "inputs": {"model": [loader, 0], "lora_name": lora, "strength_model": STRENGTH}}
    return prompt


def _with_adapter(pipe, path) -> None:
    pipe.load_lora_weights(str(path), adapter_name="user")
    pipe.set_adapters(["user"], adapter_weights=[STRENGTH])


def test_flux_kohya_lora_matches_diffusers_load_lora_weights(flow_engine, flow_root, tiny_flux):
    from diffusers import FluxPipeline

    from nodegraph_nodes.dit.model import pack_latents
    from tests.dit.test_flux_parity import GUIDANCE, PROMPT, SEED, STEPS, flux_graph
    from tests.helpers.noise import engine_noise

    bfl = flux_to_bfl(tiny_flux.transformer)
    kohya = {}
    for i, layer in enumerate(FLUX_LAYERS):
        up, down = _pair(bfl[layer + ".weight"].shape, 10 + i)
        flat = "lora_unet_" + layer.replace(".", "_")
        kohya.update({flat + ".lora_up.weight": up, flat + ".lora_down.weight": down,
                      flat + ".alpha": torch.tensor(ALPHA)})
    path = flow_root / "models" / "loras" / "flux_user_kohya.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contig(kohya), str(path))

    prompt = flux_graph("files", "ksampler").to_api()
    base = flow_engine.run(prompt).raise_for_status().value("out")
    image = flow_engine.run(_with_model_lora(prompt, path.name)).raise_for_status().value("out")

    pipe = tiny_flux.flux_pipeline(FluxPipeline, transformer=copy.deepcopy(tiny_flux.transformer))
    _with_adapter(pipe, path)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        ref = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=pack_latents(noise),
                   height=64, width=64, max_sequence_length=256, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, base, atol=1e-3)  # the LoRA does change the picture


def test_sd3_diffusers_lora_matches_diffusers_load_lora_weights(flow_engine, flow_root, tiny_sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from tests.dit.test_sd3_parity import CFG, NEGATIVE, PROMPT, SEED, STEPS, sd3_graph
    from tests.helpers.noise import engine_noise

    net = tiny_sd3.transformer
    lora = {}
    targets = [(1, "attn.to_k"), (0, "attn.to_q"), (0, "ff.net.2"), (1, "attn.to_out.0")]
    for i, (block, name) in enumerate(targets):
        module = net.transformer_blocks[block].get_submodule(name)
        up, down = _pair(module.weight.shape, 30 + i)
        base = f"transformer.transformer_blocks.{block}.{name}"
        # no ".alpha" entries: diffusers refuses keys without "lora" in this layout; both sides then use
        # alpha = rank
        lora.update({base + ".lora_B.weight": up, base + ".lora_A.weight": down})
    path = flow_root / "models" / "loras" / "sd3_user_peft.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contig(lora), str(path))

    prompt = sd3_graph("separate").to_api()
    base_image = flow_engine.run(prompt).raise_for_status().value("out")
    image = flow_engine.run(_with_model_lora(prompt, path.name)).raise_for_status().value("out")

    t = tiny_sd3.text
    pipe = StableDiffusion3Pipeline(transformer=copy.deepcopy(net), vae=tiny_sd3.vae, text_encoder=t.clip_l,
                                    tokenizer=t.tokenizer, text_encoder_2=t.clip_g, tokenizer_2=t.tokenizer_2,
                                    text_encoder_3=t.t5, tokenizer_3=t.tokenizer_t5,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    _with_adapter(pipe, path)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
                   height=64, width=64, max_sequence_length=77, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, base_image, atol=1e-3)


def test_qwen_image_comfy_lora_matches_diffusers_load_lora_weights(qwen_engine, qwen_root, tiny_qwen_image):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from tests.dit.test_qwen_image import PROMPT, SEED, SHIFT, STEPS, qwen_graph
    from tests.helpers.noise import engine_noise

    net = tiny_qwen_image.transformer
    lora = {}
    targets = [(0, "attn.to_q"), (1, "img_mlp.net.0.proj"), (0, "attn.add_v_proj"), (1, "attn.to_out.0")]
    for i, (block, name) in enumerate(targets):
        up, down = _pair(net.transformer_blocks[block].get_submodule(name).weight.shape, 50 + i)
        base = f"diffusion_model.transformer_blocks.{block}.{name}"
        lora.update({base + ".lora_up.weight": up, base + ".lora_down.weight": down,
                     base + ".alpha": torch.tensor(ALPHA)})
    path = qwen_root / "models" / "loras" / "qwen_user_comfy.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contig(lora), str(path))

    prompt = qwen_graph("files").to_api()
    base_image = qwen_engine.run(prompt).raise_for_status().value("out")
    image = qwen_engine.run(_with_model_lora(prompt, path.name)).raise_for_status().value("out")

    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=tiny_qwen_image.vae,
                             text_encoder=tiny_qwen_image.text_encoder, tokenizer=tiny_qwen_image.tokenizer,
                             transformer=copy.deepcopy(net))
    pipe.set_progress_bar_config(disable=True)
    _with_adapter(pipe, path)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    latents = QwenImagePipeline._pack_latents(noise, 1, 16, 8, 8)
    with torch.no_grad():
        ref = pipe(PROMPT, num_inference_steps=STEPS, true_cfg_scale=1.0, latents=latents, height=64, width=64,
                   output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, base_image, atol=1e-3)


def _flux2_diffusers_image(t, states, path) -> torch.Tensor:
    from diffusers import Flux2Pipeline

    from tests.dit.test_flux2 import reference
    from tests.dit.tiny_flux2 import scheduler

    net = copy.deepcopy(t.transformer)
    pipe = Flux2Pipeline(scheduler=scheduler(), vae=t.vae, text_encoder=t.text_encoder, tokenizer=t.tokenizer,
                         transformer=net)
    _with_adapter(pipe, path)
    return reference(t, states, transformer=net)


def test_flux2_comfy_lora_matches_diffusers_load_lora_weights(engine, tiny):  # noqa: F811
    """The same BFL-layout file on both sides, less two things diffusers' Flux.2 converter does not take:
    ``.alpha`` entries (it raises "original_state_dict should be empty"; as ai-toolkit saves, alpha = rank on
    both sides) and ``final_layer.adaLN_modulation.1`` (it renames it to ``norm_out.linear`` without swapping
    the shift / scale halves, unlike its Flux.1 converters; ComfyUI and we apply it to the BFL layer as it is,
    see the next test)."""
    from tests.dit.test_flux2 import flux2_graph, pipeline_states, reference
    from tests.dit.tiny_flux2 import flux2_lora

    root, t = tiny
    _, bfl = flux2_lora(t.transformer)
    bfl = {k: v for k, v in bfl.items() if not k.endswith(".alpha") and "final_layer" not in k}
    path = root / "models" / "loras" / "flux2_user_comfy.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(bfl, str(path))
    image = engine.run(flux2_graph("files", lora=path.name, lora_strength=STRENGTH)).raise_for_status().value("out")
    states = pipeline_states(t)
    ref = _flux2_diffusers_image(t, states, path)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(t, states), atol=1e-3)


def test_flux2_comfy_lora_with_final_layer_matches_diffusers_named_lora(engine, tiny):  # noqa: F811
    """The whole ComfyUI-layout file (fused qkv, linear1, final modulation, alpha) in our engine equals
    diffusers loading its diffusers-named equivalent (``transformer.<module>.lora_A/B``, alpha / rank folded
    into B since that layout carries no alpha)."""
    from tests.dit.test_flux2 import flux2_graph, pipeline_states
    from tests.dit.tiny_flux2 import flux2_lora

    root, t = tiny
    modules, bfl = flux2_lora(t.transformer)
    loras = root / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file(bfl, str(loras / "flux2_user_comfy_full.safetensors"))
    diff = {}
    for name, (down, up, scale) in modules.items():
        diff[f"transformer.{name}.lora_A.weight"] = down.clone()
        diff[f"transformer.{name}.lora_B.weight"] = (up * scale).contiguous()
    save_file(diff, str(loras / "flux2_user_diffusers.safetensors"))
    image = engine.run(flux2_graph("files", lora="flux2_user_comfy_full.safetensors", lora_strength=STRENGTH)) \
        .raise_for_status().value("out")
    ref = _flux2_diffusers_image(t, pipeline_states(t), loras / "flux2_user_diffusers.safetensors")
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
