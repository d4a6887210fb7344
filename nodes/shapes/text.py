"""Shapes-world text: read a request or caption into a (partial) scene, and write it in the caption grammar.

The shapes-world generator knows only its caption grammar (``nodes/shapes/captions.py``: "a large
red circle at the top on a white background", "a small blue square to the left of a yellow triangle
on a black background"). :func:`parse_spec` reads free wording — synonyms (ball, box, big, violet,
over, beneath …), any order of size and colour, "on white" for the background — into a
:class:`SceneSpec` whose fields are ``None`` where the text says nothing. :func:`complete_scene` fills
those (from a second text such as an LLM's answer where it agrees, else seeded choices) into a full
:class:`~nodegraph_nodes.shapes.world.Scene`, and :func:`scene_match` scores a caption against a request.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from nodegraph_nodes.shapes.captions import canonical_caption
from nodegraph_nodes.shapes.world import COLORS, POSITIONS, Scene, ShapeObject

SHAPE_WORDS = {"five-pointed star": "star", "five pointed star": "star", "round dot": "circle",
               "circle": "circle", "circles": "circle", "ball": "circle", "balls": "circle", "disc": "circle",
               "disk": "circle", "dot": "circle", "round": "circle", "sphere": "circle", "ring": "circle",
               "square": "square", "squares": "square", "box": "square", "boxes": "square", "block": "square",
               "cube": "square", "rectangle": "square", "tile": "square",
               "triangle": "triangle", "triangles": "triangle", "upward triangle": "triangle", "pyramid": "triangle",
               "star": "star", "stars": "star"}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "smaller": "small", "mini": "small",
              "large": "large", "big": "large", "huge": "large", "bigger": "large", "larger": "large",
              "giant": "large"}
COLOR_WORDS = {**{c: c for c in COLORS}, "violet": "purple", "gold": "yellow", "golden": "yellow"}
RELATION_WORDS = {"to the left of": "left of", "on the left of": "left of", "left of": "left of",
                  "to the right of": "right of", "on the right of": "right of", "right of": "right of",
                  "on top of": "above", "above": "above", "over": "above", "atop": "above",
                  "underneath": "below", "beneath": "below", "below": "below", "under": "below",
                  "next to": "left of", "beside": "left of"}
POSITION_WORDS = {"in the center": "center", "in the centre": "center", "in the middle": "center",
                  "centered": "center", "centred": "center", "center": "center", "centre": "center",
                  "middle": "center", "on the left": "left", "at the left": "left", "left side": "left",
                  "left": "left", "on the right": "right", "at the right": "right", "right side": "right",
                  "right": "right", "at the top": "top", "near the top": "top", "top": "top", "upper": "top",
                  "at the bottom": "bottom", "near the bottom": "bottom", "bottom": "bottom", "lower": "bottom"}
BACKGROUND_NOUNS = ("background", "backdrop", "bg")


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOR = _alternation(COLOR_WORDS)
_SIZE = _alternation(SIZE_WORDS)
_SHAPE = _alternation(SHAPE_WORDS)
_OBJECT_RE = re.compile(rf"\b(?:({_SIZE})\s+)?(?:({_COLOR})\s+)?(?:({_SIZE})\s+)?(?:colou?red\s+)?({_SHAPE})\b")
_BACKGROUND_RES = (
    re.compile(rf"\b(?:on|against|with|over)\s+(?:an?\s+|the\s+)?(?:plain\s+|solid\s+)?({_COLOR})"
               rf"(?:\s+(?:{'|'.join(BACKGROUND_NOUNS)}))?\s*(?=$|[,.;]|\s+(?:and|with)\b)"),
    re.compile(rf"\b(?:an?\s+|the\s+)?({_COLOR})\s+(?:{'|'.join(BACKGROUND_NOUNS)})\b"),
    re.compile(rf"\b(?:{'|'.join(BACKGROUND_NOUNS)})\s*(?:is\s+|:\s*)?({_COLOR})\b"),
)
_RELATION_RE = re.compile(rf"\b({_alternation(RELATION_WORDS)})\b")
_POSITION_RE = re.compile(rf"\b({_alternation(POSITION_WORDS)})\b")


@dataclass(frozen=True)
class ObjectSpec:
    shape: str | None = None
    color: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a text says about a scene; ``None`` where it says nothing."""

    objects: tuple[ObjectSpec, ...] = ()
    background: str | None = None
    position: str | None = None
    relation: str | None = None
    unknown: tuple[str, ...] = field(default=())  # words that are not shapes-world vocabulary

    @property
    def empty(self) -> bool:
        return not self.objects and self.background is None

    def normalized(self) -> "SceneSpec":
        """'right of' → 'left of' and 'below' → 'above' with the objects swapped (one way to say it)."""
        if len(self.objects) == 2 and self.relation in ("right of", "below"):
            flipped = {"right of": "left of", "below": "above"}[self.relation]
            return replace(self, objects=(self.objects[1], self.objects[0]), relation=flipped)
        return self


