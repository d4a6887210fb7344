"""Safety (SafetyCheck, PromptFilter, require_safety), loops and the design loop, augmentation, dataset
export and text nodes."""

from __future__ import annotations

import json

import pytest
import torch

from nodegraph import Engine, Graph, OutputCache
from nodegraph.errors import ValidationFailed
from nodegraph.events import NodeFinished, NodeStarted

from tests.vision_language.vl_helpers import failure_of, run_ok


def image(g, prompt="x"):
    return g.node("FakeGenerate", prompt=g.node("PrimitiveString", value=prompt).out(0))


# -- safety -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("replacement", ["black", "blur"])
def test_flagged_image_is_withheld_and_the_reason_reported(vl_engine, replacement):
    g = Graph()
    img = image(g)
    chk = g.node("SafetyCheck", safety_model=g.node("SafetyCheckerLoader", model_name="flag-all"), images=img,
                 replacement=replacement)
    g.node("PreviewImage", images=chk.out(0))
    g.node("ShowText", text=chk.out(2))
    events = []
    r = run_ok(vl_engine, g, listeners=[events.append])
    original, shown = r.value(img.id), r.value(chk.id, 0)
    assert r.value(chk.id, 1) is True
    if replacement == "black":
        assert torch.count_nonzero(shown) == 0
    else:
        detail = lambda t: (t[:, 1:] - t[:, :-1]).abs().mean()  # noqa: E731 - neighbour differences
        assert not torch.allclose(shown, original) and detail(shown) < detail(original) / 4
    assert "withheld (nsfw 1.00" in r.value(chk.id, 2)
    ui = next(e.ui for e in events if isinstance(e, NodeFinished) and e.node_id == chk.id)
    assert ui["safety"][0]["flagged"] and ui["safety"][0]["label"] == "nsfw"


def test_safe_image_passes_unchanged(vl_engine):
    g = Graph()
    img = image(g)
    chk = g.node("SafetyCheck", safety_model=g.node("SafetyCheckerLoader", model_name="pass-all"), images=img)
    g.node("PreviewImage", images=chk.out(0))
    r = run_ok(vl_engine, g)
    assert r.value(chk.id, 1) is False and torch.equal(r.value(chk.id, 0), r.value(img.id))


def test_prompt_filter_blocks_listed_terms_before_any_model_runs(vl_engine):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-gpt2")
    flt = g.node("PromptFilter", text="a photo of GORE in the forest", blocked_terms="gore, weapon*")
    pr = g.node("PromptRewrite", llm=llm, instruction=flt.out(0))
    g.node("ShowText", text=pr.out(0))
    events = []
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(g, listeners=[events.append])
    assert "blocked term(s): gore" in str(err.value)
    assert not any(isinstance(e, NodeStarted) for e in events)  # nothing ran, no model loaded
    # a prompt that arrives through a link is checked when it arrives; the LLM node never runs
    g2 = Graph()
    text = g2.node("StringConcat", a="a knight with", b="weapons")
    flt2 = g2.node("PromptFilter", text=text.out(0), blocked_terms="gore, weapon*")
    pr2 = g2.node("PromptRewrite", llm=g2.node("LLMLoader", model_name="tiny-gpt2"), instruction=flt2.out(0))
    g2.node("ShowText", text=pr2.out(0))
    result = vl_engine.run(g2)
    assert result.failure.class_type == "PromptFilter" and "weapon*" in result.failure.exception_message
    assert pr2.id not in result.executed


def test_prompt_filter_with_a_text_classifier(vl_engine):
    g = Graph()
    flt = g.node("PromptFilter", text="a cat", classifier=g.node("TextClassifierLoader", model_name="flag-all-text"))
    g.node("ShowText", text=flt.out(0))
    assert "refused by the text classifier" in failure_of(vl_engine, g).exception_message
    ok = Graph()
    flt = ok.node("PromptFilter", text="a cat")
    ok.node("ShowText", text=flt.out(0))
    assert run_ok(vl_engine, ok).value(flt.id) == "a cat"


