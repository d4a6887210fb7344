"""Captioning, VQA, CLIP vision, CLIP scoring/ranking and fusion with tiny BLIP / ViT-GPT2 / CLIP models."""

from __future__ import annotations

import pytest
import torch

from nodegraph import Graph
from nodegraph.errors import ValidationFailed

from tests.vision_language.vl_helpers import failure_of, fresh_engine, run_ok


def images(g, *prompts):
    return [g.node("FakeGenerate", prompt=g.node("PrimitiveString", value=p).out(0)) for p in prompts]


def batch(g, *prompts):
    refs = images(g, *prompts)
    out = refs[0]
    for r in refs[1:]:
        out = g.node("ImageBatch", image1=out, image2=r)
    return out


@pytest.mark.parametrize("captioner", ["tiny-blip", "tiny-vit-gpt2"])
def test_image_caption_one_caption_per_image_deterministic(vl_engine, captioner):
    g = Graph()
    cap = g.node("ImageCaption", captioner=g.node("CaptionerLoader", model_name=captioner),
                 image=batch(g, "a fox", "a cat"), max_tokens=8)
    g.node("ShowText", text=cap.out(0))
    r = run_ok(vl_engine, g)
    captions = r.values[cap.id][0]
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)
    assert run_ok(fresh_engine(vl_engine), g).values[cap.id][0] == captions
    g2 = Graph()
    cap2 = g2.node("ImageCaption", captioner=g2.node("CaptionerLoader", model_name=captioner),
                   image=batch(g2, "a fox", "a cat"), max_tokens=3)
    g2.node("ShowText", text=cap2.out(0))
    short = run_ok(vl_engine, g2).values[cap2.id][0]
    assert short != captions and all(len(s.split()) <= 3 for s in short)


def test_vqa_answers_depend_on_the_question(vl_engine):
    answers = []
    for q in ("what color is the fox?", "how many dogs are there?"):
        g = Graph()
        v = g.node("VQA", captioner=g.node("CaptionerLoader", model_name="tiny-blip-vqa"), image=images(g, "x")[0],
                   question=q, max_tokens=6)
        g.node("ShowText", text=v.out(0))
        answers.append(run_ok(vl_engine, g).value(v.id))
    assert all(isinstance(a, str) and a for a in answers) and answers[0] != answers[1]


def test_vqa_with_a_captioning_model_is_a_clear_error(vl_engine):
    g = Graph()
    v = g.node("VQA", captioner=g.node("CaptionerLoader", model_name="tiny-blip"), image=images(g, "x")[0])
    g.node("ShowText", text=v.out(0))
    assert "VQA needs a BlipForQuestionAnswering" in failure_of(vl_engine, g).exception_message


def test_captioner_loader_refuses_other_models(vl_engine):
    # an LLM folder placed under captioners is reported at validation
    import shutil
    src = vl_engine.paths.models_dir / "llm" / "tiny-gpt2"
    dst = vl_engine.paths.models_dir / "captioners" / "copied-gpt2"
    if not dst.exists():
        shutil.copytree(src, dst)
    g = Graph()
    cap = g.node("ImageCaption", captioner=g.node("CaptionerLoader", model_name="copied-gpt2"), image=images(g, "x")[0])
    g.node("ShowText", text=cap.out(0))
    with pytest.raises(ValidationFailed) as err:
        vl_engine.run(g)
    assert "a captioner must be BlipForConditionalGeneration" in str(err.value)


@pytest.mark.parametrize("name", ["tiny-clip", "tiny_clip_vision.safetensors"])
def test_clip_vision_encode_shapes(vl_engine, name):
    g = Graph()
    enc = g.node("CLIPVisionEncode", clip_vision=g.node("CLIPVisionLoader", clip_name=name),
                 image=batch(g, "a", "b", "c"))
    g.node("Collect", value=enc.out(0))
    out = run_ok(vl_engine, g).value(enc.id)
    assert out.image_embeds.shape == (3, 32)
    assert out["last_hidden_state"].shape == (3, 17, 64)  # 16 patches + class token
    assert out.penultimate_hidden_states.shape == (3, 17, 64)
    assert not torch.allclose(out.image_embeds[0], out.image_embeds[1])


def test_wrong_image_shape_is_a_clear_error(vl_engine):
    g = Graph()
    enc = g.node("CLIPVisionEncode", clip_vision=g.node("CLIPVisionLoader", clip_name="tiny-clip"),
                 image=g.node("BadImage"))
    g.node("Collect", value=enc.out(0))
    failure = failure_of(vl_engine, g)
    assert "input 'image' must be an IMAGE of shape [batch, height, width, channels]" in failure.exception_message
    assert "[1, 3, 32, 32]" in failure.exception_message


def test_image_text_score_and_ranking_agree(vl_engine):
    g = Graph()
    clip = g.node("CLIPModelLoader", model_name="tiny-clip")
    imgs = images(g, "one", "two", "three")
    scores = [g.node("ImageTextScore", clip_model=clip, image=i, text="a red fox") for i in imgs]
    other = g.node("ImageTextScore", clip_model=clip, image=imgs[0], text="a blue house")
    labels = g.node("TextList", text="one\ntwo\nthree")
    # a list of three single-image batches (one per prompt), as PromptVariations → generate would give
    gen = g.node("FakeGenerate", prompt=labels.out(0))
    rank = g.node("RankImages", clip_model=clip, images=gen, text="a red fox", keep=2, labels=labels.out(0))
    for n in scores + [other, rank]:
        g.node("Collect", value=n.out(0))
    g.node("ShowText", text=rank.out(3))
    r = run_ok(vl_engine, g)
    values = [r.value(s.id) for s in scores]
    assert r.value(other.id) != values[0]
    best = sorted(range(3), key=lambda i: -values[i])[:2]
    assert r.values[rank.id][2] == best
    assert r.values[rank.id][3] == [["one", "two", "three"][i] for i in best]
    assert r.values[rank.id][1] == pytest.approx([values[i] for i in best], abs=1e-4)
    assert r.value(rank.id, 0).shape == (2, 32, 32, 3)


def test_image_conditioning_fuse(vl_engine):
    g = Graph()
    cond = g.node("FakeConditioning", width=48)
    enc = g.node("CLIPVisionEncode", clip_vision=g.node("CLIPVisionLoader", clip_name="tiny-clip"),
                 image=images(g, "x")[0])
    avg = g.node("ImageConditioningFuse", conditioning=cond, clip_vision_output=enc, weight=0.5, mode="average")
    zero = g.node("ImageConditioningFuse", conditioning=cond, clip_vision_output=enc, weight=0.0)
    cat = g.node("ImageConditioningFuse", conditioning=cond, clip_vision_output=enc, weight=0.5, mode="concat",
                 tokens=2)
    for n in (cond, avg, zero, cat):
        g.node("Collect", value=n.out(0))
    r = run_ok(vl_engine, g)
    base = r.value(cond.id)[0]
    a, z, c = r.value(avg.id)[0], r.value(zero.id)[0], r.value(cat.id)[0]
    assert a[0].shape == base[0].shape and not torch.allclose(a[0], base[0])
    assert torch.allclose(z[0], base[0]) and torch.allclose(z[1]["pooled_output"], base[1]["pooled_output"])
    assert c[0].shape == (1, 79, 48) and torch.allclose(c[0][:, :77], base[0])
    assert not torch.allclose(a[1]["pooled_output"], base[1]["pooled_output"])  # same width as image_embeds
