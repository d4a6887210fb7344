"""LoRAs on Qwen-Image 2.1 through LoraLoaderModelOnly change the image as diffusers' own LoRA loading does
(``QwenImage21Pipeline.load_lora_weights`` — its QwenImageLoraLoaderMixin — + ``set_adapters`` at the same
strength), at 1e-4, on the tiny files of test_qwen_image21.py (transformer in ComfyUI's fused layout):

* ComfyUI / ai-toolkit names (``diffusion_model.transformer_blocks.N.attn.to_q.lora_A/B`` + ``.alpha``);
* diffusers / PEFT names (``transformer.…lora_A/B``, no alpha, what diffusers' trainers save);
* kohya / musubi names (``lora_unet_transformer_blocks_N_attn_to_q.lora_down/up`` + ``.alpha``) on the layers
  diffusers' Qwen-Image converter unflattens; the layers it cannot (``img_mlp_gate_layer`` becomes
  ``img_mlp.gate.layer``, ``modulation_1`` is put under ``transformer_blocks``) are checked as the same numbers in
  ComfyUI names giving the same image;
* ComfyUI's fused ``img_mlp.gate_up`` (the layout of its 2.1 files) against diffusers loading the equivalent
  split file (``up`` rows: gate first, then ``proj``; ``down`` shared).

Keys that match no layer are a node warning naming them."""

from __future__ import annotations

import copy
import dataclasses

import torch
from safetensors.torch import save_file

from nodegraph.events import EventRecorder, NodeWarning

from tests.dit.test_lora_vs_diffusers import ALPHA, RANK, STRENGTH, _pair, _with_adapter, _with_model_lora
from tests.dit.test_qwen_image21 import TextProcessor, engine21, graph, q21_root, reference, tiny21  # noqa: F401
from tests.dit.tiny_flow import _contig

#: layers diffusers' converter reads in every layout (its kohya unflattening included)
COMMON = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_out.0", "transformer_blocks.0.img_mlp.out",
          "transformer_blocks.1.img_mlp.proj", "transformer_blocks.1.attn.to_v"]
#: layers whose kohya names diffusers cannot unflatten (our engine reads them)
KOHYA_ONLY = ["transformer_blocks.0.img_mlp.gate_layer", "modulation.1", "txt_in.in_layer"]
STRAY = "diffusion_model.transformer_blocks.0.attn.not_a_layer"


def _save(root, name: str, sd: dict) -> str:
    folder = root / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_contig(sd), str(folder / name))
    return name


def _with_lora(g, lora: str | None):
    """The API prompt of graph ``g`` with a LoraLoaderModelOnly after its UNETLoader."""
    return g.to_api() if lora is None else _with_model_lora(g.to_api(), lora)


def _image(engine, lora: str | None, listeners=()):
    return engine.run(_with_lora(graph(), lora), listeners=list(listeners)).raise_for_status().value("out")


