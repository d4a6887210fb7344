"""The design loop's prompt rewrite for the shapes world: say the scene again, another way, stressing what was wrong.

:func:`revise_caption` writes the requested scene (every attribute named, in the generator's own
words: no synonyms, nothing left open) in a sentence built around what the last picture got wrong:

- the sentence is turned round from the way the last prompt said it whenever an object, the
  position or the relation was wrong: two objects — "a small red circle to the left of a large blue
  square …" becomes "a large blue square to the right of a small red circle …" (the same scene, the
  relation turned with it; the first time an object other than the first is wrong, this names it
  first); one object — the place and the object swap ("a large red circle at the top …" ↔ "at the
  top, a large red circle …");
- a wrong background is said first ("on a (white:1.2) background, a small red circle …");
- the words the picture got wrong carry ``(word:w)`` emphasis: 1.3 the first time, 0.2 more each
  round the same word is still wrong (at most 1.7).

:func:`wrong_readings` gives the shape the picture showed instead (``star`` where a circle was asked),
for the next round's negative prompt — unless the requested scene itself uses that word. Shapes only:
on the shipped generator a colour as negative overshoots to the neighbouring colour (``red`` for an
asked orange gave yellow), while ``star`` against a lumpy circle gave a clean one.

So each round after a wrong picture draws from a new wording (new text-encoder states) as well as its
own noise. In the shapes world a caption fixes the picture, so the shipped generator learned an almost
deterministic mapping: another noise seed alone changes a picture very little, and the emphasis is what
moves the generator most. Every form is one the generator was trained on (``nodes/shapes/captions.py`` paraphrases:
both orders of a relation, the place first or last, the background first or last), and the rewrite
reads back (:func:`~nodegraph_nodes.shapes.text.parse_spec`) as the same scene.
"""

from __future__ import annotations

import re

from nodegraph_nodes.shapes.captions import POSITION_PHRASES, RELATION_PHRASES
from nodegraph_nodes.shapes.captions import canonical_caption
from nodegraph_nodes.shapes.text import SceneSpec, parse_spec, previous_weight
from nodegraph_nodes.shapes.world import Scene, ShapeObject

#: Emphasis of a wrong word: the first time, the step each round it stays wrong, the cap. Measured on the
#: shipped generator (default instruction, a large black star): 1.2 changes almost nothing, 1.5 fixes
#: the lumpy circle the captioner reads as a star, 1.8 leaks the stressed shape into the other object.
WEIGHT_START, WEIGHT_STEP, WEIGHT_MAX = 1.3, 0.2, 1.7
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_KEYWORD = {"left of": "left", "right of": "right", "above": "above", "below": "below"}


def _first_object_of(prompt: str, scene: Scene) -> int | None:
    """Which of the scene's objects the prompt names first (by shape and colour), if it says."""
    spec = parse_spec(prompt or "")
    if not spec.objects:
        return None
    first = spec.objects[0]
    for i, o in enumerate(scene.objects):
        if (first.shape, first.color) == (o.shape, o.color):
            return i
    return None


def revise_caption(scene: Scene, wrong: set[tuple[int, str]], previous_prompt: str = "") -> str:
    """The scene in words, ordered and emphasised by ``wrong`` ((object index or -1, attribute) pairs)."""

    def word(text: str, key: tuple[int, str]) -> str:
        if key not in wrong:
            return text
        weight = min(WEIGHT_MAX, max(WEIGHT_START, previous_weight(previous_prompt, text) + WEIGHT_STEP))
        return f"({text}:{weight:.1f})"

    def obj(i: int, o: ShapeObject) -> str:
        return f"a {word(o.size, (i, 'size'))} {word(o.color, (i, 'color'))} {word(o.shape, (i, 'shape'))}"

    background = f"on a {word(scene.background, (-1, 'background'))} background"
    background_first = (-1, "background") in wrong

    def sentence(text: str) -> str:
        return f"{background}, {text}" if background_first else f"{text} {background}"

    if scene.position is not None:
        where = POSITION_PHRASES[scene.position]
        if (0, "position") in wrong:
            last = where.split()[-1]
            where = where[: -len(last)] + word(last, (0, "position"))
        place_first = _place_first(previous_prompt) != any(i == 0 for i, _ in wrong)  # turned round
        return sentence(f"{where}, {obj(0, scene.objects[0])}" if place_first
                        else f"{obj(0, scene.objects[0])} {where}")

    said_first = _first_object_of(previous_prompt, scene) or 0
    turn = (-1, "relation") in wrong or any(i >= 0 for i, _ in wrong)
    first = 1 - said_first if turn else said_first  # the last sentence turned round
    relation = scene.relation if first == 0 else MIRROR[scene.relation]
    phrase = RELATION_PHRASES[relation]
    if (-1, "relation") in wrong:
        key = RELATION_KEYWORD[relation]
        phrase = phrase.replace(key, word(key, (-1, "relation")))
    second = 1 - first
    return sentence(f"{obj(first, scene.objects[first])} {phrase} {obj(second, scene.objects[second])}")


def _place_first(prompt: str) -> bool:
    """Whether a one-object prompt says its place before the object ("at the top, a red circle …")."""
    text = re.sub(r"\(([^():]+):[0-9.]+\)", r"\1", (prompt or "").lower())
    text = re.sub(r"^on an? \w+ background,\s*", "", text.strip())
    return any(text.startswith(phrase) for phrase in POSITION_PHRASES.values())


def issue_attributes(scene: Scene, issues: str) -> set[tuple[int, str]]:
    """DesignScore's issue keys (``shape:blue, background, relation`` …) as (object index or -1, attribute).

    Objects are named by colour (a scene's colours differ); keys naming no object of ``scene`` and
    keys for nothing the sentence says (``count``, ``stray``) are left out.
    """
    wrong: set[tuple[int, str]] = set()
    for key in (k.strip() for k in (issues or "").split(",")):
        attr, _, colour = key.partition(":")
        if attr in ("background", "relation") and not colour:
            if attr == "background" or scene.relation is not None:
                wrong.add((-1, attr))
        elif attr in ("shape", "color", "size", "position") and colour:
            index = next((i for i, o in enumerate(scene.objects) if o.color == colour), None)
            if index is not None and (attr != "position" or scene.position is not None):
                wrong.add((index, attr))
    return wrong


def wrong_readings(scene: Scene, shown: SceneSpec, wrong: set[tuple[int, str]]) -> str:
    """The shown values of the wrong shapes (``"star"``), for a negative prompt.

    Words the requested scene uses anywhere (a colour of the other object, the background …) are left
    out, so the negative prompt never pushes away from what is asked.
    """
    want = scene.normalized()
    seen = shown.normalized()
    if len(seen.objects) != len(want.objects):
        return ""
    flipped = want.objects != scene.objects
    used = set(canonical_caption(scene).split())
    words: list[str] = []
    for j, got in enumerate(seen.objects):
        index = (len(want.objects) - 1 - j) if flipped else j
        for attr in ("shape",):
            value = getattr(got, attr)
            if (index, attr) in wrong and value and value != getattr(want.objects[j], attr) and value not in used:
                words.append(value)
    return ", ".join(dict.fromkeys(words))
