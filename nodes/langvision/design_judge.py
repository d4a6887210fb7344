"""The design loop's judge for the shapes world: a score from two independent readings of the picture.

A round's picture is judged against the *request* (the instruction read with
:func:`~nodegraph_nodes.shapes.text.parse_spec`): only the attributes it states count — each object's
shape, colour and size, the position (one object) or the relation (two), the background — plus the
number of objects. The layout and the colours the request leaves open are taken from the round's
prompt (:func:`target_scene`: the full scene the prompt describes, completed from the request).

1. **Captioner confidence** (:func:`captioner_reading`): the shapes-world captioner's softmax
   probability of the requested class, on the head of each asked attribute (``count``, ``background``,
   ``shape1`` …, ``position`` or ``orientation``), averaged. Its arg-max reading is the round's caption.
2. **Geometric check** (:func:`geometric_reading`): the outline check of
   :mod:`nodegraph_nodes.shapes.evaluate` per asked attribute — the border's palette colour for the
   background; for each object the largest blob of its colour (found = the colour), the renderer's
   template it overlaps best (IoU ≥ 0.7: the shape and the size), its centre within 6 px of where the
   position or relation puts it; and under 3 % of the pixels in colours the scene does not have.
   The share of checks passed.

What either reading found wrong is also given as issue keys (``shape:blue``, ``background`` …), which
PromptCritique's ``issues`` input reads: an error only the outline check saw is corrected too.

``score = (confidence + geometric share) / 2``; the request is **met** when the captioner's reading
shows every asked attribute and every geometric check passes. The picture is read at the world's
canvas size (:data:`~nodegraph_nodes.shapes.world.CANVAS`): any other size is resized to it (area), so
the judge follows whatever size the generator draws at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from nodegraph_nodes.shapes.text import ObjectSpec, SceneSpec, complete_scene, parse_spec, scene_match
from nodegraph_nodes.shapes.world import CANVAS, COLORS, POSITIONS, SHAPES, SIZES, Scene

#: How far (px, at the world's canvas size) a blob's centre may be from where the scene puts it.
CENTRE_TOLERANCE = 6
#: Pixels of colours the scene does not have may cover at most this share of the picture.
STRAY_LIMIT = 0.03
#: A blob of an object's colour needs at least this many pixels to count as drawn.
MIN_BLOB = 10


@dataclass(frozen=True)
class Judgement:
    """What the judge found: the score, whether the request is met, and both readings."""

    score: float
    met: bool
    confidence: float
    geometric: float
    caption: str
    #: (attribute, captioner probability of the requested value)
    probabilities: tuple[tuple[str, float], ...] = ()
    #: geometric checks that failed, in words
    failed: tuple[str, ...] = ()
    #: attributes the captioner's reading gets wrong (as CaptionScore words them)
    wrong: tuple[str, ...] = field(default=())
    #: what either reading found wrong, as keys PromptCritique reads: ``background``, ``relation``,
    #: ``count``, ``stray``, ``<attribute>:<colour of the object>`` (e.g. ``shape:blue``)
    issues: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        checks = f"captioner {self.confidence:.2f}, outline check {self.geometric:.2f}"
        problems = list(self.wrong) + list(self.failed)
        return checks + (f"; wrong: {'; '.join(problems)}" if problems else "; request met")


def target_scene(request: SceneSpec, prompt: str) -> Scene:
    """The full scene a round's prompt describes (the request's attributes always win)."""
    return complete_scene(request, parse_spec(prompt or ""), seed=0)


def canvas_image(image: torch.Tensor) -> np.ndarray:
    """The first picture of an IMAGE batch as uint8 ``[CANVAS, CANVAS, 3]`` (area-resized if needed)."""
    x = image[:1, ..., :3].permute(0, 3, 1, 2).float().cpu()
    if tuple(x.shape[-2:]) != (CANVAS, CANVAS):
        x = torch.nn.functional.interpolate(x, size=(CANVAS, CANVAS), mode="area")
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _asked_objects(request: SceneSpec, target: Scene) -> tuple[Scene, list[ObjectSpec]]:
    """The target in normalized order ('left of' / 'above') and the request's objects aligned with it."""
    req = list(request.normalized().objects) if request.relation else list(request.objects)
    req += [ObjectSpec()] * (len(target.objects) - len(req))
    req = req[:len(target.objects)]
    norm = target.normalized()
    if norm.objects != target.objects:  # 'right of' / 'below' targets are read the other way round
        req = req[::-1]
    return norm, req


