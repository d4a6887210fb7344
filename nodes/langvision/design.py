"""Design-loop scoring: how well an image's caption matches the instruction, and a one-line round report.

CaptionScore is the score of a design-loop round (see ``workflows/design_loop.json``):
- style "shapes world": the instruction and the caption are read as shapes-world scenes
  (:mod:`nodegraph_nodes.shapes.text`); the score is the share of the attributes the instruction
  states (each object's shape, colour and size, the position or relation, the background) that the
  caption shows — 1.0 when the picture is what was asked;
- any other style: the share of the instruction's content words that the caption mentions.
Its ``report`` output is the line the CLI prints for the round: round, score, prompt and caption.

DesignScore is the design loop's judge for the shapes world (:mod:`nodegraph_nodes.langvision.design_judge`):
it reads the picture itself, twice — the captioner's confidence in each asked attribute and the outline
(geometric) check of ``nodes/shapes/evaluate.py`` — so the score does not rest on one captioner reading;
``met`` says whether the picture is what was asked (the loop stops there).
"""

from __future__ import annotations

from nodegraph.node import Input, Node, Output
from nodegraph.types import BOOLEAN, COMBO, FLOAT, IMAGE, INT, STRING

from nodegraph.value_checks import check_text
from nodegraph_nodes.shapes.text import parse_spec, scene_match
from nodegraph_nodes.langvision.vision import CAPTIONER, VisionTextModel
from nodegraph_nodes.langvision.llm import SHAPES_STYLE, STOP_WORDS, STYLE_PRESETS, missing_terms


def word_score(instruction: str, caption: str) -> tuple[float, list[str]]:
    """Share of the instruction's content words that the caption mentions, and the missing ones."""
    import re

    words = list(dict.fromkeys(w for w in re.findall(r"[a-zA-Z][a-zA-Z'-]+", instruction.lower())
                               if w not in STOP_WORDS))
    if not words:
        return 1.0, []
    missing = missing_terms(instruction, caption)
    return (len(words) - len(missing)) / len(words), missing


class CaptionScore(Node):
    """Score how well a caption of the image matches the instruction (0..1), with a one-line report."""

    category = "llm/prompt"
    instruction = Input(STRING, default="", multiline=True, force_input=True)
    caption = Input(STRING, default="", multiline=True, force_input=True)
    style = Input(COMBO, choices=list(STYLE_PRESETS), default="none",
                  tooltip="'shapes world' compares scenes attribute by attribute; others compare words")
    prompt = Input(STRING, default="", multiline=True, optional=True, force_input=True,
                   tooltip="The prompt the image was made from (shown in the report).")
    round = Input(INT, min=0, max=10_000, optional=True, force_input=True,
                  tooltip="The loop's round index from 0 (shown as round index + 1); unconnected: 'final'.")
    outputs = (Output(FLOAT, "score"), Output(STRING, "report"))

    def execute(self, instruction, caption, style="none", prompt="", round=None) -> tuple:  # noqa: A002
        check_text(instruction, "instruction")
        check_text(caption, "caption", allow_empty=True)
        if style not in STYLE_PRESETS:
            raise ValueError(f"input 'style': unknown style {style!r}; use one of {', '.join(STYLE_PRESETS)}")
        if style == SHAPES_STYLE:
            match = scene_match(parse_spec(instruction), parse_spec(caption))
            score = match.score
            detail = f"{match.matched}/{match.asked} asked attributes shown" + (
                f"; wrong: {', '.join(match.differences)}" if match.differences else "")
        else:
            score, missing = word_score(instruction, caption)
            detail = f"missing: {', '.join(missing)}" if missing else "every word shown"
        label = f"round {int(round) + 1}" if round is not None else "final"
        report = (f"{label}: score {score:.2f} ({detail})\n  prompt:  {' '.join((prompt or '').split())}\n"
                  f"  caption: {' '.join(caption.split())}")
        return (float(score), report)


class DesignScore(Node):
    """Judge a picture against a shapes-world request: captioner confidence + outline check (0..1), met or not.

    Inputs: the shapes-world captioner (CaptionerLoader ``shapes-world (built-in)``), the picture (the
    first of the batch; any size, read at the world's canvas size), the instruction (what counts) and
    the prompt the picture was drawn from (it fixes what the instruction leaves open, e.g. colours).
    Outputs: ``score`` = (mean captioner probability of the asked values + share of outline checks
    passed) / 2; ``met`` = the captioner's reading shows every asked attribute and every outline
    check passes; ``caption`` = the captioner's reading; ``judge`` = both readings in words; ``issues`` =
    what either reading found wrong, as keys for PromptCritique's ``issues`` input (``shape:blue``,
    ``background``, ``relation`` …, comma-separated; empty when met).
    Stricter than a caption match: an instruction that names no shape is an error.
    """

    category = "llm/design"
    display_name = "Design Score (shapes world)"
    captioner = Input(CAPTIONER)
    image = Input(IMAGE)
    instruction = Input(STRING, default="", multiline=True, force_input=True)
    prompt = Input(STRING, default="", multiline=True, optional=True, force_input=True)
    outputs = (Output(FLOAT, "score"), Output(BOOLEAN, "met"), Output(STRING, "caption"), Output(STRING, "judge"),
               Output(STRING, "issues"))

    def execute(self, captioner, image, instruction, prompt="") -> tuple:
        from nodegraph.value_checks import check_image
        from nodegraph_nodes.langvision.design_judge import judge

        check_text(instruction, "instruction")
        image = check_image(image, "image")
        if not isinstance(captioner, VisionTextModel) or captioner.kind != "shapes_world":
            raise ValueError("input 'captioner': DesignScore reads pictures with the shapes-world captioner; "
                             "load 'shapes-world (built-in)' with CaptionerLoader")
        with self.ctx.service("models").use(captioner.handle) as model:
            result = judge(model, image, instruction, prompt or "")
        return (float(result.score), bool(result.met), result.caption, result.summary(), ", ".join(result.issues))
