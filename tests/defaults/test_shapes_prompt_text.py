"""Shapes-world text (parse, complete, score, emphasis) and the clean-up of LLM answers to one prompt line."""

from __future__ import annotations

import random

import pytest

from nodegraph_nodes.shapes.captions import canonical_caption, paraphrase
from nodegraph_nodes.shapes.world import scene_for_seed
from nodegraph_nodes.langvision.prompt_templates import single_prompt_line
from nodegraph_nodes.shapes.text import (complete_scene, emphasized_caption, parse_spec, scene_caption, scene_match,
                                          wrong_attributes)


def test_free_wording_is_read_into_the_grammar():
    spec = parse_spec("a big red ball above a small blue box on white")
    assert [(o.shape, o.color, o.size) for o in spec.objects] == [("circle", "red", "large"), ("square", "blue", "small")]
    assert (spec.relation, spec.background) == ("above", "white")
    assert scene_caption(complete_scene(spec)) == "a large red circle above a small blue square on a white background"
    one = parse_spec("Violet star in the middle, black bg")
    assert scene_caption(complete_scene(one)) == "a large purple star in the center on a black background"


def test_every_canonical_caption_and_paraphrase_reads_back_as_its_scene():
    rng = random.Random(7)
    for seed in range(300):
        scene = scene_for_seed(seed)
        assert scene_match(parse_spec(canonical_caption(scene)), parse_spec(canonical_caption(scene))).score == 1.0
        text = paraphrase(scene, rng)
        spec = parse_spec(text)
        # a paraphrase may leave out size and background: what it says must agree with the scene
        full = parse_spec(canonical_caption(scene))
        assert scene_match(spec, full).score == 1.0, (text, spec)


def test_completion_keeps_the_request_and_takes_the_rest_from_an_agreeing_suggestion():
    request = parse_spec("a star on the left")
    agreeing = parse_spec("a small orange star on the left on a black background")
    assert scene_caption(complete_scene(request, agreeing)) == "a small orange star on the left on a black background"
    conflicting = parse_spec("a small orange circle on the right")  # wrong shape: ignored as a whole
    scene = complete_scene(request, conflicting, seed=3)
    assert scene.objects[0].shape == "star" and scene.position == "left"
    assert complete_scene(request, None, seed=5) == complete_scene(request, None, seed=5)  # seeded


def test_below_and_right_of_are_the_same_picture_as_above_and_left_of():
    a = parse_spec("a green square below a red circle on white")
    b = parse_spec("a red circle above a green square on a white background")
    assert scene_match(a, b).score == 1.0
    assert scene_match(parse_spec("a red star right of a blue box"), parse_spec("a blue square left of a red star")).score == 1.0


def test_score_counts_the_asked_attributes_and_names_the_wrong_ones():
    request = parse_spec("a big red ball above a small blue box on white")
    result = scene_match(request, parse_spec("a large red square on a purple background"))
    assert (result.matched, result.asked) == (2, 8) and result.score == pytest.approx(0.25)
    assert "background purple (asked white)" in result.differences
    assert "shape 1 square (asked circle)" in result.differences


def test_emphasis_lands_on_the_wrong_words_and_grows_each_round():
    scene = complete_scene(parse_spec("a big red ball above a small blue box on white"))
    wrong = wrong_attributes(scene, parse_spec("a large green circle above a small blue square on a black background"))
    assert wrong == {(0, "color"), (-1, "background")}
    first = emphasized_caption(scene, wrong)
    assert first == "a large (red:1.2) circle above a small blue square on a (white:1.2) background"
    assert emphasized_caption(scene, wrong, first).count(":1.3)") == 2
    assert emphasized_caption(scene, set()) == scene_caption(scene)
    assert parse_spec(first) == parse_spec(scene_caption(scene))  # emphasis does not change the scene


@pytest.mark.parametrize("answer, expected", [
    ("Sure! Here's a detailed prompt for you:\n\n\"a fox in the snow, soft light\"\n\nThis prompt captures the mood.",
     "a fox in the snow, soft light"),
    ("Prompt: a red fox, snow. This prompt is vivid.", "a red fox, snow"),
    ("Certainly, here is the caption: a large red circle at the top on a white background.",
     "a large red circle at the top on a white background"),
    ("Here are some ideas:\n- a fox in the snow, dawn\n- a fox at night", "a fox in the snow, dawn"),
    ("1. a cat on a roof, sunset\n2. a dog", "a cat on a roof, sunset"),
    ("```\na lighthouse, storm\n```", "a lighthouse, storm"),
    ("a large red circle above a small blue square on a white background",
     "a large red circle above a small blue square on a white background"),
    ("Sure!", ""),
])
def test_single_prompt_line_strips_preambles_labels_quotes_and_extra_lines(answer, expected):
    assert single_prompt_line(answer) == expected
