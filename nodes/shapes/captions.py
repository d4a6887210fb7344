"""The caption grammar: one canonical caption per scene, and many seeded paraphrases for training.

Canonical: "a large red circle at the top on a white background",
"a small blue square to the left of a yellow triangle on a black background".
Paraphrases vary word order, synonyms (ball/box/over/beneath...), and leave out size or background.
"""

from __future__ import annotations

import random

from nodegraph_nodes.shapes.world import Scene, ShapeObject

POSITION_PHRASES = {"center": "in the center", "left": "on the left", "right": "on the right",
                    "top": "at the top", "bottom": "at the bottom"}
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above",
                    "below": "below"}

SHAPE_SYNONYMS = {"circle": ["circle", "ball", "disc", "round dot", "circle shape"],
                  "square": ["square", "box", "block", "square shape"],
                  "triangle": ["triangle", "triangle shape", "upward triangle"],
                  "star": ["star", "five-pointed star", "star shape"]}
SIZE_SYNONYMS = {"small": ["small", "little", "tiny", "small"], "large": ["large", "big", "huge", "large"]}
COLOR_SYNONYMS = {"purple": ["purple", "violet"]}
POSITION_SYNONYMS = {"center": ["in the center", "in the middle", "in the centre", "centered"],
                     "left": ["on the left", "at the left", "on the left side"],
                     "right": ["on the right", "at the right", "on the right side"],
                     "top": ["at the top", "near the top", "at the top of the image"],
                     "bottom": ["at the bottom", "near the bottom", "at the bottom of the image"]}
RELATION_SYNONYMS = {"left of": ["to the left of", "left of", "on the left of"],
                     "right of": ["to the right of", "right of", "on the right of"],
                     "above": ["above", "over", "on top of"],
                     "below": ["below", "beneath", "under", "underneath"]}
BACKGROUND_FORMS = ["on a {c} background", "with a {c} background", "against a {c} background",
                    "on {c}", "{c} background"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe_object(obj: ShapeObject, rng: random.Random | None = None, with_size: bool = True) -> str:
    if rng is None:
        return f"a {obj.size} {obj.color} {obj.shape}"
    words = []
    if with_size:
        words.append(rng.choice(SIZE_SYNONYMS[obj.size]))
    words.append(rng.choice(COLOR_SYNONYMS.get(obj.color, [obj.color])))
    words.append(rng.choice(SHAPE_SYNONYMS[obj.shape]))
    return f"{_article(words[0])} {' '.join(words)}"


def canonical_caption(scene: Scene) -> str:
    background = f"on a {scene.background} background"
    if scene.position is not None:
        return f"{describe_object(scene.objects[0])} {POSITION_PHRASES[scene.position]} {background}"
    a, b = scene.objects
    return f"{describe_object(a)} {RELATION_PHRASES[scene.relation]} {describe_object(b)} {background}"


def paraphrase(scene: Scene, rng: random.Random, canonical_share: float = 0.125) -> str:
    """A random way of saying the scene; ``canonical_share`` of them are the canonical caption."""
    if rng.random() < canonical_share:
        return canonical_caption(scene)
    with_size = rng.random() < 0.85
    with_background = rng.random() < 0.85
    background = rng.choice(BACKGROUND_FORMS).format(c=scene.background)
    if scene.position is not None:
        thing = describe_object(scene.objects[0], rng, with_size)
        where = rng.choice(POSITION_SYNONYMS[scene.position])
        forms = [f"{thing} {where}", f"{where}, {thing}", f"{where} {thing}"]
    else:
        a = describe_object(scene.objects[0], rng, with_size)
        b = describe_object(scene.objects[1], rng, with_size)
        relation = rng.choice(RELATION_SYNONYMS[scene.relation])
        forms = [f"{a} {relation} {b}", f"{a} {relation} {b}"]
    text = rng.choice(forms)
    if with_background:
        text = f"{text} {background}" if rng.random() < 0.7 else f"{background}, {text}"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    return text