def asked_attributes(request: SceneSpec, target: Scene) -> list[tuple[str, int, str]]:
    """``(attribute, object index or -1, requested value)`` of everything the request states.

    The number of objects always counts; the layout (position / relation) counts when the request
    states it. Indices refer to the target's normalized order.
    """
    norm, req = _asked_objects(request, target)
    asked: list[tuple[str, int, str]] = [("count", -1, str(len(norm.objects)))]
    if request.background:
        asked.append(("background", -1, request.background))
    for i, want in enumerate(req):
        for attr in ("shape", "color", "size"):
            value = getattr(want, attr)
            if value:
                asked.append((attr, i, value))
    if len(norm.objects) == 1 and request.position:
        asked.append(("position", 0, request.position))
    if len(norm.objects) == 2 and request.relation:
        asked.append(("relation", -1, norm.relation))
    return asked


def _head(attr: str, index: int, value: str) -> tuple[str, int]:
    """The captioner head and class index that show ``attr`` = ``value``."""
    if attr == "count":
        return "count", int(value) - 1
    if attr == "background":
        return "background", COLORS.index(value)
    if attr == "position":
        return "position", POSITIONS.index(value)
    if attr == "relation":
        return "orientation", 0 if value == "left of" else 1
    table = {"shape": SHAPES, "color": COLORS, "size": SIZES}[attr]
    return f"{attr}{index + 1}", table.index(value)


@torch.no_grad()
def captioner_reading(model, picture: np.ndarray, asked: list[tuple[str, int, str]],
                      target: Scene | None = None) -> tuple[float, list, str, list[str]]:
    """``(mean probability of the asked values, [(attribute, probability)], caption, [issue keys])``.

    An issue is an asked attribute whose most likely class is not the requested one (keys as
    :func:`geometric_reading`'s; ``target``, normalized, names the objects by colour)."""
    from nodegraph_nodes.shapes.captioner import decode

    x = torch.from_numpy(picture).float().div(255).permute(2, 0, 1)[None]
    device = next(model.parameters()).device
    logits = {k: v.float().cpu() for k, v in model(x.to(device)).items()}
    probs = {k: v.softmax(-1)[0] for k, v in logits.items()}
    per, issues = [], []
    for attr, index, value in asked:
        head, cls = _head(attr, index, value)
        p = float(probs[head][cls])
        if int(probs[head].argmax()) != cls:
            colour = target.objects[index].color if target is not None and index >= 0 else ""
            issues.append(f"{attr}:{colour}" if index >= 0 else attr)
        if head in ("shape2", "color2", "size2", "orientation"):
            p *= float(probs["count"][1])  # a pair's second object only exists when two are seen
        name = attr if index < 0 else f"{attr} {index + 1}"
        per.append((name, p))
    confidence = sum(p for _, p in per) / len(per)
    return confidence, per, decode(logits)[0].caption, issues


def _stray_share(labels: np.ndarray, scene: Scene) -> float:
    from nodegraph_nodes.shapes.evaluate import COLOR_NAMES

    allowed = [COLOR_NAMES.index(scene.background)] + [COLOR_NAMES.index(o.color) for o in scene.objects]
    return float((~np.isin(labels, allowed)).mean())