def _clean(text: str) -> str:
    text = re.sub(r"\(([^():]+):[0-9.]+\)", r"\1", text.lower())  # (red:1.3) emphasis → red
    return " ".join(re.sub(r"[^a-z0-9,.;:\- ]+", " ", text).split())


STOP = frozenset("a an the of in on at with and or to is are its it this that picture image photo scene "
                 "showing shows drawing draw make render one two some plain solid simple flat shape shapes "
                 "colored coloured side near".split())


def parse_spec(text: str) -> SceneSpec:
    """Read shapes-world wording into a :class:`SceneSpec` (at most two objects)."""
    s = _clean(text)
    background = None
    for pattern in _BACKGROUND_RES:
        m = pattern.search(s)
        if m:
            background = COLOR_WORDS[m.group(1)]
            s = s[:m.start()] + " , " + s[m.end():]
            break
    objects: list[ObjectSpec] = []
    spans: list[tuple[int, int]] = []
    for m in _OBJECT_RE.finditer(s):
        size_word = m.group(1) or m.group(3)
        objects.append(ObjectSpec(SHAPE_WORDS[m.group(4)], COLOR_WORDS.get(m.group(2) or ""),
                                  SIZE_WORDS.get(size_word or "")))
        spans.append(m.span())
        if len(objects) == 2:
            break
    relation = position = None
    if len(objects) == 2:
        between = s[spans[0][1]:spans[1][0]]
        m = _RELATION_RE.search(between)
        if m:
            relation = RELATION_WORDS[m.group(1)]
        else:  # "above a blue box, a red ball" / "left: a red ball, right: …" are too loose: guess nothing
            m = _RELATION_RE.search(s)
            if m and m.end() <= spans[0][0]:
                relation = {"left of": "right of", "right of": "left of", "above": "below",
                            "below": "above"}[RELATION_WORDS[m.group(1)]]
    else:
        rest = s[:spans[0][0]] + " " + s[spans[0][1]:] if spans else s
        m = _POSITION_RE.search(rest)
        if m:
            position = POSITION_WORDS[m.group(1)]
    known = set(COLOR_WORDS) | set(SIZE_WORDS) | set(" ".join(SHAPE_WORDS).split()) | set(
        " ".join(RELATION_WORDS).split()) | set(" ".join(POSITION_WORDS).split()) | set(BACKGROUND_NOUNS)
    words = re.findall(r"[a-z][a-z'-]+", _clean(text))
    unknown = tuple(dict.fromkeys(w for w in words if w not in known and w not in STOP))
    return SceneSpec(tuple(objects), background, position, relation, unknown)


