"""The design loop's state nodes: what a round tries, what it keeps, and when the loop is done.

A design loop (``workflows/design_loop.json``) is a ``Repeat`` whose carried value is a
**DESIGN_STATE** (a dict, so loop values are keyed by content):

``instruction``
    the request, unchanged;
``prompt``
    the prompt the next round draws from (the rewrite first, then each critique's revision);
``negative``
    the next round's negative prompt: what the last wrong picture showed instead (the critique's
    ``negative``, e.g. ``star`` where a circle was asked), empty at first;
``seed``
    the base noise seed; round *i* (from 0) samples with :func:`round_seed` (``seed``, *i*);
``rounds``
    one record per round run: ``round`` (from 1), ``seed``, ``prompt``, ``negative``, ``caption``, ``score``, ``met``,
    ``judge`` (the score's reasons), ``critique``, ``revised_prompt``, ``image`` (IMAGE);
``best``
    the index in ``rounds`` of the best picture so far (the highest score; the earlier one on a tie);
``done``
    the request was met: later rounds do not run.

Nodes:

- **DesignStart** (instruction, prompt, seed → state) starts it.
- **DesignRound** (state, round → prompt, seed, instruction, negative) says what a round tries: the
  state's prompt and negative prompt and the round's own noise seed.
- **DesignUpdate** (state, round, seed, prompt, negative + lazily image, score, met, caption, judge,
  critique, revised_prompt, next_negative → state, image, report) records the round and keeps the best picture. Its picture
  and judgement inputs are *lazy*: once the state is done it asks for none of them, so a round after
  the request was met generates nothing (its SaveImage gets a silent blocker and saves nothing, its
  report says why); when the round met the request it does not ask for the critique either.
- **DesignResult** (state → image, prompt, score, report) gives the best picture of all rounds: the
  final result is never worse than round 1.
"""

from __future__ import annotations

import hashlib
from typing import Any

from nodegraph.blocking import ExecutionBlocker
from nodegraph.node import Input, Node, Output
from nodegraph.types import BOOLEAN, FLOAT, IMAGE, INT, STRING, UINT64_MAX

from nodegraph.value_checks import check_text

DESIGN_STATE = "DESIGN_STATE"
#: Round seeds stay below 2**48 (exact as floats, within every seed widget's range).
_SEED_BITS = 48


