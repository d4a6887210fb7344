"""A LoRA's keys that LoraLoader / LoraLoaderModelOnly do not apply are a node warning naming them (ComfyUI
prints ``lora key not loaded`` to its console); a LoRA none of whose keys apply is an error naming the node,
the input and the file (ComfyUI applies nothing, silently). The warning's way to a client: ``node_warning``
for clients that announced ``nodegraph_events`` only."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.events import EventRecorder, NodeFinished, NodeWarning
from nodegraph.queue.messages import ClientFeatures
from nodegraph_nodes.diffusion.lora_report import SHOWN, unmatched_message

from tests.test_run_reporter import reporter

STRAY_UNET = "lora_unet_down_blocks_0_not_a_layer"
STRAY_TE = "lora_te_text_model_encoder_layers_0_not_a_layer"


def _pair(sd: dict, key: str, out_dim: int, in_dim: int, rank: int = 2, up: bool = True) -> None:
    g = torch.Generator().manual_seed(len(key))
    sd[key + ".lora_down.weight"] = torch.randn(rank, in_dim, generator=g) * 0.1
    if up:
        sd[key + ".lora_up.weight"] = torch.randn(out_dim, rank, generator=g) * 0.1


def _valid(tiny_sd) -> tuple[dict, str, str]:
    """One UNet layer and one CLIP layer of the tiny SD 1.5 model, in kohya names."""
    sd: dict = {}
    unet_name = next(n for n, _ in tiny_sd.unet.named_modules() if n.endswith("attn1.to_q"))
    w = tiny_sd.unet.get_submodule(unet_name).weight
    unet_key = "lora_unet_" + unet_name.replace(".", "_")
    _pair(sd, unet_key, w.shape[0], w.shape[1])
    te_name = next(n for n, _ in tiny_sd.text_encoder.named_modules() if n.endswith("self_attn.q_proj"))
    w = tiny_sd.text_encoder.get_submodule(te_name).weight
    te_key = "lora_te_" + te_name.replace(".", "_")
    _pair(sd, te_key, w.shape[0], w.shape[1])
    return sd, unet_key, te_key


def _save(model_root, name: str, sd: dict) -> str:
    folder = model_root / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / name))
    return name


def _graph(lora: str, model_only: bool = False, strength_clip: float = 1.0) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    if model_only:
        node = g.node("LoraLoaderModelOnly", "lora", model=ck.out(0), lora_name=lora, strength_model=1.0)
    else:
        node = g.node("LoraLoader", "lora", model=ck.out(0), clip=ck.out(1), lora_name=lora, strength_model=1.0,
                      strength_clip=strength_clip)
        g.node("PreviewAny", source=node.out(1))
    g.node("PreviewAny", source=node.out(0))
    return g


def _names(message: str) -> list[str]:
    return message.split("does not read): ", 1)[1].split(", ")


def _warnings(engine, graph) -> list[NodeWarning]:
    recorder = EventRecorder()
    engine.run(graph, listeners=[recorder]).raise_for_status()
    return recorder.of(NodeWarning)


def test_stray_keys_are_a_warning_naming_them(sd_engine, tiny_sd, model_root, caplog):
    sd, unet_key, _ = _valid(tiny_sd)
    _pair(sd, STRAY_UNET, 8, 8)
    _pair(sd, STRAY_TE, 8, 8)
    sd[unet_key + ".dora_scale"] = torch.ones(1, 8)  # DoRA: a weight form nodegraph does not read
    name = _save(model_root, "stray_keys.safetensors", sd)
    with caplog.at_level(logging.WARNING, logger="nodegraph.nodes"):
        warnings = _warnings(sd_engine, _graph(name))
    assert len(warnings) == 1 and warnings[0].node_id == "lora" and warnings[0].class_type == "LoraLoader"
    text = warnings[0].message
    assert f"LoRA {name}: 3 keys not loaded" in text
    assert set(_names(text)) == {STRAY_UNET, STRAY_TE, unet_key + ".dora_scale"}  # not the applied ones
    assert any(STRAY_UNET in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # model only, or strength_clip 0: the text encoder's keys are not this node's to apply, so not named
    for graph in (_graph(name, model_only=True), _graph(name, strength_clip=0.0)):
        (warning,) = _warnings(sd_engine, graph)
        assert "2 keys not loaded" in warning.message
        assert set(_names(warning.message)) == {STRAY_UNET, unet_key + ".dora_scale"}


def test_a_layer_without_its_up_matrix_is_named(sd_engine, tiny_sd, model_root):
    sd, _, _ = _valid(tiny_sd)
    layer = next(n for n, _ in tiny_sd.unet.named_modules() if n.endswith("attn2.to_k"))
    half = "lora_unet_" + layer.replace(".", "_")
    weight = tiny_sd.unet.get_submodule(layer).weight
    _pair(sd, half, weight.shape[0], weight.shape[1], up=False)
    name = _save(model_root, "half_layer.safetensors", sd)
    (warning,) = _warnings(sd_engine, _graph(name, model_only=True))
    assert "1 key not loaded" in warning.message and _names(warning.message) == [half]


def test_a_lora_that_matches_is_quiet(sd_engine, tiny_sd, model_root):
    sd, _, _ = _valid(tiny_sd)
    name = _save(model_root, "clean.safetensors", sd)
    assert _warnings(sd_engine, _graph(name)) == []
    assert _warnings(sd_engine, _graph(name, model_only=True)) == []


@pytest.mark.parametrize("model_only", [False, True])
def test_a_lora_with_no_matching_key_is_an_error_naming_node_and_file(sd_engine, model_root, model_only):
    sd: dict = {}
    _pair(sd, STRAY_UNET, 8, 8)
    _pair(sd, "lora_unet_mid_block_nothing_here", 8, 8)
    name = _save(model_root, "other_model.safetensors", sd)
    result = sd_engine.run(_graph(name, model_only=model_only))
    assert result.failure is not None
    node = "LoraLoaderModelOnly" if model_only else "LoraLoader"
    message = str(result.failure)
    assert f"{node}.lora_name: LoRA {name} has no weights matching" in message
    assert STRAY_UNET in message or "lora_unet_mid_block_nothing_here" in message


def test_the_message_lists_the_first_names_and_counts_the_rest():
    keys = [f"k{i}" for i in range(SHOWN + 3)]
    text = unmatched_message("x.safetensors", keys)
    assert text.startswith(f"LoRA x.safetensors: {SHOWN + 3} keys not loaded")
    assert f"k{SHOWN - 1}," in text and f"k{SHOWN}" not in text and "(3 more)" in text


def test_node_warning_goes_to_clients_that_take_nodegraph_events():
    warning = NodeWarning("p", "7", "LoraLoader", "LoRA a.safetensors: 1 key not loaded (…): k")
    report, sink = reporter(ClientFeatures(extra_events=True))
    report(warning)
    (message,) = [json.loads(m) for m in sink.sent if not isinstance(m, bytes) and "node_warning" in m]
    assert message == {"type": "node_warning", "data": {"node": "7", "node_type": "LoraLoader",
                                                       "message": warning.message, "prompt_id": "p"}}
    for features in (ClientFeatures(), None):  # ComfyUI's frontend does not know the message
        report, sink = reporter(features)
        report(warning)
        report(NodeFinished("p", "7", "LoraLoader", "7"))
        assert "node_warning" not in sink.kinds()