def conflicts(request: SceneSpec, other: SceneSpec) -> list[str]:
    """Where ``other`` says something different from what ``request`` says (both normalized)."""
    a, b = request.normalized(), other.normalized()
    problems: list[str] = []
    if a.background and b.background and a.background != b.background:
        problems.append(f"background {b.background}, not {a.background}")
    if a.objects and len(b.objects) != len(a.objects):
        problems.append(f"{len(b.objects)} object(s), not {len(a.objects)}")
        return problems
    for want, got in zip(a.objects, b.objects):
        for attr in ("shape", "color", "size"):
            w, g = getattr(want, attr), getattr(got, attr)
            if w and g and w != g:
                problems.append(f"{attr} {g}, not {w}")
    if a.relation and b.relation and a.relation != b.relation:
        problems.append(f"{b.relation}, not {a.relation}")
    if a.position and b.position and a.position != b.position:
        problems.append(f"position {b.position}, not {a.position}")
    return problems


def complete_scene(request: SceneSpec, suggestion: SceneSpec | None = None, seed: int = 0) -> Scene:
    """A full scene: the request's fields, then the suggestion's where they agree, then seeded choices."""
    rng = random.Random(seed)
    use = suggestion if suggestion is not None and not conflicts(request, suggestion) else None
    count = len(request.objects) or (len(use.objects) if use and use.objects else 1)
    count = max(1, min(2, count))
    req_objects = list(request.normalized().objects) if request.relation else list(request.objects)
    sug_objects = []
    if use is not None and len(use.objects) == count:
        sug_objects = list(use.normalized().objects) if request.relation else list(use.objects)
    relation = request.relation or (use.relation if use else None)
    if count == 2 and request.relation:
        relation = request.normalized().relation
    background = request.background or (use.background if use else None)
    objects: list[ShapeObject] = []
    for i in range(count):
        want = req_objects[i] if i < len(req_objects) else ObjectSpec()
        hint = sug_objects[i] if i < len(sug_objects) else ObjectSpec()
        shape = want.shape or hint.shape or rng.choice(("circle", "square", "triangle", "star"))
        size = want.size or hint.size or "large"
        taken = {o.color for o in objects} | ({background} if background else set())
        color = want.color or (hint.color if hint.color not in taken else None)
        if color is None or color in {o.color for o in objects}:
            color = rng.choice([c for c in COLORS if c not in taken and c not in ("white", "black")] or
                               [c for c in COLORS if c not in taken])
        objects.append(ShapeObject(shape, color, size))
    used = {o.color for o in objects}
    if background is None or background in used:
        background = next(c for c in ("white", "black", "yellow", "blue") if c not in used)
    if count == 1:
        position = request.position or (use.position if use else None) or "center"
        return Scene(background, (objects[0],), position=position if position in POSITIONS else "center")
    if count == 2 and objects[0].color == objects[1].color:  # the request asked for two alike colours
        objects[1] = replace(objects[1], color=next(c for c in COLORS if c not in (background, objects[0].color)))
    return Scene(background, tuple(objects), relation=relation or "left of")


def scene_caption(scene: Scene) -> str:
    return canonical_caption(scene)


@dataclass(frozen=True)
class MatchResult:
    """How well a caption matches a request: matched / asked attributes, and what differs."""

    score: float
    matched: int
    asked: int
    differences: tuple[str, ...]


def scene_match(request: SceneSpec, caption: SceneSpec) -> MatchResult:
    """Score a caption against the attributes the request states (each counts one)."""
    a, b = request.normalized(), caption.normalized()
    asked = matched = 0
    diffs: list[str] = []

    def check(name: str, want, got) -> None:
        nonlocal asked, matched
        if want is None:
            return
        asked += 1
        if want == got:
            matched += 1
        else:
            diffs.append(f"{name} {got or 'none'} (asked {want})")

    check("background", a.background, b.background)
    for i, want in enumerate(a.objects):
        got = b.objects[i] if i < len(b.objects) else ObjectSpec()
        n = "" if len(a.objects) == 1 else f" {i + 1}"
        check(f"shape{n}", want.shape, got.shape)
        check(f"colour{n}", want.color, got.color)
        check(f"size{n}", want.size, got.size)
    if len(a.objects) == 2:
        check("relation", a.relation, b.relation if len(b.objects) == 2 else None)
    elif len(a.objects) == 1:
        check("position", a.position, b.position if len(b.objects) == 1 else None)
    if asked == 0:
        return MatchResult(1.0 if not b.empty else 0.0, 0, 0, ())
    return MatchResult(matched / asked, matched, asked, tuple(diffs))