def round_seed(base: int, index: int) -> int:
    """The noise seed of round ``index`` (from 0): the base seed itself first, then a hash of both.

    Deterministic (the same base seed gives the same rounds) and different for every round.
    """
    if index == 0:
        return int(base)
    digest = hashlib.sha256(f"nodegraph design round:{int(base)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def check_state(state: Any, input_name: str = "state") -> dict:
    if not isinstance(state, dict) or "rounds" not in state or "prompt" not in state:
        raise TypeError(f"input '{input_name}' must be a DESIGN_STATE from DesignStart (or a design loop's "
                        f"round), got {type(state).__name__}")
    return state


def _one_line(text: str) -> str:
    return " ".join(str(text or "").split())


class DesignStart(Node):
    """Start a design loop: the request, the first round's prompt and the base noise seed (a DESIGN_STATE)."""

    category = "llm/design"
    display_name = "Design Loop Start"
    instruction = Input(STRING, default="", multiline=True, force_input=True)
    prompt = Input(STRING, default="", multiline=True, force_input=True,
                   tooltip="The first round's prompt (e.g. PromptRewrite's).")
    seed = Input(INT, default=0, min=0, max=UINT64_MAX, control_after_generate=True,
                 tooltip="Round 1 samples with this seed; each later round with its own seed derived from it.")
    outputs = (Output(DESIGN_STATE, "state"),)

    def execute(self, instruction, prompt, seed=0) -> tuple:
        check_text(instruction, "instruction")
        check_text(prompt, "prompt")
        return ({"instruction": _one_line(instruction), "prompt": prompt.strip(), "negative": "", "seed": int(seed),
                 "rounds": [], "best": None, "done": False},)


class DesignRound(Node):
    """What a design-loop round tries: the state's current prompt and the round's own noise seed."""

    category = "llm/design"
    display_name = "Design Loop Round"
    state = Input(DESIGN_STATE)
    round = Input(INT, default=0, min=0, max=10_000, force_input=True, tooltip="The loop's round index (from 0).")
    outputs = (Output(STRING, "prompt"), Output(INT, "seed"), Output(STRING, "instruction"), Output(STRING, "negative"))

    def execute(self, state, round=0) -> tuple:  # noqa: A002
        state = check_state(state)
        return (state["prompt"], round_seed(state["seed"], int(round)), state["instruction"], state.get("negative", ""))


def round_report(record: dict) -> str:
    """The lines the CLI prints for a round (``round N: score S (…)``, prompt, caption, critique)."""
    lines = [f"round {record['round']}: score {record['score']:.2f} ({record['judge']})",
             f"  prompt:  {_one_line(record['prompt'])}"]
    if record.get("negative"):
        lines.append(f"  negative: {record['negative']}")
    lines += [f"  caption: {_one_line(record['caption'])}", f"  seed:    {record['seed']}"]
    if record["met"]:
        lines.append("  the request is met: the loop stops here")
    elif record.get("critique"):
        lines.append(f"  critique: {_one_line(record['critique'])}")
        lines.append(f"  next:    {_one_line(record['revised_prompt'])}"
                     + (f" (negative: {record['next_negative']})" if record.get("next_negative") else ""))
    return "\n".join(lines)


class DesignUpdate(Node):
    """Record a design-loop round, keep the best picture so far, and stop once the request is met."""

    category = "llm/design"
    display_name = "Design Loop Update"
    state = Input(DESIGN_STATE)
    round = Input(INT, default=0, min=0, max=10_000, force_input=True)
    seed = Input(INT, default=0, min=0, max=UINT64_MAX, force_input=True, tooltip="The seed the round sampled with.")
    prompt = Input(STRING, default="", multiline=True, force_input=True, tooltip="The prompt the round drew from.")
    negative = Input(STRING, default="", force_input=True, optional=True, tooltip="The round's negative prompt.")
    image = Input(IMAGE, lazy=True)
    score = Input(FLOAT, default=0.0, lazy=True, force_input=True)
    met = Input(BOOLEAN, default=False, lazy=True, force_input=True, tooltip="The picture is what was asked.")
    caption = Input(STRING, default="", lazy=True, force_input=True)
    judge = Input(STRING, default="", lazy=True, force_input=True, optional=True,
                  tooltip="Why the score is what it is (shown in the report).")
    revised_prompt = Input(STRING, default="", lazy=True, force_input=True,
                           tooltip="The critique's prompt for the next round (asked for only when not met).")
    critique = Input(STRING, default="", lazy=True, force_input=True, optional=True)
    next_negative = Input(STRING, default="", lazy=True, force_input=True, optional=True,
                          tooltip="The critique's negative prompt for the next round.")
    outputs = (Output(DESIGN_STATE, "state"), Output(IMAGE, "image"), Output(STRING, "report"))

    def check_lazy(self, state=None, met=None, **inputs: Any) -> list[str]:
        if isinstance(state, dict) and state.get("done"):
            return []  # the request was met in an earlier round: nothing of this round is computed
        values = {**inputs, "met": met}
        if any(values.get(n) is None for n in ("image", "score", "met", "caption")):
            return [n for n in ("image", "score", "met", "caption", "judge") if values.get(n) is None]
        if met:
            return []  # met: the critique is not needed
        return [n for n in ("revised_prompt", "critique", "next_negative") if values.get(n) is None]

    def execute(self, state, round=0, seed=0, prompt="", image=None, score=None, met=None, caption=None,  # noqa: A002
                judge="", revised_prompt=None, critique="", negative="", next_negative="") -> tuple:
        state = check_state(state)
        number = int(round) + 1
        if state["done"]:
            best = state["rounds"][state["best"]]
            report = (f"round {number}: not run — round {best['round']} met the request "
                      f"(score {best['score']:.2f})")
            return (state, ExecutionBlocker(None), report)
        if image is None or score is None:
            raise ValueError("inputs 'image' and 'score' are required while the request is not met")
        record = {"round": number, "seed": int(seed), "prompt": prompt, "negative": _one_line(negative),
                  "next_negative": "" if met else _one_line(next_negative), "caption": _one_line(caption),
                  "score": float(score), "met": bool(met), "judge": _one_line(judge),
                  "critique": "" if met else _one_line(critique),
                  "revised_prompt": prompt if met else (revised_prompt or prompt).strip(), "image": image}
        rounds = list(state["rounds"]) + [record]
        best = state["best"]
        if best is None or record["score"] > rounds[best]["score"]:
            best = len(rounds) - 1
        new = {**state, "rounds": rounds, "best": best, "done": bool(met), "prompt": record["revised_prompt"],
               "negative": record["negative"] if met else record["next_negative"]}
        return (new, image, round_report(record))


class DesignResult(Node):
    """The design loop's result: the best picture of all rounds, its prompt, its score and a report."""

    category = "llm/design"
    display_name = "Design Loop Result"
    state = Input(DESIGN_STATE)
    outputs = (Output(IMAGE, "image"), Output(STRING, "prompt"), Output(FLOAT, "score"), Output(STRING, "report"))

    def execute(self, state) -> tuple:
        state = check_state(state)
        if not state["rounds"]:
            raise ValueError("input 'state': no round has run (connect the design loop's final state)")
        best = state["rounds"][state["best"]]
        first = state["rounds"][0]
        run = len(state["rounds"])
        why = ("the request is met" if best["met"] else "the request was not fully met in "
               f"{run} round{'s' if run > 1 else ''}; the best picture is kept")
        report = (f"final: score {best['score']:.2f} (round {best['round']}'s picture of {run} run; round 1 "
                  f"scored {first['score']:.2f}; {why})\n  prompt:  {_one_line(best['prompt'])}\n"
                  f"  caption: {best['caption']}")
        return (best["image"], best["prompt"], float(best["score"]), report)
