"""LoRAs in a user layout change the output as diffusers' own LoRA loading does, for the families
test_lora_vs_diffusers.py does not cover: the same file through ComfyUI's LoraLoaderModelOnly in our engine
and through ``pipe.load_lora_weights`` + ``set_adapters`` (PEFT) in the diffusers pipeline, at the same
strength, seed and starting noise, agree at 1e-4.

* Z-Image: ComfyUI / ai-toolkit names (``diffusion_model.layers.N.attention.to_q.lora_A/B`` + ``.alpha``) and
  kohya / musubi names (``lora_unet_layers_N_attention_to_q.lora_down/up`` + ``.alpha``), both through
  diffusers' Z-Image converter;
* HiDream: ComfyUI names (``diffusion_model.double_stream_blocks.N.block.attn1.to_q.lora_down/up``);
* Chroma: kohya names of Black Forest Labs' Flux blocks (``lora_unet_double_blocks_0_img_attn_qkv``), which
  ChromaPipeline reads with Flux's loader;
* Lumina 2: diffusers / PEFT names (``transformer.layers.N.attn.to_q.lora_A/B``, what diffusers' trainer
  saves), and the ComfyUI-layout file (fused ``attention.qkv``) against its diffusers-named equivalent.

Each diffusers-side limit that makes a test leave something out is written at that test.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.test_lora_vs_diffusers import ALPHA, RANK, STRENGTH, _pair, _with_adapter, _with_model_lora
from tests.dit.tiny_flow import _contig


def _adapted(make_pipeline, net, path):
    """``net`` with the LoRA at ``path`` loaded by the pipeline ``make_pipeline(net)``'s ``load_lora_weights``
    (PEFT layers in ``net`` itself, at STRENGTH): a pipeline built on it later runs with the LoRA."""
    pipe = make_pipeline(net)
    _with_adapter(pipe, path)
    return net


def _save(root, name: str, sd: dict):
    path = root / "models" / "loras" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contig(sd), str(path))
    return path


def _run(engine, graph, lora: str | None):
    """The graph's image without (``lora`` None) or with a LoraLoaderModelOnly of ``lora``."""
    prompt = graph.to_api() if lora is None else _with_model_lora(graph.to_api(), lora)
    return engine.run(prompt).raise_for_status().value("out")


# -- Z-Image ---------------------------------------------------------------------------------------------

Z_LAYERS = ["layers.0.attention.to_q", "layers.1.attention.to_out.0", "noise_refiner.0.feed_forward.w2",
            "context_refiner.0.attention.to_k", "layers.1.adaLN_modulation.0", "layers.0.feed_forward.w3"]


#: ComfyUI's / the original NextDiT names (fused qkv, ``out``) that kohya-style trainers on that module tree
#: save, and the diffusers modules they cover
Z_ORIGINAL = {"layers.0.attention.qkv": [f"layers.0.attention.to_{p}" for p in "qkv"],
              "layers.1.attention.out": ["layers.1.attention.to_out.0"],
              "context_refiner.0.attention.qkv": [f"context_refiner.0.attention.to_{p}" for p in "qkv"],
              "noise_refiner.0.feed_forward.w2": ["noise_refiner.0.feed_forward.w2"],
              "layers.1.adaLN_modulation.0": ["layers.1.adaLN_modulation.0"]}


def _z_lora(net, layout: str) -> dict:
    sd = {}
    layers = Z_ORIGINAL if layout == "kohya_original" else {layer: [layer] for layer in Z_LAYERS}
    for i, (layer, targets) in enumerate(layers.items()):
        weights = [net.get_submodule(n).weight for n in targets]
        up, down = _pair((sum(w.shape[0] for w in weights), weights[0].shape[1]), 70 + i)
        if layout == "comfy":
            base = "diffusion_model." + layer
            sd.update({base + ".lora_B.weight": up, base + ".lora_A.weight": down})
        else:
            base = "lora_unet_" + layer.replace(".", "_")
            sd.update({base + ".lora_up.weight": up, base + ".lora_down.weight": down})
        sd[base + ".alpha"] = torch.tensor(ALPHA)
    return sd