# -- the critique: which words of the caption to stress next round ------------------------------------

_WEIGHT_STEP, _WEIGHT_START, _WEIGHT_MAX = 0.1, 1.2, 1.5


def previous_weight(prompt: str, word: str) -> float:
    """The emphasis ``(word:w)`` a prompt gave a word (1.0 when none)."""
    m = re.search(rf"\(\s*{re.escape(word)}\s*:\s*([0-9.]+)\s*\)", prompt or "")
    try:
        return float(m.group(1)) if m else 1.0
    except ValueError:
        return 1.0


def wrong_attributes(target: Scene, shown: SceneSpec) -> set[tuple[int, str]]:
    """(object index or -1 for the background, attribute) that the shown scene gets wrong."""
    t = SceneSpec(tuple(ObjectSpec(o.shape, o.color, o.size) for o in target.objects), target.background,
                  target.position, target.relation).normalized()
    s = shown.normalized()
    flipped = t.objects != SceneSpec(tuple(ObjectSpec(o.shape, o.color, o.size) for o in target.objects)).objects
    wrong: set[tuple[int, str]] = set()
    if s.background != t.background:
        wrong.add((-1, "background"))
    for i, want in enumerate(t.objects):
        got = s.objects[i] if len(s.objects) == len(t.objects) else ObjectSpec()
        index = (len(t.objects) - 1 - i) if flipped else i  # back to the target's own order
        for attr in ("shape", "color", "size"):
            if getattr(want, attr) != getattr(got, attr):
                wrong.add((index, attr))
    if len(t.objects) == 1 and s.position != t.position:
        wrong.add((0, "position"))
    if len(t.objects) == 2 and (len(s.objects) != 2 or s.relation != t.relation):
        wrong.add((-1, "relation"))
    return wrong


def emphasized_caption(scene: Scene, wrong: set[tuple[int, str]], previous_prompt: str = "") -> str:
    """The scene's canonical caption with ``(word:w)`` on the words the last image got wrong.

    The weight starts at 1.2 and grows by 0.1 (up to 1.5) each round the same word is still wrong.
    """
    def word(text: str, key: tuple[int, str]) -> str:
        if key not in wrong:
            return text
        weight = min(_WEIGHT_MAX, max(_WEIGHT_START, previous_weight(previous_prompt, text) + _WEIGHT_STEP))
        return f"({text}:{weight:.1f})"

    def obj(i: int, o: ShapeObject) -> str:
        return f"a {word(o.size, (i, 'size'))} {word(o.color, (i, 'color'))} {word(o.shape, (i, 'shape'))}"

    from nodegraph_nodes.shapes.captions import POSITION_PHRASES, RELATION_PHRASES

    background = f"on a {word(scene.background, (-1, 'background'))} background"
    if scene.position is not None:
        where = POSITION_PHRASES[scene.position]
        if (0, "position") in wrong:
            last = where.split()[-1]
            where = where[: -len(last)] + word(last, (0, "position"))
        return f"{obj(0, scene.objects[0])} {where} {background}"
    relation = RELATION_PHRASES[scene.relation]
    if (-1, "relation") in wrong:
        key = {"left of": "left", "right of": "right", "above": "above", "below": "below"}[scene.relation]
        relation = relation.replace(key, word(key, (-1, "relation")))
    return f"{obj(0, scene.objects[0])} {relation} {obj(1, scene.objects[1])} {background}"