def geometric_reading(picture: np.ndarray, request: SceneSpec, target: Scene,
                      asked: list[tuple[str, int, str]]) -> tuple[float, list[tuple[str, str]]]:
    """``(share of geometric checks passed, [(issue key, failed check in words)])`` for the asked attributes.

    Issue keys: ``background``, ``relation``, ``stray``, ``<attribute>:<colour of the object>``."""
    from nodegraph_nodes.shapes.evaluate import COLOR_NAMES, MIN_TEMPLATE_IOU, best_template, object_mask, \
        snap_to_palette

    norm, _ = _asked_objects(request, target)
    labels = snap_to_palette(picture)
    border = np.concatenate([labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel(), labels[:, -2:].ravel()])
    seen_bg = COLOR_NAMES[np.bincount(border, minlength=len(COLOR_NAMES)).argmax()]
    blobs = []
    for obj, (cx, cy) in norm.placements():
        mask = object_mask(picture, obj.color)
        if mask.sum() < MIN_BLOB:
            blobs.append(None)
            continue
        ys, xs = np.nonzero(mask)
        centre = ((xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2)
        shape, size, iou = best_template(mask, obj.color, norm.background, centre)
        placed = abs(centre[0] - cx + 0.5) <= CENTRE_TOLERANCE and abs(centre[1] - cy + 0.5) <= CENTRE_TOLERANCE
        blobs.append({"shape": shape if iou >= MIN_TEMPLATE_IOU else None,
                      "size": size if iou >= MIN_TEMPLATE_IOU else None, "placed": placed, "iou": iou,
                      "best": f"{size} {shape}"})
    failed: list[tuple[str, str]] = []  # (issue key, words)
    checks = 0
    for attr, index, value in asked:
        if attr == "count":
            continue  # counted through the objects' own checks (each must be found)
        checks += 1
        if attr == "background":
            if seen_bg != value:
                failed.append(("background", f"the border is {seen_bg}, not {value}"))
            continue
        if attr in ("position", "relation"):
            indices = [0] if attr == "position" else [0, 1]
            lost = [norm.objects[i].color for i in indices if blobs[i] is None or not blobs[i]["placed"]]
            if lost:
                missing = [i for i in indices if blobs[i] is None]
                key = (f"color:{norm.objects[missing[0]].color}" if missing else
                       f"position:{lost[0]}" if attr == "position" else "relation")
                failed.append((key, f"the {' and '.join(lost)} shape{'s are' if len(lost) > 1 else ' is'} not where "
                                    f"the {attr} puts {'it' if len(lost) == 1 else 'them'}"))
            continue
        obj, blob = norm.objects[index], blobs[index]
        # no blob of the colour: its shape, size and place are unreadable, the colour is what is wrong
        key = f"{attr if blob is not None else 'color'}:{obj.color}"
        if blob is None:
            failed.append((key, f"no {obj.color} shape" if attr == "color" else f"no {obj.color} shape to read its {attr}"))
        elif attr in ("shape", "size") and blob[attr] is None:
            failed.append((key, f"the {obj.color} shape has no clear outline (closest: {blob['best']}, "
                                f"IoU {blob['iou']:.2f})"))
        elif attr in ("shape", "size") and blob[attr] != value:
            failed.append((key, f"the {obj.color} shape's outline is {blob[attr]}, not {value}"))
    checks += 1
    stray = _stray_share(labels, norm)
    if stray > STRAY_LIMIT:
        failed.append(("stray", f"{stray:.0%} stray colours"))
    return (checks - len(failed)) / checks, failed


def judge(model, image: torch.Tensor, instruction: str, prompt: str = "") -> Judgement:
    """Score one picture (IMAGE batch, the first item) against ``instruction`` (see the module doc)."""
    request = parse_spec(instruction)
    if not request.objects:
        raise ValueError("input 'instruction': it names no shape the shapes world can draw (circle, square, "
                         "triangle or star, or a synonym such as ball or box)")
    target = target_scene(request, prompt)
    picture = canvas_image(image)
    asked = asked_attributes(request, target)
    confidence, per, caption, seen_wrong = captioner_reading(model, picture, asked, target.normalized())
    geometric, failed = geometric_reading(picture, request, target, asked)
    match = scene_match(request, parse_spec(caption))
    met = match.score == 1.0 and not failed
    issues = tuple(dict.fromkeys(seen_wrong + [key for key, _ in failed]))
    words = tuple(dict.fromkeys(w for _, w in failed))  # one outline problem may fail shape and size
    return Judgement((confidence + geometric) / 2, met, confidence, geometric, caption, tuple(per), words,
                     match.differences, issues)
