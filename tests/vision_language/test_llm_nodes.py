"""LLM nodes with tiny GPT-2 and Llama-shaped models loaded through LLMLoader."""

from __future__ import annotations

import pytest

from nodegraph import Graph
from nodegraph.errors import ValidationFailed

from tests.vision_language.vl_helpers import failure_of, fresh_engine, run_ok


def rewrite_graph(model="tiny-gpt2", **params):
    g = Graph()
    llm = g.node("LLMLoader", model_name=model)
    pr = g.node("PromptRewrite", llm=llm, **{"instruction": "a fox in a snowy forest", "seed": 1, "max_tokens": 12, **params})
    g.node("ShowText", text=pr.out(0))
    return g, pr


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_prompt_rewrite_is_seeded_and_parameters_matter(vl_engine, model):
    g, pr = rewrite_graph(model, seed=5)
    first = run_ok(vl_engine, g).value(pr.id)
    again = run_ok(fresh_engine(vl_engine), g).value(pr.id)  # no cache: generated again
    assert isinstance(first, str) and first
    assert first == again
    other_seed = run_ok(vl_engine, rewrite_graph(model, seed=6)[0]).value(pr.id)
    assert other_seed != first
    cinematic = run_ok(vl_engine, rewrite_graph(model, seed=5, style="cinematic")[0]).value(pr.id)
    assert "film grain" in cinematic and "film grain" not in first
    assert "masterpiece" in first
    no_tags = run_ok(vl_engine, rewrite_graph(model, seed=5, quality_tags=False)[0]).value(pr.id)
    assert "masterpiece, best quality" not in no_tags


def test_rewrite_system_prompt_and_examples_change_the_result(vl_engine):
    base = run_ok(vl_engine, rewrite_graph(seed=3)[0])
    g, pr = rewrite_graph(seed=3, system_prompt="Describe only colours.", examples="")
    changed = run_ok(vl_engine, g)
    assert changed.value(pr.id) != base.value(pr.id)


def test_greedy_and_max_tokens(vl_engine):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-gpt2")
    short = g.node("LLMChat", llm=llm, message="hello there", temperature=0.0, max_tokens=3, seed=1)
    long = g.node("LLMChat", llm=llm, message="hello there", temperature=0.0, max_tokens=12, seed=2)
    g.node("ShowText", text=short.out(0))
    g.node("ShowText", text=long.out(0))
    r = run_ok(vl_engine, g)
    s, l = r.value(short.id), r.value(long.id)
    assert 1 <= len(s.split()) <= 3 < len(l.split()) <= 12
    assert l.startswith(s)  # greedy: the seed does not matter, the longer text continues the shorter


def test_prompt_variations_is_a_list_of_distinct_prompts(vl_engine):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-llama")
    var = g.node("PromptVariations", llm=llm, prompt="a red fox", count=4, seed=9, max_tokens=10)
    show = g.node("ShowText", text=var.out(0))
    upper = g.node("StringReplace", string=var.out(0), find="fox", replace="FOX")  # runs once per item
    g.node("ShowText", text=upper.out(0))
    r = run_ok(vl_engine, g)
    prompts = r.values[var.id][0]
    assert len(prompts) == 4 and len(set(prompts)) == 4
    assert all("red fox" in p for p in prompts)
    assert r.outputs[show.id]["text"] == prompts
    assert len(r.values[upper.id][0]) == 4 and all("FOX" in p for p in r.values[upper.id][0])


def test_negative_prompt_keeps_the_base_list(vl_engine):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-gpt2")
    neg = g.node("NegativePrompt", llm=llm, prompt=g.node("PrimitiveString", value="a fox").out(0),
                 base="blurry, watermark", seed=4, max_tokens=8)
    g.node("ShowText", text=neg.out(0))
    text = run_ok(vl_engine, g).value(neg.id)
    assert text.startswith("blurry, watermark")


def test_prompt_critique_names_what_the_caption_misses(vl_engine):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-gpt2")
    s = lambda v: g.node("PrimitiveString", value=v).out(0)  # noqa: E731
    crit = g.node("PromptCritique", llm=llm, instruction=s("a red fox under the moon"), prompt=s("a fox"),
                  caption=s("a fox in a field"), seed=2)
    g.node("ShowText", text=crit.out(0))
    g.node("ShowText", text=crit.out(1))
    r = run_ok(vl_engine, g)
    assert "(red:1.2)" in r.value(crit.id, 0) and "(moon:1.2)" in r.value(crit.id, 0)
    assert r.value(crit.id, 1) == "missing from the image: red, moon"


def test_prompt_template_fills_placeholders_and_rejects_unknown_ones(vl_engine):
    g = Graph()
    t = g.node("PromptTemplate", template="a {style} photo of {subject}, {mood}", subject="a fox",
               style="moody", values="mood = at dusk")
    g.node("ShowText", text=t.out(0))
    assert run_ok(vl_engine, g).value(t.id) == "a moody photo of a fox, at dusk"
    bad = Graph()
    t = bad.node("PromptTemplate", template="a {colour} fox")
    bad.node("ShowText", text=t.out(0))
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(bad)
    assert "{colour}" in str(err.value)


# -- bad input ------------------------------------------------------------------------------------

def test_folder_that_is_not_a_causal_lm_fails_validation(vl_engine):
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(rewrite_graph("not-an-llm")[0])
    e = err.value.errors[0]
    assert e.kind == "custom_validation_failed" and e.class_type == "LLMLoader"
    assert "model_name" in e.message and "not a causal language model" in e.message


def test_missing_llm_folder_fails_validation(vl_engine):
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(rewrite_graph("no-such-model")[0])
    assert "no model 'no-such-model'" in str(err.value)


def test_empty_and_huge_prompts_are_refused_at_validation(vl_engine):
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(rewrite_graph(instruction="   ")[0])
    assert "input 'instruction' is empty" in str(err.value)
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(rewrite_graph(instruction="fox " * 25_000)[0])
    assert "input 'instruction' has 100,000 characters" in str(err.value)


def test_linked_empty_prompt_fails_at_run_time_naming_the_input(vl_engine):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-gpt2")
    neg = g.node("NegativePrompt", llm=llm, prompt=g.node("PrimitiveString", value="").out(0))
    g.node("ShowText", text=neg.out(0))
    failure = failure_of(vl_engine, g)
    assert failure.class_type == "NegativePrompt"
    assert "input 'prompt' is empty" in failure.exception_message
