"""Skip-layer guidance: SkipLayerGuidanceDiT on SD3.5 equals StableDiffusion3Pipeline's
``skip_guidance_layers`` (same steps selected), the Simple variant skips blocks for the negative rows
only, both act on Flux's double and single blocks, and bad inputs are clear errors."""

from __future__ import annotations

import torch

from nodegraph.builder import Graph

from tests.dit.test_sd3_parity import CFG, NEGATIVE, PROMPT, SEED, STEPS, sd3_graph
from tests.helpers.noise import engine_noise


def _with_patch(how: str, patch: dict) -> Graph:
    """The SD3 parity graph with a patch node between the checkpoint's MODEL and the KSampler."""
    g = sd3_graph(how)
    prompt = g.to_api()
    ks = next(nid for nid, node in prompt.items() if node["class_type"] == "KSampler")
    model_link = prompt[ks]["inputs"]["model"]
    prompt["slg"] = {"class_type": patch.pop("class_type"), "inputs": {"model": model_link, **patch}}
    prompt[ks]["inputs"]["model"] = ["slg", 0]
    return prompt


def test_skip_layer_guidance_matches_sd3_pipeline(flow_engine, tiny_sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    # ComfyUI's window by sigma: start 0.01 leaves out only the first step (sigma 1); the pipeline's by
    # step index: 0.2 · 4 < i < 0.8 · 4 selects steps 1..3 as well
    prompt = _with_patch("checkpoint", {"class_type": "SkipLayerGuidanceDiT", "double_layers": "0",
                                        "single_layers": "", "scale": 2.5, "start_percent": 0.01,
                                        "end_percent": 1.0, "rescaling_scale": 0.0})
    image = flow_engine.run(prompt).raise_for_status().value("out")
    text = tiny_sd3.text
    pipe = StableDiffusion3Pipeline(transformer=tiny_sd3.transformer, vae=tiny_sd3.vae, text_encoder=text.clip_l,
                                    tokenizer=text.tokenizer, text_encoder_2=text.clip_g, tokenizer_2=text.tokenizer_2,
                                    text_encoder_3=text.t5, tokenizer_3=text.tokenizer_t5,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        ref = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
                   height=64, width=64, max_sequence_length=77, output_type="pt", skip_guidance_layers=[0],
                   skip_layer_guidance_scale=2.5, skip_layer_guidance_start=0.2,
                   skip_layer_guidance_stop=0.8).images.permute(0, 2, 3, 1)
        plain = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, latents=noise,
                     height=64, width=64, max_sequence_length=77, output_type="pt").images.permute(0, 2, 3, 1)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(ref, plain, atol=1e-3)  # the guidance changed the picture


def test_simple_variant_changes_only_with_a_negative_and_restores_the_blocks(flow_engine, tiny_sd3):
    base = flow_engine.run(sd3_graph("checkpoint")).raise_for_status().value("out")
    prompt = _with_patch("checkpoint", {"class_type": "SkipLayerGuidanceDiTSimple", "double_layers": "0, 1",
                                        "single_layers": "", "start_percent": 0.0, "end_percent": 1.0})
    simple = flow_engine.run(prompt).raise_for_status().value("out")
    assert not torch.allclose(simple, base, atol=1e-3)
    again = flow_engine.run(sd3_graph("checkpoint", shift=3.0)).raise_for_status().value("out")
    assert torch.allclose(again, base, atol=1e-6)  # the wrappers are gone after the run
    net = tiny_sd3.transformer
    assert all("forward" not in block.__dict__ for block in net.transformer_blocks)


def test_flux_single_and_double_blocks(flow_engine, tiny_flux):
    from tests.dit.test_flux_parity import flux_graph

    base = flow_engine.run(flux_graph("files", "custom")).raise_for_status().value("out")
    outs = []
    for double, single in (("0", ""), ("", "1")):
        g = flux_graph("files", "custom")
        prompt = g.to_api()
        guider = next(nid for nid, node in prompt.items() if node["class_type"] == "BasicGuider")
        prompt["slg"] = {"class_type": "SkipLayerGuidanceDiT",
                         "inputs": {"model": prompt[guider]["inputs"]["model"], "double_layers": double,
                                    "single_layers": single, "scale": 3.0, "start_percent": 0.0,
                                    "end_percent": 1.0, "rescaling_scale": 0.5}}
        prompt[guider]["inputs"]["model"] = ["slg", 0]
        outs.append(flow_engine.run(prompt).raise_for_status().value("out"))
    assert not torch.allclose(outs[0], base, atol=1e-3) and not torch.allclose(outs[1], base, atol=1e-3)
    assert not torch.allclose(outs[0], outs[1], atol=1e-3)


def test_unknown_block_is_an_error(flow_engine, tiny_sd3):
    prompt = _with_patch("checkpoint", {"class_type": "SkipLayerGuidanceDiT", "double_layers": "7",
                                        "single_layers": "", "scale": 3.0, "start_percent": 0.01,
                                        "end_percent": 0.15, "rescaling_scale": 0.0})
    result = flow_engine.run(prompt)
    assert result.failure is not None and "names block 7, but the model has 2 double blocks" in str(result.failure)
