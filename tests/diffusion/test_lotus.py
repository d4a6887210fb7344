"""Lotus (nodes/diffusion/lotus.py, sd2_empty_prompt.py): LotusConditioning computes SD2's empty-prompt
encoding from the SD2 text encoder the user has — equal to CLIPTextEncode("") on a tiny SD 2.x checkpoint —
caches it by content and names the folders it searched when there is none; a tiny Lotus-D UNet loads
through UNETLoader and ComfyUI's Lotus depth template runs, its output equal to the UNet's prediction at
t = 999 written out with the diffusers modules."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from nodegraph import Engine, OutputCache
from nodegraph.builder import Graph
from nodegraph.context import Paths
from nodegraph.models import ModelManager
from nodegraph.registry import default_registry

from tests.helpers.block_images import blocks
from tests.helpers.ldm_export import unet_to_ldm, vae_to_ldm
from tests.helpers.tiny_sd import build_sd2, lotus_unet

LOTUS_FILE = "lotus-depth-d-v1-1.safetensors"
VAE_FILE = "vae-ft-mse-840000-ema-pruned.safetensors"
LOTUS_DIFFUSERS_FILE = "lotus_depth_diffusers_names.safetensors"  # the diffusers release's unet/ weights


@pytest.fixture(scope="module")
def sd2_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lotus")
    tiny = build_sd2(root)
    unet = lotus_unet()
    models = root / "models"
    (models / "diffusion_models").mkdir(parents=True)
    ldm = {k[len("model.diffusion_model."):]: v.contiguous() for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()}
    save_file(ldm, str(models / "diffusion_models" / LOTUS_FILE))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              str(models / "diffusion_models" / LOTUS_DIFFUSERS_FILE))
    (models / "vae").mkdir()
    save_file({k[len("first_stage_model."):]: v.contiguous() for k, v in vae_to_ldm(tiny.vae.state_dict(), tiny.vae.config).items()},
              str(models / "vae" / VAE_FILE))
    return root, tiny, unet


def _engine(models_dir, tmp_path) -> Engine:
    paths = Paths(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                  models_dir=models_dir, cache_dir=tmp_path / "cache")
    return Engine(default_registry(packs=False), paths=paths, device="cpu", threads=1,
                  cache=OutputCache(ram_budget=256 << 20), services={"models": ModelManager("cpu")})


@pytest.fixture
def engine(sd2_root, tmp_path):
    eng = _engine(sd2_root[0] / "models", tmp_path)
    yield eng
    eng.close()


def test_lotus_conditioning_equals_clip_text_encode_of_the_empty_prompt(engine, sd2_root, tmp_path):
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd21.safetensors")
    text = g.node("CLIPTextEncode", text="", clip=ckpt.out(1))
    lotus = g.node("LotusConditioning")
    g.node("PreviewAny", source=text.out(0))
    g.node("PreviewAny", source=lotus.out(0))
    result = engine.run(g)
    assert result.ok, result.failure
    (expected,), (ours,) = result.values[text.id][0], result.values[lotus.id][0]
    assert len(ours) == 1 and ours[0][1] == {}
    assert ours[0][0].shape == (1, 77, 32)
    torch.testing.assert_close(ours[0][0], expected[0][0], atol=1e-6, rtol=0)
    # remembered in the cache dir by content: a second, fresh engine reads it back without encoding
    cached = sorted((tmp_path / "cache" / "lotus").glob("sd2_empty_prompt-*.safetensors"))
    assert len(cached) == 1
    marked = {"prompt_embeds": torch.full_like(ours[0][0], 7.0)}
    save_file(marked, str(cached[0]))
    fresh = _engine(sd2_root[0] / "models", tmp_path / "again")
    try:
        fresh_paths = fresh.paths
        from nodegraph_nodes.diffusion import sd2_empty_prompt as empty

        source = empty.find_sd2_text_encoder(fresh_paths)
        assert source.kind == "checkpoint" and source.path.name == "tiny_sd21.safetensors"
        again = empty.empty_prompt_embedding(source, engine.paths, "cpu")
        assert torch.equal(again, marked["prompt_embeds"])
    finally:
        fresh.close()


def test_the_same_weights_in_another_file_share_the_cache_entry(sd2_root, tmp_path):
    from nodegraph_nodes.diffusion import sd2_empty_prompt as empty

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    shutil.copytree(sd2_root[0] / "models" / "text_encoders", models / "text_encoders")
    sd = load_file(str(sd2_root[1].checkpoint))
    sd["model.diffusion_model.out.2.bias"] = sd["model.diffusion_model.out.2.bias"] + 1  # another UNet
    save_file(sd, str(models / "checkpoints" / "renamed_sd2.safetensors"))
    paths = Paths(models_dir=models, cache_dir=tmp_path / "cache")
    a = empty.empty_prompt_embedding(empty.find_sd2_text_encoder(paths), paths, "cpu")
    original = Paths(models_dir=sd2_root[0] / "models", cache_dir=tmp_path / "cache")
    b = empty.empty_prompt_embedding(empty.find_sd2_text_encoder(original), original, "cpu")
    assert torch.equal(a, b)
    assert len(list((tmp_path / "cache" / "lotus").glob("sd2_empty_prompt-*.safetensors"))) == 1


def test_no_sd2_text_encoder_is_an_error_naming_the_node_and_folders(tmp_path):
    eng = _engine(tmp_path / "models", tmp_path)
    try:
        g = Graph()
        lotus = g.node("LotusConditioning")
        g.node("PreviewAny", source=lotus.out(0))
        result = eng.run(g)
        assert not result.ok
        message = str(result.failure)
        assert "LotusConditioning" in message and "no SD 2.x text encoder" in message
        for folder in ("text_encoders", "clip", "checkpoints", "diffusers"):
            assert str(tmp_path / "models" / folder) in message
    finally:
        eng.close()


def _lotus_template_api(registry) -> dict:
    from tests.dit.template_runs import package_template_api

    return package_template_api("image_lotus_depth_v1_1", registry)


def test_lotus_depth_template_runs_and_is_the_unets_prediction(engine, sd2_root, tmp_path):
    _, tiny, unet = sd2_root
    api = _lotus_template_api(engine.registry)
    engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = blocks(3, 3)
    load = next(n for n in api.values() if n["class_type"] == "LoadImage")
    Image.fromarray(pixels).save(engine.paths.input_dir / load["inputs"]["image"])
    result = engine.run(api).raise_for_status()
    assert all(n in result.executed for n in api)
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"LotusConditioning", "UNETLoader", "SetFirstSigma", "DisableNoise", "ImageInvert"} <= kinds
    invert = next(n for n, v in api.items() if v["class_type"] == "ImageInvert")
    (ours,) = result.values[invert][0]

    # the same by hand: VAE-encode, the UNet at t = 999 with the task embedding on the empty-prompt
    # encoding, its output taken as the latent, VAE-decode, invert
    from tests.helpers.tiny_sd import load_tokenizer

    image = torch.from_numpy(pixels).float().div(255).permute(2, 0, 1)[None]
    with torch.no_grad():
        latent = tiny.vae.encode(image * 2 - 1).latent_dist.mean
        tok = load_tokenizer(sd2_root[0] / "models" / "text_encoders" / "tokenizer")
        ids = torch.tensor([[tok.bos_token_id, tok.eos_token_id] + [0] * 75])
        hidden = tiny.text_encoder.text_model(ids, output_hidden_states=True).hidden_states[-2]
        embeds = tiny.text_encoder.text_model.final_layer_norm(hidden)
        task = torch.tensor([[np.sin(1.0), 0.0, np.cos(1.0), 1.0]], dtype=torch.float32)
        scale = tiny.vae.config.scaling_factor
        pred = unet(latent * scale, torch.tensor([999]), encoder_hidden_states=embeds, class_labels=task).sample
        decoded = tiny.vae.decode(pred / scale).sample
    expected = 1.0 - ((decoded + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    # flux_depth_lora_example's first sigma 10000 is timestep 999 as well
    for n in api.values():
        if n["class_type"] == "SetFirstSigma":
            n["inputs"]["sigma"] = 10000.0
    again = engine.run(api).raise_for_status()
    torch.testing.assert_close(again.values[invert][0][0], ours, atol=1e-5, rtol=0)
    # the same UNet saved in diffusers' names loads through UNETLoader too
    for n in api.values():
        if n["class_type"] == "UNETLoader":
            n["inputs"]["unet_name"] = LOTUS_DIFFUSERS_FILE
    named = engine.run(api).raise_for_status()
    torch.testing.assert_close(named.values[invert][0][0], ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["open_clip", "transformers"])
def test_text_encoder_files_are_sources(sd2_root, tmp_path, layout):
    """A 1024-wide (ViT-H) text encoder in text_encoders/: OpenCLIP names are the full tower (SD2 leaves its
    last layer out), transformers names of another depth than 24 are diffusers' text_encoder (taken whole);
    CLIPLoader type sd2 + CLIPTextEncode("") on the file takes the same layer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodegraph_nodes.diffusion import sd2_empty_prompt as empty
    from tests.helpers.ldm_export import clip_to_open_clip
    from tests.helpers.tiny_sd import load_tokenizer

    models = tmp_path / "models"
    shutil.copytree(sd2_root[0] / "models" / "text_encoders", models / "text_encoders")
    tok = load_tokenizer(models / "text_encoders" / "tokenizer")
    torch.manual_seed(2)
    cfg = CLIPTextConfig(hidden_size=1024, intermediate_size=64, num_hidden_layers=2, num_attention_heads=16,
                         vocab_size=len(tok), max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0)
    model = CLIPTextModel(cfg).eval()
    sd = model.state_dict()
    if layout == "open_clip":
        sd = clip_to_open_clip(sd, "")
    save_file({k: v.contiguous() for k, v in sd.items() if not k.endswith("position_ids")},
              str(models / "text_encoders" / "sd2_text.safetensors"))
    paths = Paths(models_dir=models, cache_dir=tmp_path / "cache")
    source = empty.find_sd2_text_encoder(paths)
    assert source is not None and source.path.name == "sd2_text.safetensors"
    ours = empty.empty_prompt_embedding(source, paths, "cpu")
    ids = torch.tensor([[tok.bos_token_id, tok.eos_token_id] + [0] * 75])
    text_model = getattr(model, "text_model", model)  # transformers 4 / 5
    with torch.no_grad():
        out = text_model(ids, output_hidden_states=True)
        layer = out.hidden_states[-2] if layout == "open_clip" else out.hidden_states[-1]
        expected = text_model.final_layer_norm(layer)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    # CLIPLoader type sd2 + CLIPTextEncode("") on the same file: the same layer
    eng = _engine(models, tmp_path / "run")
    try:
        g = Graph()
        clip = g.node("CLIPLoader", clip_name="sd2_text.safetensors", type="sd2")
        text = g.node("CLIPTextEncode", text="", clip=clip.out(0))
        g.node("PreviewAny", source=text.out(0))
        result = eng.run(g)
        assert result.ok, result.failure
        torch.testing.assert_close(result.values[text.id][0][0][0][0], expected, atol=1e-5, rtol=0)
    finally:
        eng.close()