def test_require_safety_policy(vl_engine):
    unchecked = Graph()
    unchecked.node("PreviewImage", images=unchecked.node("ImageInvert", image=image(unchecked)))
    run_ok(vl_engine, unchecked)  # allowed without the policy
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(unchecked, extra_data={"require_safety": True})
    e = err.value.errors[0]
    assert e.kind == "safety_check_required" and e.input_name == "images" and "FakeGenerate" in e.message
    checked = Graph()
    chk = checked.node("SafetyCheck", safety_model=checked.node("SafetyCheckerLoader", model_name="pass-all"),
                       images=image(checked))
    checked.node("PreviewImage", images=checked.node("ImageInvert", image=chk.out(0)))
    run_ok(vl_engine, checked, extra_data={"require_safety": True})
    strict = Engine(vl_engine.registry, paths=vl_engine.paths, device="cpu", policies=["require_safety"],
                    services={"models": vl_engine.services["models"]})
    with pytest.raises(ValidationFailed):
        strict.run(unchecked)
    run_ok(strict, checked)
    # loop bodies are checked too
    body = {"1": {"class_type": "LoopInput", "inputs": {"name": "value"}},
            "2": {"class_type": "FakeGenerate", "inputs": {"prompt": ["1", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
            "4": {"class_type": "LoopOutput", "inputs": {"value": ["1", 0]}}}
    loop = Graph()
    rep = loop.node("Repeat", initial=loop.node("PrimitiveString", value="a"), rounds=2, body=json.dumps(body))
    loop.node("ShowText", text=rep.out(0))
    with pytest.raises(ValidationFailed) as err:
        strict.run(loop)
    assert "loop body" in str(err.value)


# -- loops ------------------------------------------------------------------------------------------

TEXT_BODY = {"1": {"class_type": "LoopInput", "inputs": {"name": "value"}},
             "2": {"class_type": "StringConcat", "inputs": {"a": ["1", 0], "b": "x", "separator": "-"}},
             "3": {"class_type": "ShowText", "inputs": {"text": ["2", 0]}},
             "4": {"class_type": "LoopOutput", "inputs": {"value": ["2", 0]}}}


def test_repeat_and_foreach(vl_engine):
    g = Graph()
    rep = g.node("Repeat", initial=g.node("PrimitiveString", value="s"), rounds=3, body=json.dumps(TEXT_BODY))
    fe = g.node("ForEach", items=g.node("TextList", text="a\nb"), body=json.dumps(TEXT_BODY))
    g.node("Collect", value=rep.out(1))
    g.node("Collect", value=fe.out(0))
    g.node("ShowText", text=rep.out(0))
    r = run_ok(vl_engine, g)
    assert r.value(rep.id, 0) == "s-x-x-x"
    assert r.values[rep.id][1] == ["s-x", "s-x-x", "s-x-x-x"]
    assert r.values[fe.id][0] == ["a-x", "b-x"]
    shown = [ui["text"] for nid, ui in r.outputs.items() if nid.startswith(f"{rep.id}.")]
    assert sorted(shown) == [["s-x"], ["s-x-x"], ["s-x-x-x"]]


def test_bad_loop_bodies_fail_validation(vl_engine):
    for body, message in (("{not json", "not valid JSON"),
                          (json.dumps({"1": {"class_type": "ShowText", "inputs": {}}}), "exactly one LoopOutput")):
        g = Graph()
        rep = g.node("Repeat", initial=g.node("PrimitiveString", value="s"), rounds=2, body=body)
        g.node("ShowText", text=rep.out(0))
        with pytest.raises(ValidationFailed) as err:
            vl_engine.run(g)
        assert message in str(err.value)


DESIGN_BODY = {
    "prompt": {"class_type": "LoopInput", "inputs": {"name": "value"}},
    "llm": {"class_type": "LoopInput", "inputs": {"name": "context1"}},
    "captioner": {"class_type": "LoopInput", "inputs": {"name": "context2"}},
    "instruction": {"class_type": "LoopInput", "inputs": {"name": "context3"}},
    "round": {"class_type": "LoopInput", "inputs": {"name": "index"}},
    "generate": {"class_type": "FakeGenerate", "inputs": {"prompt": ["prompt", 0]}},
    "caption": {"class_type": "ImageCaption", "inputs": {"captioner": ["captioner", 0], "image": ["generate", 0],
                                                          "max_tokens": 6}},
    "critique": {"class_type": "PromptCritique", "inputs": {"llm": ["llm", 0], "instruction": ["instruction", 0],
                                                            "prompt": ["prompt", 0], "caption": ["caption", 0],
                                                            "seed": ["round", 0], "max_tokens": 10}},
    "show_prompt": {"class_type": "ShowText", "inputs": {"text": ["prompt", 0]}},
    "show_caption": {"class_type": "ShowText", "inputs": {"text": ["caption", 0]}},
    "show_critique": {"class_type": "ShowText", "inputs": {"text": ["critique", 1]}},
    "preview": {"class_type": "PreviewImage", "inputs": {"images": ["generate", 0]}},
    "next": {"class_type": "LoopOutput", "inputs": {"value": ["critique", 0]}},
}


def design_loop(rounds):
    g = Graph()
    llm = g.node("LLMLoader", model_name="tiny-gpt2")
    instruction = g.node("PrimitiveString", value="a red fox under the moon")
    first = g.node("PromptRewrite", llm=llm, instruction="a red fox under the moon", seed=1, max_tokens=10)
    rep = g.node("Repeat", initial=first, rounds=rounds, body=json.dumps(DESIGN_BODY), context1=llm,
                 context2=g.node("CaptionerLoader", model_name="tiny-blip"), context3=instruction)
    g.node("ShowText", text=rep.out(1))
    return g, rep


def test_design_loop_three_rounds_then_one_more_runs_only_the_new_round(vl_engine):
    g, rep = design_loop(3)
    events = []
    r = run_ok(vl_engine, g, listeners=[events.append])
    prompts = r.values[rep.id][1]
    assert len(prompts) == 3 and all(isinstance(p, str) and p for p in prompts)
    for n in (1, 2, 3):  # every round's prompt, caption, critique and image are shown
        prefix = f"{rep.id}.0.r{n}."
        assert r.outputs[prefix + "show_prompt"]["text"]
        assert r.outputs[prefix + "show_caption"]["text"][0]
        assert r.outputs[prefix + "show_critique"]["text"][0].startswith(("missing", "the caption"))
        assert r.outputs[prefix + "preview"]["images"][0]["filename"].endswith(".png")
        assert any(isinstance(e, NodeFinished) and e.node_id == prefix + "caption" for e in events)
    # each round starts from the previous round's rewritten prompt
    assert r.outputs[f"{rep.id}.0.r2.show_prompt"]["text"] == [prompts[0]]
    assert r.outputs[f"{rep.id}.0.r3.show_prompt"]["text"] == [prompts[1]]

    g4, rep4 = design_loop(4)
    r4 = run_ok(vl_engine, g4)
    assert r4.values[rep4.id][1][:3] == prompts
    ran = [nid for nid in r4.executed if nid.startswith(f"{rep4.id}.")]
    assert not [nid for nid in ran if any(f".r{n}." in nid for n in (1, 2, 3))], ran  # old rounds: cache
    assert all(".r4." in nid or ".collect3" in nid or f"{rep4.id}.0.v" in nid for nid in ran), ran
    assert any(nid.endswith(".r4.caption") for nid in ran)
    assert f"{rep4.id}.0.r1.caption" not in r4.executed


# -- augmentation, dataset, text ----------------------------------------------------------------------

@pytest.mark.parametrize("node,params", [("AugmentCrop", {"min_scale": 0.5}), ("AugmentFlip", {"horizontal": 0.5}),
                                         ("AugmentColorJitter", {"brightness": 0.4}),
                                         ("AugmentRotate", {"max_degrees": 30.0})])
def test_augment_nodes_are_seeded_batches(vl_engine, node, params):
    def run(seed, **extra):
        g = Graph()
        a = g.node(node, image=g.node("ImageBatch", image1=image(g, "a"), image2=image(g, "b")), copies=3, seed=seed,
                   **{**params, **extra})
        g.node("PreviewImage", images=a)
        return run_ok(vl_engine, g).value(a.id)
    first = run(1)
    assert first.shape == (6, 32, 32, 3) and 0 <= float(first.min()) and float(first.max()) <= 1
    Engine.close(vl_engine)
    vl_engine.cache = OutputCache()
    assert torch.equal(run(1), first)
    assert not torch.equal(run(2), first)


def test_dataset_export_writes_jsonl_inside_the_output_folder(vl_engine):
    g = Graph()
    imgs = g.node("ImageBatch", image1=image(g, "a"), image2=image(g, "b"))
    g.node("DatasetExport", images=imgs, captions=g.node("TextList", text="a fox\na cat").out(0), folder="set/one")
    r = run_ok(vl_engine, g)
    folder = vl_engine.paths.output_dir / "set" / "one"
    lines = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == ["a fox", "a cat"]
    assert all((folder / x["file_name"]).is_file() for x in lines)
    bad = Graph()
    bad.node("DatasetExport", images=image(bad), captions=bad.node("PrimitiveString", value="c").out(0),
             folder="../escape")
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(bad)
    assert "inside the output folder" in str(err.value)


def test_text_nodes(vl_engine):
    g = Graph()
    cat = g.node("StringConcat", a="a fox", b="at night", separator=", ")
    rep = g.node("RegexReplace", string=cat.out(0), regex_pattern=r"f(o)x", replace=r"b\1x")
    lst = g.node("TextList", text="one\n\n two \nthree")
    show = g.node("ShowText", text=lst.out(0))
    g.node("ShowText", text=rep.out(0))
    r = run_ok(vl_engine, g)
    assert r.value(cat.id) == "a fox, at night" and r.value(rep.id) == "a box, at night"
    assert r.outputs[show.id] == {"text": ["one", "two", "three"]}
    bad = Graph()
    bad.node("ShowText", text=bad.node("RegexReplace", string="x", regex_pattern="(", replace="").out(0))
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(bad)
    assert "not a valid regular expression" in str(err.value)
