"""Prompt templates and few-shot examples for the LLM nodes, and the clean-up of what a small LLM answers.

The templates are written for the default SmolLM2-135M-Instruct (and work with larger chat models):
short system prompts, few-shot turns in the exact answer format, and for free-form scenes an answer
*started* with the user's own instruction (``prefill``) so that a 135M model continues it with
details instead of drifting to another subject. :func:`single_prompt_line` turns any answer into one
prompt line: chat preambles ("Sure! Here's…"), labels ("Prompt:"), quotes, list markers and extra
lines are removed.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Example(NamedTuple):
    ask: str
    answer: str


# -- rewrite ----------------------------------------------------------------------------------------

GENERAL_REWRITE_SYSTEM = (
    "You write prompts for an image generator. Continue the user's instruction with visual details: "
    "setting, lighting, colours, composition and camera. One line of comma-separated phrases, no sentences.")

GENERAL_REWRITE_EXAMPLES = (
    Example("a cat on a roof", "a cat on a roof, ginger cat sitting on terracotta tiles, warm sunset light, "
                               "city skyline in the background, wide shot"),
    Example("robot reading", "robot reading, small vintage robot holding an open book, cozy library, "
                             "soft window light, close-up, shallow depth of field"),
    Example("a lighthouse in a storm", "a lighthouse in a storm, huge waves crashing on the rocks, dark clouds, "
                                       "lightning, dramatic light, long exposure"),
)

SHAPES_REWRITE_SYSTEM = (
    "You turn a request into a caption for a picture of flat shapes. Shapes: circle, square, triangle, star. "
    "Colours: red, orange, yellow, green, blue, purple, white, black. Sizes: small, large. Places: in the "
    "center, on the left, on the right, at the top, at the bottom; or one shape to the left of, to the "
    "right of, above or below another. Answer with one caption in the form of the examples.")

SHAPES_REWRITE_EXAMPLES = (
    Example("a big red ball at the top on white", "a large red circle at the top on a white background"),
    Example("little green box left of a huge yellow star, black bg",
            "a small green square to the left of a large yellow star on a black background"),
    Example("purple triangle in the middle", "a large purple triangle in the center on a white background"),
    Example("an orange disc under a blue block",
            "a small orange circle below a small blue square on a white background"),
    Example("a sun in the sky", "a large yellow circle at the top on a blue background"),
)

# -- critique -----------------------------------------------------------------------------------------

GENERAL_CRITIQUE_SYSTEM = (
    "You improve prompts for an image generator. You get the instruction, the prompt that was used and "
    "what the image shows. Write a better prompt that makes the missing parts appear. One line of "
    "comma-separated phrases.")

GENERAL_CRITIQUE_EXAMPLES = (
    Example("Instruction: a red fox in the snow\nPrompt used: a red fox in the snow, forest, soft light\n"
            "The image shows: a white field with trees",
            "a red fox in the snow, the fox in the foreground, orange fur, close-up, soft light"),
    Example("Instruction: two boats on a lake\nPrompt used: two boats on a lake, sunset\n"
            "The image shows: a boat on the water at sunset",
            "two boats on a lake, two wooden boats side by side, calm water, sunset, wide shot"),
)

SHAPES_CRITIQUE_SYSTEM = (
    "You fix captions for a picture of flat shapes. You get the request, the caption that was used and "
    "what the picture shows. Answer with the caption that asks for exactly the request, in the same form.")

SHAPES_CRITIQUE_EXAMPLES = (
    Example("Request: a big red ball above a small blue box on white\n"
            "Caption used: a large red circle above a small blue square on a white background\n"
            "The picture shows: a large red circle above a small green square on a white background",
            "a large red circle above a small blue square on a white background"),
    Example("Request: yellow star on the left\n"
            "Caption used: a large yellow star on the left on a black background\n"
            "The picture shows: a large yellow triangle on the left on a black background",
            "a large yellow star on the left on a black background"),
)

# -- questions answered from a caption ------------------------------------------------------------------

CAPTION_QA_SYSTEM = (
    "You answer questions about a picture from its caption only. Answer in a few words; say \"unknown\" "
    "when the caption does not tell.")

CAPTION_QA_EXAMPLES = (
    Example("Caption: a large red circle at the top on a white background\nQuestion: what colour is the circle?",
            "red"),
    Example("Caption: a small blue square to the left of a yellow triangle on a black background\n"
            "Question: is there a triangle?", "yes"),
    Example("Caption: a dog running on a beach at sunset\nQuestion: how many dogs are there?", "one"),
    Example("Caption: a small green star on the right on a white background\nQuestion: is the star large?",
            "no"),
    Example("Caption: a bowl of fruit on a table\nQuestion: what is the man wearing?", "unknown"),
)


def few_shot_messages(system: str, examples: tuple[Example, ...] | list[Example], ask: str) -> list[dict[str, str]]:
    """Chat messages: the system prompt, each example as a user/assistant turn, then the question."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for example in examples:
        messages += [{"role": "user", "content": example.ask}, {"role": "assistant", "content": example.answer}]
    messages.append({"role": "user", "content": ask})
    return messages


# -- clean-up -----------------------------------------------------------------------------------------

_PREAMBLE = re.compile(
    r"^(?:(?:sure|certainly|of course|okay|ok|absolutely|great|alright)\b[^\n:]*?(?:[!.,:]\s*|\n|$))?"
    r"(?:(?:here(?:'s| is| are)|this is|below is|i(?:'ve| have)? (?:written|created|made|came up with))\b"
    r"[^\n:]*?(?::\s*|\n)|(?:i'd suggest|try)\s*:?\s*)?", re.IGNORECASE)
_LABEL = re.compile(r"^(?:assistant|answer|prompt|caption|revised prompt|improved prompt|new prompt|"
                    r"improved caption|revised caption|better prompt|output|result)\s*[:\-–]\s*", re.IGNORECASE)
_LIST_MARK = re.compile(r"^(?:[-*•]\s+|\d+[.)]\s+)")
_QUOTES = "\"'`“”‘’«»"


def single_prompt_line(text: str, max_words: int = 75) -> str:
    """One prompt line out of an LLM answer: no preamble, label, quotes, list marker or further lines."""
    text = (text or "").strip()
    text = text.replace("```", "\n").strip()
    for _ in range(2):  # "Sure! Here's a prompt:\n\nPrompt: ..." has two layers
        text = _PREAMBLE.sub("", text, count=1).lstrip()
        text = _LABEL.sub("", text, count=1).lstrip()
    line = ""
    for candidate in text.splitlines():
        candidate = _LABEL.sub("", _LIST_MARK.sub("", candidate.strip())).strip()
        if candidate and not candidate.endswith(":"):
            line = candidate
            break
    line = line.strip().strip(_QUOTES).strip()
    # a trailing remark after the prompt ("… highly detailed. This prompt captures …") is dropped
    line = re.split(r"(?<=[a-z0-9)])\.\s+(?=(?:this|these|i|it|the above|let me|hope|feel)\b)", line,
                    maxsplit=1, flags=re.IGNORECASE)[0]
    words = line.split()
    if len(words) > max_words:
        line = " ".join(words[:max_words])
        if "," in line:
            line = line.rsplit(",", 1)[0]  # end at a phrase boundary
    return line.strip().strip(_QUOTES).rstrip(" ,;:.").strip()
