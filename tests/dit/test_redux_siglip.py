"""SigLIP vision single files in CLIPVisionLoader (Flux Redux's ``sigclip_vision_patch14_384.safetensors`` layout:
transformers' ``SiglipVisionModel`` names) and ComfyUI's Flux Redux template on tiny files.

CLIPVisionEncode's output equals transformers' ``SiglipVisionModel`` on the same weights and pixels (mean/std 0.5)
to 1e-4: ``last_hidden_state`` (= ``image_embeds``, as ComfyUI), the second-to-last layer's output and every
layer's output. ``flux_redux_model_example`` (two reference images through SigLIP → Redux → StyleModelApply, Flux
dev through SamplerCustomAdvanced) runs end to end with the tiny Flux, SigLIP and Redux files under its names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.dit.template_runs import last_saved_image, template_api
from tests.dit.tiny_flow import T5_DIM
from tests.dit.tiny_qwen import copy_as

WIDTH = 64


@pytest.fixture(scope="module")
def siglip_file(flow_root):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(11)
    model = SiglipVisionModel(SiglipVisionConfig(hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=3,
                                                 num_attention_heads=1, image_size=32, patch_size=8,
                                                 hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    folder = flow_root / "models" / "clip_vision"
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v.contiguous()  # the files' names
          for k, v in model.state_dict().items() if "position_ids" not in k}
    save_file(sd, str(folder / "tiny_siglip.safetensors"))
    return model


def encode_graph(crop: str = "none") -> Graph:
    g = Graph()
    image = g.node("LoadImage", image="siglip_in.png").out(0)
    cv = g.node("CLIPVisionLoader", clip_name="tiny_siglip.safetensors")
    enc = g.node("CLIPVisionEncode", "cv", clip_vision=cv, image=image, crop=crop)
    g.node("PreviewAny", source=enc)
    return g


def test_siglip_encode_matches_transformers(flow_engine, siglip_file):
    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(flow_engine.paths.input_dir / "siglip_in.png")
    out = flow_engine.run(encode_graph()).raise_for_status().value("cv")
    x = torch.from_numpy(pixels).float().div(255).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        ref = siglip_file(pixel_values=(x - 0.5) / 0.5, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 16, WIDTH)
    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=1e-4)
    assert torch.equal(out.image_embeds, out.last_hidden_state)
    assert torch.allclose(out.penultimate_hidden_states, ref.hidden_states[-2], atol=1e-4)
    assert out.all_hidden_states.shape == (1, 3, 16, WIDTH)
    assert torch.allclose(out.all_hidden_states, torch.stack(ref.hidden_states[1:], dim=1), atol=1e-4)


def test_flux_redux_template_runs(flow_engine, flow_root, tiny_flux, siglip_file, flow_registry):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    models = flow_root / "models"
    names = {"diffusion_models/tiny_flux_dev.safetensors": "diffusion_models/flux1-dev.safetensors",
             "text_encoders/tiny_t5xxl.safetensors": "text_encoders/t5xxl_fp16.safetensors",
             "text_encoders/tiny_clip_l.safetensors": "text_encoders/clip_l.safetensors",
             "vae/tiny_flux_ae.safetensors": "vae/ae.safetensors",
             "clip_vision/tiny_siglip.safetensors": "clip_vision/sigclip_vision_patch14_384.safetensors"}
    copy_as(flow_root, names)
    torch.manual_seed(6)
    redux = ReduxImageEncoder(redux_dim=WIDTH, txt_in_features=T5_DIM).eval()
    (models / "style_models").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in redux.state_dict().items()},
              str(models / "style_models" / "flux1-redux-dev.safetensors"))
    flow_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    for i, seed in ((1, 3), (2, 4)):
        pixels = np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(flow_engine.paths.input_dir / f"flux_redux_model_example_reference_image_{i}.png")
    api = template_api("flux_redux_model_example", flow_registry)
    for n in api.values():
        if n["class_type"] in ("EmptySD3LatentImage", "ModelSamplingFlux"):
            n["inputs"].update(width=64, height=64)
        if n["class_type"] == "BasicScheduler":
            n["inputs"]["steps"] = 2
    result = flow_engine.run(api).raise_for_status()
    kinds = [api[n]["class_type"] for n in result.executed]
    assert kinds.count("CLIPVisionEncode") == 2 and kinds.count("StyleModelApply") == 2
    assert {"CLIPVisionLoader", "StyleModelLoader", "SamplerCustomAdvanced", "SaveImage"} <= set(kinds)
    image = last_saved_image(flow_engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01