def test_z_image_user_loras_match_diffusers_load_lora_weights(qwen_engine, qwen_root, tiny_z_image):
    """ComfyUI / ai-toolkit names, kohya / musubi names of diffusers' modules and kohya names of the original
    NextDiT tree (``lora_unet_layers_0_attention_qkv``: diffusers' converter splits the fused ``up`` in three),
    each with ``.alpha`` (diffusers folds alpha / rank into the matrices; we scale the delta): each equals the
    pipeline with the file loaded."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    from tests.dit.test_z_image import SHIFT, reference, z_graph

    t = tiny_z_image
    images = {}
    base = _run(qwen_engine, z_graph("files", cfg=3.0), None)
    for layout in ("comfy", "kohya", "kohya_original"):
        path = _save(qwen_root, f"z_image_user_{layout}.safetensors", _z_lora(t.transformer, layout))
        image = _run(qwen_engine, z_graph("files", cfg=3.0), path.name)
        net = _adapted(lambda n: ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=t.vae,
                                                text_encoder=t.text_encoder, tokenizer=t.tokenizer, transformer=n),
                       copy.deepcopy(t.transformer), path)
        ref = reference(dataclasses.replace(t, transformer=net), guidance=2.0)
        assert torch.allclose(image, ref, atol=1e-4), (layout, (image - ref).abs().max())
        assert not torch.allclose(image, base, atol=1e-3)  # the LoRA does change the picture
        images[layout] = image
    assert torch.allclose(images["comfy"], images["kohya"], atol=1e-5)


# -- HiDream ---------------------------------------------------------------------------------------------

HIDREAM_LAYERS = ["double_stream_blocks.0.block.attn1.to_q", "double_stream_blocks.0.block.attn1.to_k_t",
                  "double_stream_blocks.0.block.ff_i.shared_experts.w1", "single_stream_blocks.0.block.attn1.to_out",
                  "double_stream_blocks.0.block.adaLN_modulation.1", "single_stream_blocks.0.block.ff_i.experts.1.w2"]


@pytest.fixture(scope="module")
def hidream(tmp_path_factory):
    from tests.dit.tiny_hidream import build_hidream

    root = tmp_path_factory.mktemp("hidream_lora_models")
    return root, build_hidream(root)


def test_hidream_comfy_lora_matches_diffusers_load_lora_weights(hidream, tmp_path):
    """ComfyUI / ai-toolkit names (``diffusion_model.<the transformer's own module>.lora_A/B``, no alpha): the
    same file on both sides. Diffusers' HiDream converter only renames the prefix, so it takes neither
    ``.alpha`` entries ("Invalid LoRA checkpoint. Make sure all LoRA param names contain 'lora'") nor
    ``lora_down``/``lora_up`` names (no rank found: IndexError in get_peft_kwargs); our engine reads that
    layout with ``.alpha`` too, checked here as the same weights (``up · rank / alpha``) giving the same image."""
    from nodegraph.registry import default_registry

    from tests.dit.test_hidream import hidream_graph, reference
    from tests.dit.tiny_hidream import pipeline
    from tests.helpers.engines import make_engine

    root, t = hidream
    sd, with_alpha = {}, {}
    for i, layer in enumerate(HIDREAM_LAYERS):
        up, down = _pair(t.transformer.get_submodule(layer).weight.shape, 90 + i)
        base = "diffusion_model." + layer
        sd.update({base + ".lora_B.weight": up, base + ".lora_A.weight": down})
        with_alpha.update({base + ".lora_up.weight": up * (RANK / ALPHA), base + ".lora_down.weight": down,
                           base + ".alpha": torch.tensor(ALPHA)})
    path = _save(root, "hidream_user_comfy.safetensors", sd)
    _save(root, "hidream_user_comfy_alpha.safetensors", with_alpha)
    engine = make_engine(root, tmp_path, default_registry(packs=False))
    try:
        base = _run(engine, hidream_graph(), None)
        image = _run(engine, hidream_graph(), path.name)
        image_alpha = _run(engine, hidream_graph(), "hidream_user_comfy_alpha.safetensors")
    finally:
        engine.close()
    net = _adapted(lambda n: pipeline(dataclasses.replace(t, transformer=n)), copy.deepcopy(t.transformer), path)
    ref = reference(dataclasses.replace(t, transformer=net))
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, base, atol=1e-3)
    assert torch.allclose(image_alpha, image, atol=1e-5)


# -- Chroma ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    from tests.dit.tiny_chroma import build_chroma

    root = tmp_path_factory.mktemp("chroma_lora_models")
    return root, build_chroma(root)


def test_chroma_kohya_lora_matches_diffusers_load_lora_weights(chroma, tmp_path):
    """A kohya file in BFL's Flux block names (Chroma's blocks are Flux's), with ``.alpha``: ChromaPipeline
    loads it with Flux's loader (its kohya converter). The layers diffusers takes differently for Flux.1 are
    left out for the same reasons (test_lora_vs_diffusers.FLUX_LAYERS: ``linear1`` split at full-size widths)."""
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    from nodegraph.registry import default_registry

    from tests.dit.test_chroma import chroma_graph, reference
    from tests.dit.test_lora_vs_diffusers import FLUX_LAYERS
    from tests.dit.tiny_chroma import chroma_to_comfy
    from tests.helpers.engines import make_engine

    root, t = chroma
    bfl = chroma_to_comfy(t.transformer)
    sd = {}
    for i, layer in enumerate(FLUX_LAYERS + ["single_blocks.1.linear2", "double_blocks.0.txt_attn.proj"]):
        up, down = _pair(bfl[layer + ".weight"].shape, 110 + i)
        flat = "lora_unet_" + layer.replace(".", "_")
        sd.update({flat + ".lora_up.weight": up, flat + ".lora_down.weight": down,
                   flat + ".alpha": torch.tensor(ALPHA)})
    path = _save(root, "chroma_user_kohya.safetensors", sd)
    engine = make_engine(root, tmp_path, default_registry(packs=False))
    try:
        base = _run(engine, chroma_graph("files"), None)
        image = _run(engine, chroma_graph("files"), path.name)
    finally:
        engine.close()
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(t.diffusers_dir / "scheduler"))
    net = _adapted(lambda n: ChromaPipeline(transformer=n, vae=t.vae, text_encoder=t.text.t5,
                                            tokenizer=t.text.tokenizer_t5, scheduler=scheduler),
                   copy.deepcopy(t.transformer), path)
    ref = reference(dataclasses.replace(t, transformer=net))
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, base, atol=1e-3)


# -- Lumina 2 --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lumina(tmp_path_factory):
    from tests.dit.tiny_lumina2 import build_lumina2

    root = tmp_path_factory.mktemp("lumina2_lora_models")
    return root, build_lumina2(root)


#: ComfyUI / musubi layer → diffusers module (the mapping of diffusers' own Lumina 2 converter)
LUMINA_LAYERS = {"layers.1.attention.out": "layers.1.attn.to_out.0",
                 "noise_refiner.0.feed_forward.w2": "noise_refiner.0.feed_forward.linear_2",
                 "context_refiner.0.feed_forward.w1": "context_refiner.0.feed_forward.linear_1",
                 "layers.1.adaLN_modulation.1": "layers.1.norm1.linear"}


def test_lumina2_user_loras_match_diffusers_load_lora_weights(lumina, tmp_path):
    """A diffusers / PEFT file (``transformer.layers.N.attn.to_q.lora_A/B``, what diffusers' Lumina 2 trainer
    saves) on both sides; and a ComfyUI-layout file (``diffusion_model.layers.N.attention.qkv`` fused,
    ``.alpha``) in our engine against diffusers loading its diffusers-named equivalent (``up`` split by rows
    into q / k / v with the shared ``down``, alpha / rank folded into ``up``). Diffusers' own converter for the
    ComfyUI layout cannot take a tiny model's file: it splits the fused qkv at full-size Lumina 2 widths
    ([2304, 768, 768]), expects every block's qkv / out / w1-3 (KeyError otherwise) and refuses ``.alpha``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    from nodegraph.registry import default_registry

    from tests.dit.test_lumina2 import lumina_graph, reference
    from tests.helpers.engines import make_engine

    root, t = lumina
    net = t.transformer
    q, kv = net.layers[0].attn.to_q.weight.shape[0], net.layers[0].attn.to_k.weight.shape[0]
    peft, comfy, equivalent = {}, {}, {}
    for i, name in enumerate(["layers.0.attn.to_q", "layers.1.attn.to_out.0", "noise_refiner.0.feed_forward.linear_2",
                              "context_refiner.0.attn.to_k", "layers.1.norm1.linear"]):
        up, down = _pair(net.get_submodule(name).weight.shape, 130 + i)
        peft.update({f"transformer.{name}.lora_B.weight": up, f"transformer.{name}.lora_A.weight": down})
    fused = {"layers.0.attention.qkv": ["layers.0.attn.to_q", "layers.0.attn.to_k", "layers.0.attn.to_v"]}
    for i, layer in enumerate([*fused, *LUMINA_LAYERS]):
        targets = fused.get(layer, [LUMINA_LAYERS.get(layer)])
        rows = sum(net.get_submodule(n).weight.shape[0] for n in targets)
        up, down = _pair((rows, net.get_submodule(targets[0]).weight.shape[1]), 150 + i)
        base = "diffusion_model." + layer
        comfy.update({base + ".lora_B.weight": up, base + ".lora_A.weight": down, base + ".alpha": torch.tensor(ALPHA)})
        parts = up.split([q, kv, kv]) if len(targets) == 3 else [up]
        for name, part in zip(targets, parts):
            equivalent.update({f"transformer.{name}.lora_B.weight": part * (ALPHA / RANK),
                               f"transformer.{name}.lora_A.weight": down})
    files = {"peft": _save(root, "lumina2_user_peft.safetensors", peft),
             "comfy": _save(root, "lumina2_user_comfy.safetensors", comfy)}
    diffusers_files = {"peft": files["peft"],
                       "comfy": _save(root, "lumina2_comfy_as_diffusers.safetensors", equivalent)}
    engine = make_engine(root, tmp_path, default_registry(packs=False))
    try:
        base = _run(engine, lumina_graph("files"), None)
        images = {k: _run(engine, lumina_graph("files"), p.name) for k, p in files.items()}
    finally:
        engine.close()

    def make(n):
        return Lumina2Pipeline(transformer=n, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0), vae=t.vae,
                               text_encoder=t.text_encoder, tokenizer=t.tokenizer)

    for layout, image in images.items():
        adapted = _adapted(make, copy.deepcopy(net), diffusers_files[layout])
        ref = reference(dataclasses.replace(t, transformer=adapted))
        assert torch.allclose(image, ref, atol=1e-4), (layout, (image - ref).abs().max())
        assert not torch.allclose(image, base, atol=1e-3)
