"""Qwen-Image / Z-Image file handling: layouts detected from the keys, conversions back to diffusers'
names equal the originals, configs from shapes, and clear errors for a wrong CLIPLoader type or a
missing tokenizer."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from nodegraph.builder import Graph

from nodegraph_nodes.dit import llm_loading, qwen_image, z_image
from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.helpers.engines import make_engine


def test_layouts_are_detected(qwen_root, tiny_qwen_image, tiny_z_image):
    models = qwen_root / "models"
    qwen = load_file(str(models / "diffusion_models" / "tiny_qwen_image.safetensors"))
    z = load_file(str(models / "diffusion_models" / "tiny_z_image.safetensors"))
    assert llm_loading.detect_transformer(qwen) == ("qwen_image", "")
    assert llm_loading.detect_transformer({"model.diffusion_model." + k: v for k, v in qwen.items()}) == \
        ("qwen_image", "model.diffusion_model.")
    assert llm_loading.detect_transformer(z) == ("z_image", "model.diffusion_model.")
    assert llm_loading.detect_transformer(tiny_z_image.transformer.state_dict()) == ("z_image", "")
    assert llm_loading.detect_transformer({k: v for k, v in z.items() if "pad_token" not in k}) is None  # Lumina 2
    te25 = load_file(str(models / "text_encoders" / "tiny_qwen_2.5_vl.safetensors"))
    te3 = load_file(str(models / "text_encoders" / "tiny_qwen_3.safetensors"))
    assert llm_loading.encoder_kind(te25) == "qwen25vl" and llm_loading.encoder_kind(te3) == "qwen3"
    assert llm_loading.encoder_kind(tiny_qwen_image.text_encoder.state_dict()) == "qwen25vl"
    vae = load_file(str(models / "vae" / "tiny_qwen_image_vae.safetensors"))
    assert qwen_image.is_qwen_vae(vae) and qwen_image.is_qwen_vae(tiny_qwen_image.vae.state_dict())
    assert not qwen_image.is_qwen_vae(load_file(str(models / "vae" / "tiny_z_image_ae.safetensors")))


def test_conversions_give_back_the_diffusers_weights(qwen_root, tiny_qwen_image, tiny_z_image):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    models = qwen_root / "models"
    want = tiny_qwen_image.vae.state_dict()
    got = convert_wan_vae_to_diffusers(load_file(str(models / "vae" / "tiny_qwen_image_vae.safetensors")))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert qwen_image.vae_config(got)["dim_mult"] == list(tiny_qwen_image.vae.config.dim_mult)
    want = tiny_z_image.transformer.state_dict()
    file = load_file(str(models / "diffusion_models" / "tiny_z_image.safetensors"))
    got = z_image.to_diffusers({k[len("model.diffusion_model."):]: v for k, v in file.items()})
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    cfg = z_image.transformer_config(got)
    assert (cfg["dim"], cfg["n_layers"], cfg["n_refiner_layers"], cfg["n_heads"]) == (64, 2, 1, 2)
    qcfg = qwen_image.transformer_config(tiny_qwen_image.transformer.state_dict())
    assert tuple(qcfg["axes_dims_rope"]) == tuple(tiny_qwen_image.transformer.config.axes_dims_rope)
    assert qwen_image.rope_axes(128) == (16, 56, 56) and z_image.rope_axes(128) == [32, 48, 48]


def _clip_error(engine, name: str, type_: str) -> str:
    g = Graph()
    clip = g.node("CLIPLoader", clip_name=name, type=type_)
    g.node("PreviewAny", source=g.node("CLIPTextEncode", text="a cat", clip=clip))
    result = engine.run(g)
    assert result.failure is not None
    return str(result.failure)


def test_cliploader_type_must_fit_the_file(qwen_engine):
    assert "type lumina2" in _clip_error(qwen_engine, "tiny_qwen_3.safetensors", "qwen_image")
    assert "type qwen_image" in _clip_error(qwen_engine, "tiny_qwen_2.5_vl.safetensors", "lumina2")


def test_missing_tokenizer_names_the_folder(qwen_root, tiny_z_image, tmp_path, qwen_registry):
    root = tmp_path / "bare"
    (root / "models" / "text_encoders").mkdir(parents=True)
    shutil.copyfile(qwen_root / "models" / "text_encoders" / "tiny_qwen_3.safetensors",
                    root / "models" / "text_encoders" / "qwen_3_4b.safetensors")
    engine = make_engine(root, tmp_path, qwen_registry)
    try:
        message = _clip_error(engine, "qwen_3_4b.safetensors", "lumina2")
    finally:
        engine.close()
    assert "qwen3_tokenizer" in message and "never downloads" in message


def test_integer_quantized_transformer_is_refused(tiny_z_image):
    sd = {k: v for k, v in tiny_z_image.transformer.state_dict().items()}
    sd["layers.0.attention.to_q.weight"] = sd["layers.0.attention.to_q.weight"].to(torch.int8)
    with pytest.raises(Exception, match="int8"):
        z_image.build_transformer(sd, torch.float32)
    with pytest.raises(Exception, match="int8"):
        qwen_image.refuse_integer_weights({"w": torch.zeros(2, 2, dtype=torch.int8)}, "Qwen-Image transformer")