def _diffusers_image(tiny, root, name: str):
    """QwenImage21Pipeline's image with the LoRA file ``name`` loaded by its ``load_lora_weights``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline

    net = copy.deepcopy(tiny.transformer)
    pipe = QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny.vae,
                               text_encoder=tiny.text_encoder, processor=TextProcessor(tiny.tokenizer), transformer=net)
    _with_adapter(pipe, root / "models" / "loras" / name)
    return reference(dataclasses.replace(tiny, transformer=net))


def _layers(net, names: list[str], layout: str, seed: int) -> dict:
    sd = {}
    for i, layer in enumerate(names):
        up, down = _pair(net.get_submodule(layer).weight.shape, seed + i)
        if layout == "comfy":
            base = "diffusion_model." + layer
            sd.update({base + ".lora_B.weight": up, base + ".lora_A.weight": down,
                       base + ".alpha": torch.tensor(ALPHA)})
        elif layout == "peft":
            sd.update({f"transformer.{layer}.lora_B.weight": up, f"transformer.{layer}.lora_A.weight": down})
        else:
            base = "lora_unet_" + layer.replace(".", "_")
            sd.update({base + ".lora_up.weight": up, base + ".lora_down.weight": down,
                       base + ".alpha": torch.tensor(ALPHA)})
    return sd


def test_user_loras_match_diffusers_load_lora_weights(engine21, tiny21, q21_root):
    net = tiny21.transformer
    base = _image(engine21, None)
    for layout in ("comfy", "peft", "kohya"):
        name = _save(q21_root, f"q21_{layout}.safetensors", _layers(net, COMMON, layout, 200))
        image = _image(engine21, name)
        ref = _diffusers_image(tiny21, q21_root, name)
        assert torch.allclose(image, ref, atol=1e-4), (layout, (image - ref).abs().max())
        assert not torch.allclose(image, base, atol=1e-3)  # the LoRA does change the picture


def test_kohya_names_diffusers_cannot_unflatten_equal_comfy_names(engine21, tiny21, q21_root):
    net = tiny21.transformer
    kohya = _save(q21_root, "q21_kohya_all.safetensors", _layers(net, COMMON + KOHYA_ONLY, "kohya", 300))
    comfy = _save(q21_root, "q21_comfy_all.safetensors", _layers(net, COMMON + KOHYA_ONLY, "comfy", 300))
    image, same = _image(engine21, kohya), _image(engine21, comfy)
    assert torch.allclose(image, same, atol=1e-5), (image - same).abs().max()
    ref = _diffusers_image(tiny21, q21_root, comfy)  # diffusers reads these layers in ComfyUI's names
    assert torch.allclose(same, ref, atol=1e-4), (same - ref).abs().max()
    common = _image(engine21, _save(q21_root, "q21_kohya_common.safetensors", _layers(net, COMMON, "kohya", 300)))
    assert not torch.allclose(image, common, atol=1e-3)  # the layers only we unflatten do take part


def test_fused_gate_up_matches_diffusers_on_the_split_file(engine21, tiny21, q21_root):
    net = tiny21.transformer
    fused = _layers(net, ["transformer_blocks.0.attn.to_k"], "comfy", 400)
    up_k, down_k = _pair(net.get_submodule("transformer_blocks.0.attn.to_k").weight.shape, 400)
    split = {"transformer.transformer_blocks.0.attn.to_k.lora_B.weight": up_k * (ALPHA / RANK),
             "transformer.transformer_blocks.0.attn.to_k.lora_A.weight": down_k}
    for i in range(2):
        block = f"transformer_blocks.{i}.img_mlp"
        rows = net.get_submodule(block + ".gate_layer").weight.shape[0]
        up, down = _pair((2 * rows, net.get_submodule(block + ".gate_layer").weight.shape[1]), 410 + i)
        base = f"diffusion_model.{block}.gate_up"
        fused.update({base + ".lora_B.weight": up, base + ".lora_A.weight": down, base + ".alpha": torch.tensor(ALPHA)})
        for part, rows_up in zip(("gate_layer", "proj"), up.chunk(2)):
            split.update({f"transformer.{block}.{part}.lora_B.weight": rows_up * (ALPHA / RANK),
                          f"transformer.{block}.{part}.lora_A.weight": down})
    image = _image(engine21, _save(q21_root, "q21_fused.safetensors", fused))
    ref = _diffusers_image(tiny21, q21_root, _save(q21_root, "q21_fused_as_split.safetensors", split))
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()


def test_unmatched_keys_are_a_warning(engine21, tiny21, q21_root):
    sd = _layers(tiny21.transformer, COMMON[:1], "comfy", 500)
    sd.update({STRAY + ".lora_A.weight": torch.randn(RANK, 8), STRAY + ".lora_B.weight": torch.randn(8, RANK)})
    recorder = EventRecorder()
    _image(engine21, _save(q21_root, "q21_stray.safetensors", sd), listeners=[recorder])
    (warning,) = recorder.of(NodeWarning)
    assert "LoRA q21_stray.safetensors: 1 key not loaded" in warning.message and STRAY in warning.message


def with_lora_loader(prompt: dict, lora: str, strength: float) -> dict:
    """The API prompt with a LoraLoader (model and CLIP) after its CheckpointLoaderSimple."""
    prompt = copy.deepcopy(prompt)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple")
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value in ([loader, 0], [loader, 1]):
                node["inputs"][name] = ["lora", value[1]]
    prompt["lora"] = {"class_type": "LoraLoader", "inputs": {"model": [loader, 0], "clip": [loader, 1],
                                                             "lora_name": lora, "strength_model": strength,
                                                             "strength_clip": 1.0}}
    return prompt


def test_lora_loader_on_the_diffusers_folder_equals_the_single_files(engine21, tiny21, q21_root):
    name = _save(q21_root, "q21_folder_comfy.safetensors", _layers(tiny21.transformer, COMMON, "comfy", 600))
    folder = engine21.run(with_lora_loader(graph(folder=True).to_api(), name, STRENGTH)).raise_for_status()
    image = folder.value("out")
    files = _image(engine21, name)
    assert torch.allclose(image, files, atol=1e-5), (image - files).abs().max()
    assert not torch.allclose(image, _image(engine21, None), atol=1e-3)