def test_a_diffusers_folder_is_a_source(engine, sd2_root, tmp_path):
    """Lotus's diffusers release layout (unet/ with a 4-wide class embedding, text_encoder/ = SD2's encoder
    without its last layer, tokenizer/) in diffusers/: the same embedding as CLIPTextEncode("") on the SD 2.x
    checkpoint holding the same text tower."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodegraph_nodes.diffusion import sd2_empty_prompt as empty

    root, tiny, unet = sd2_root
    folder = tmp_path / "models" / "diffusers" / "lotus-depth-d-v1-1"
    unet.save_pretrained(str(folder / "unet"))
    full = tiny.text_encoder.config
    cfg = CLIPTextConfig(**{k: getattr(full, k) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                           "vocab_size", "max_position_embeddings", "hidden_act",
                                                           "bos_token_id", "eos_token_id", "pad_token_id")},
                         num_hidden_layers=full.num_hidden_layers - 1)
    text = CLIPTextModel(cfg).eval()
    own = text.state_dict()
    source_sd = {k.removeprefix("text_model."): v for k, v in tiny.text_encoder.state_dict().items()}
    text.load_state_dict({k: source_sd[k.removeprefix("text_model.")] for k in own}, strict=True)
    text.save_pretrained(str(folder / "text_encoder"))
    shutil.copytree(root / "models" / "text_encoders" / "tokenizer", folder / "tokenizer")  # vocab.json + merges.txt
    (folder / "model_index.json").write_text('{"_class_name": "LotusDPipeline"}')
    paths = Paths(models_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    source = empty.find_sd2_text_encoder(paths)
    assert source is not None and source.kind == "diffusers" and source.path == folder
    ours = empty.empty_prompt_embedding(source, paths, "cpu")
    g = Graph()
    ckpt = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd21.safetensors")
    text_node = g.node("CLIPTextEncode", text="", clip=ckpt.out(1))
    g.node("PreviewAny", source=text_node.out(0))
    result = engine.run(g)
    assert result.ok, result.failure
    expected = result.values[text_node.id][0][0][0][0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
