"""ComfyUI's ``TextGenerate`` ("Generate Text"): text written by the language model a CLIP holds.

The CLIP is one that CLIPLoader loads from a language-model text encoder: Qwen3 (Z-Image's
``qwen_3_4b``, type ``lumina2``), Qwen2.5-VL (Qwen-Image's, type ``qwen_image``; with an ``image``),
Gemma 2 (Lumina 2's, type ``lumina2``) or LTX-2's Gemma 3 (a CLIP of family ``ltx2`` whose model holds
the language model as ``.gemma``), or a Qwen 3.5 file under any type (FLUX.3's and Qwen-Image 2.1's prompt
upsamplers, :mod:`nodegraph_nodes.dit.qwen35_text`; with an ``image`` when the file has its vision tower).
Other CLIPs are refused with an error naming the input.
``TextGenerateLTX2Prompt`` ("Generate LTX2 Prompt") is the same with LTX-2's prompt-enhancer turn.

What it does (ComfyUI's facts, ``comfy_extras/nodes_textgen.py`` and ``comfy/text_encoders/llama.py``):

* **Prompt**: with ``use_default_template`` the prompt goes into the model's chat turn (Qwen:
  ``<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n``, a ``system_prompt`` as a system turn
  before it, an image as ``<|vision_start|><|image_pad|><|vision_end|>`` before the text; Qwen3 without
  ``thinking`` gets the empty ``<think>\\n\\n</think>\\n\\n`` block its chat template writes for
  ``enable_thinking=False``, Qwen 3.5 ComfyUI's ``<think>\\n</think>\\n`` (a Qwen 3.5 prompt that starts with
  ``<|im_start|>`` is taken as written); Gemma: ``<start_of_turn>user\\n…<end_of_turn>\\n<start_of_turn>model\\n``,
  a system prompt first in the user turn); without it the prompt is tokenized as written. Gemma's
  ``<bos>`` always comes first.
* **Decoding**: up to ``max_length`` new tokens; it stops after a stop token (Qwen ``<|im_end|>`` /
  ``<|endoftext|>``, Gemma ``<eos>`` / ``<end_of_turn>``). ``sampling_mode`` ``off`` is greedy;
  ``on`` samples with ComfyUI's recipe, in this order: repetition penalty (divide positive logits,
  multiply negative ones) and presence penalty (subtract) on the tokens generated so far, temperature,
  top-k (sampling among the k best), min-p (drop tokens below ``min_p`` × the best one's probability),
  top-p (keep the smallest set whose cumulative probability exceeds ``top_p``), then one
  ``torch.multinomial`` draw from a generator seeded with ``seed``. Temperature 0 is greedy; greedy
  ignores the penalties (as ComfyUI).
* **Output**: the new tokens decoded without special tokens; the text after ``</think>`` is
  ``generated_text`` and the reasoning before it ``thinking`` (empty when the model did not think).

The output projection ("LM head"): a file's ``lm_head.weight`` when it has one; text-encoder files often
leave it out, and then the token embeddings are used where the released model ties them (Qwen3 up to
4B, Qwen2.5-VL 3B, Gemma 2 and 3). A file without a head whose release does not tie (Qwen3 8B, Qwen2.5-VL 7B)
is refused with an error — stricter than ComfyUI, which samples from the embeddings regardless. ComfyUI
also uses the embeddings for Qwen2.5-VL when the file has a head (its model has none); nodegraph uses the
file's head (the model's own output layer, as transformers), so Qwen2.5-VL 7B text differs from ComfyUI's.
Images for Qwen2.5-VL are prepared by transformers' Qwen2-VL image processor (as TextEncodeQwenImageEdit);
ComfyUI resizes with its own code, so pixel-level inputs may differ slightly.

Not supported (clear errors): ``video`` and ``audio`` inputs, images with a text-only model. ``mtp``
(speculative decoding with a checkpoint's multi-token-prediction head) is accepted and has no effect:
these files have no MTP weights, so the output is the same as ComfyUI's without MTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import CLIP, IMAGE

NODE = "TextGenerate"
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "presence_penalty")
#: What ComfyUI's sampler uses when ``sampling_mode`` is ``off`` (its ``.get`` defaults).
OFF_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0,
                "seed": None, "presence_penalty": 0.0}
#: Largest hidden width of a released model of the kind that ties its LM head to the embeddings.
TIED_UP_TO = {"qwen3": 2560, "qwen25vl": 2048, "gemma2": 1 << 30, "gemma3": 1 << 30}
STOP_TOKENS = {"qwen3": ("<|im_end|>", "<|endoftext|>"), "qwen25vl": ("<|im_end|>", "<|endoftext|>"),
               "qwen35": ("<|im_end|>", "<|endoftext|>"),
               "gemma2": ("<eos>", "<end_of_turn>"), "gemma3": ("<eos>", "<end_of_turn>")}
MTP_CHOICES = ["auto", "off", "2", "3", "4", "5"]


class GenerationError(ValueError):
    """A TextGenerate input that cannot be used, named in the message."""


# -- sampling (ComfyUI's recipe) ----------------------------------------------------------------------

def next_token(logits: torch.Tensor, generated: list[int], *, do_sample: bool, temperature: float, top_k: int,
               top_p: float, min_p: float, repetition_penalty: float, presence_penalty: float,
               generator: torch.Generator | None) -> int:
    """The next token id from ``logits`` (``[vocab]``, one sequence) by ComfyUI's rule (module docstring)."""
    if not do_sample or temperature == 0.0:
        return int(torch.argmax(logits))
    logits = logits.float().clone().unsqueeze(0)
    if generated and (repetition_penalty != 1.0 or presence_penalty != 0.0):
        ids = torch.tensor(sorted(set(generated)), device=logits.device)
        picked = logits[:, ids]
        if repetition_penalty != 1.0:
            picked = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
        logits[:, ids] = picked - presence_penalty
    if temperature != 1.0:
        logits = logits / temperature
    indices = None
    if top_k > 0:
        logits, indices = torch.topk(logits, min(top_k, logits.shape[-1]))
    low = torch.finfo(logits.dtype).min
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, low)
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        drop_sorted = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1) > top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
        logits = logits.masked_fill(drop, low)
    choice = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)
    if indices is not None:
        choice = indices.gather(1, choice)
    return int(choice)


class _ComfySampler:
    """A transformers logits processor that makes the choice itself (``next_token``) and leaves only
    that token possible, so greedy decoding in ``generate`` takes it."""

    def __init__(self, prompt_len: int, settings: dict, generator: torch.Generator | None):
        self.prompt_len, self.settings, self.generator = prompt_len, settings, generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[0, self.prompt_len:].tolist()
        token = next_token(scores[0], generated, generator=self.generator, **self.settings)
        out = torch.full_like(scores, float("-inf"))
        out[:, token] = 0.0
        return out


# -- the model behind a CLIP --------------------------------------------------------------------------

def clip_kind(clip, node: str = NODE) -> str:
    """``qwen3``, ``qwen25vl``, ``qwen35``, ``gemma2`` or ``gemma3`` for a CLIP TextGenerate can use; an error
    otherwise."""
    from nodegraph_nodes.dit.llm_text import LlmClip
    from nodegraph_nodes.dit.lumina2 import Lumina2Clip
    from nodegraph_nodes.dit.qwen35_text import Qwen35Clip

    if isinstance(clip, Qwen35Clip):
        return "qwen35"

    if isinstance(clip, LlmClip):
        return "qwen25vl" if clip.family == "qwen_image" else "qwen3"
    if isinstance(clip, Lumina2Clip):
        return "gemma2"
    if getattr(clip, "family", None) == "ltx2" and hasattr(clip, "handle") and hasattr(clip, "tokenizer"):
        return "gemma3"  # LTX-2's Gemma 3 (nodegraph_nodes.dit.ltx2; its model holds it as .gemma)
    what = clip.describe() if hasattr(clip, "describe") else type(clip).__name__
    raise GenerationError(f"{node}.clip: {what} cannot generate text; {node} takes a language-model text "
                          "encoder loaded by CLIPLoader (Qwen3: type lumina2; Qwen2.5-VL: type qwen_image; "
                          "Gemma 2: type lumina2; Qwen 3.5: any type) or LTX-2's Gemma 3")


def _file_head(source: str, kind: str, hidden: int) -> torch.Tensor | None:
    """The file's own ``lm_head.weight`` (``None``: the release ties it to the embeddings); an error when
    the file has none and the release does not tie."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".safetensors", ".sft"):
        from nodegraph_nodes.diffusion.quantized import read_safetensors

        head = read_safetensors(path, want=lambda k: k == "lm_head.weight").get("lm_head.weight")  # dequantised
        if head is not None:
            return head
    if hidden <= TIED_UP_TO[kind]:
        return None
    raise GenerationError(
        f"{NODE}.clip: {path.name} holds no LM head (lm_head.weight) and this model (hidden width {hidden}) does "
        "not tie it to the token embeddings, so it cannot generate text; use a file that includes lm_head "
        "(the text-encoder-only repackaged files leave it out)")


def _causal_lm(module, kind: str, source: str, device):
    """A transformers causal LM over the CLIP's loaded ``module`` (no weights copied)."""
    if kind == "qwen35":  # already Qwen3_5ForCausalLM with its head (nodegraph_nodes.dit.qwen35_text)
        return module
    if kind == "qwen25vl":
        hidden = int(module.config.text_config.hidden_size)
        if Path(source).is_file():
            from nodegraph_nodes.dit.loading import file_keys

            if "lm_head.weight" not in file_keys(Path(source), False) and hidden > TIED_UP_TO[kind]:
                _file_head(source, kind, hidden)  # raises the missing-head error
        return module
    from accelerate import init_empty_weights
    from transformers import Gemma2ForCausalLM, Gemma3ForCausalLM, Qwen3ForCausalLM

    cls = {"qwen3": Qwen3ForCausalLM, "gemma2": Gemma2ForCausalLM, "gemma3": Gemma3ForCausalLM}[kind]
    module = getattr(module, "gemma", module)  # LTX-2's text stack: the language model and its connectors
    embed = module.get_input_embeddings().weight
    head = _file_head(source, kind, int(embed.shape[1])) if source and Path(source).is_file() else None
    if head is None and source and Path(source).is_dir() and not getattr(module.config, "tie_word_embeddings", True):
        raise GenerationError(f"{NODE}.clip: this diffusers folder's text encoder does not tie its LM head and "
                              "holds none; it cannot generate text")
    with init_empty_weights():
        lm = cls(module.config)
    lm.model = module
    weight = embed if head is None else torch.nn.Parameter(head.to(device=embed.device, dtype=embed.dtype),
                                                            requires_grad=False)
    lm.lm_head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lm.lm_head.weight = weight
    return lm.eval()


# -- prompts ------------------------------------------------------------------------------------------

def chat_text(kind: str, prompt: str, *, system_prompt: str, thinking: bool, image: bool,
              use_default_template: bool) -> str:
    """The text the model reads (module docstring)."""
    if not use_default_template or (kind == "qwen35" and prompt.startswith("<|im_start|>")):
        return prompt
    if kind in ("gemma2", "gemma3"):
        system = f"{system_prompt}\n\n" if system_prompt else ""
        return f"<start_of_turn>user\n{system}{prompt}<end_of_turn>\n<start_of_turn>model\n"
    text = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
    vision = "<|vision_start|><|image_pad|><|vision_end|>" if image else ""
    text += f"<|im_start|>user\n{vision}{prompt}<|im_end|>\n<|im_start|>assistant\n"
    if kind == "qwen3" and not thinking:
        text += "<think>\n\n</think>\n\n"
    if kind == "qwen35" and not thinking:
        text += "<think>\n</think>\n"  # ComfyUI's Qwen 3.5 turn (one newline each, not the chat template's two)
    return text


def split_thinking(generated: str, prompt: str) -> tuple[str, str]:
    """``(text, reasoning)``: ComfyUI's split at the first ``</think>`` when the output (or a raw prompt)
    opened a reasoning block; otherwise all text, no reasoning."""
    reasoning, _, text = generated.partition("</think>")
    if not reasoning.lstrip().startswith("<think>") and not prompt.rstrip().endswith("<think>"):
        reasoning, text = "", generated
    return text.strip(), reasoning.replace("<think>", "", 1).strip()


def generate_text(ctx, clip, prompt: str, *, max_length: int, settings: dict, image: torch.Tensor | None = None,
                  system_prompt: str = "", thinking: bool = False, use_default_template: bool = True,
                  node: str = NODE) -> str:
    """The decoded new tokens (special tokens dropped) for ``prompt``; ``settings``: ``do_sample`` and
    ComfyUI's sampling fields."""
    from transformers import GenerationConfig, LogitsProcessorList

    from nodegraph_nodes.dit.llm_text import to_pil, vision_inputs

    kind = clip_kind(clip, node)
    if image is not None and kind not in ("qwen25vl", "qwen35"):
        raise GenerationError(f"{node}.image: {clip.describe()} reads text only here; images need a Qwen2.5-VL "
                              "encoder (CLIPLoader type qwen_image) or a Qwen 3.5 file with its vision tower")
    tokenizer = clip.tokenizer
    text = chat_text(kind, prompt, system_prompt=system_prompt, thinking=thinking, image=image is not None,
                     use_default_template=use_default_template)
    stops = [t for t in (tokenizer.convert_tokens_to_ids(s) for s in STOP_TOKENS[kind])
             if isinstance(t, int) and t != tokenizer.unk_token_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(int(tokenizer.eos_token_id))
    extra: dict[str, Any] = {}
    manager = ctx.service("models")
    with manager.use(clip.handle, ctx.device) as module, torch.inference_mode():
        if image is not None:
            vision = getattr(module.config, "vision_config", None)
            if vision is None or not text.count("<|image_pad|>"):
                raise GenerationError(f"{node}.image: the prompt has no image place (<|image_pad|>) or the "
                                      "model no vision tower")
            pictures = [to_pil(i) for i in image] if image.ndim == 4 else [to_pil(image)]
            if len(pictures) > 1:  # a batch: one place per picture, in order
                text = text.replace("<|vision_start|><|image_pad|><|vision_end|>",
                                    "<|vision_start|><|image_pad|><|vision_end|>" * len(pictures), 1)
            if kind == "qwen35":  # Qwen3-VL's image settings (nodegraph_nodes.dit.qwen35_text)
                from nodegraph_nodes.dit.qwen35_text import vision_inputs as qwen35_vision_inputs

                inputs = qwen35_vision_inputs(tokenizer, vision, text, pictures)
            else:
                inputs = vision_inputs(tokenizer, vision, text, pictures)
            dtype = next(module.parameters()).dtype
            ids = inputs["input_ids"].to(ctx.device)
            extra = {"pixel_values": inputs["pixel_values"].to(ctx.device, dtype),
                     "image_grid_thw": inputs["image_grid_thw"].to(ctx.device)}
        else:
            gemma = kind in ("gemma2", "gemma3")
            bos = [int(tokenizer.bos_token_id)] if gemma and tokenizer.bos_token_id is not None else []
            ids = torch.tensor([bos + tokenizer(text, add_special_tokens=False)["input_ids"]], device=ctx.device)
        if ids.shape[1] == 0:
            raise GenerationError(f"{node}.prompt: the prompt is empty and no template is used; there is nothing "
                                  "to continue")
        lm = _causal_lm(module, kind, clip.source, ctx.device)
        seed = settings.get("seed")
        generator = None
        if settings["do_sample"]:
            generator = torch.Generator(device=ids.device)
            generator.manual_seed(int(seed) if seed is not None else 0)
        sampler = _ComfySampler(ids.shape[1], {k: settings[k] for k in (
            "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty")},
            generator)
        config = GenerationConfig(max_new_tokens=int(max_length), do_sample=False, num_beams=1, eos_token_id=stops,
                                  pad_token_id=stops[0] if stops else 0)
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                          logits_processor=LogitsProcessorList([sampler]), **extra)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


def _sampling_settings(sampling_mode: str, fields: dict) -> dict:
    if sampling_mode not in ("on", "off"):
        raise GenerationError(f"{NODE}.sampling_mode: {sampling_mode!r} is not one of 'on', 'off'")
    values = dict(OFF_DEFAULTS)
    if sampling_mode == "on":
        defaults = {k: INPUTS_DEFAULTS[k] for k in SAMPLING_FIELDS}
        values.update({k: (fields.get(f"sampling_mode.{k}") if fields.get(f"sampling_mode.{k}") is not None
                           else defaults[k]) for k in SAMPLING_FIELDS})
    values["do_sample"] = sampling_mode == "on"
    return values


INPUTS_DEFAULTS = {"temperature": 0.7, "top_k": 64, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.05,
                   "seed": 0, "presence_penalty": 0.0}


class TextGenerate(Node):
    """Generate text with the language model of a CLIP (Qwen3, Qwen2.5-VL with an image, Gemma 2): the
    prompt in the model's chat template, greedy or sampled decoding with ComfyUI's sampler. Stricter than
    ComfyUI: a file without an LM head whose model does not tie it is refused; video and audio inputs
    are refused (not supported); ``mtp`` has no effect."""

    category = "text"
    display_name = "Generate Text"
    dynamic_combos = {"sampling_mode": {"on": tuple(f"sampling_mode.{f}" for f in SAMPLING_FIELDS), "off": ()}}
    clip = Input(CLIP)
    prompt = Input(STRING, multiline=True, dynamic_prompts=True, default="")
    image = Input(IMAGE, optional=True)
    video = Input(IMAGE, optional=True, tooltip="Video frames as image batch (not supported by nodegraph).")
    audio = Input("AUDIO", optional=True, tooltip="Not supported by nodegraph.")
    max_length = Input(INT, default=512, min=1, max=32768)
    sampling_mode = Input(COMBO, choices=["on", "off"])
    vars().update({
        "sampling_mode.temperature": Input(FLOAT, default=0.7, min=0.01, max=2.0, step=0.000001, optional=True),
        "sampling_mode.top_k": Input(INT, default=64, min=0, max=1000, optional=True),
        "sampling_mode.top_p": Input(FLOAT, default=0.95, min=0.0, max=1.0, step=0.01, optional=True),
        "sampling_mode.min_p": Input(FLOAT, default=0.05, min=0.0, max=1.0, step=0.01, optional=True),
        "sampling_mode.repetition_penalty": Input(FLOAT, default=1.05, min=0.0, max=5.0, step=0.01, optional=True),
        "sampling_mode.seed": Input(INT, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True),
        "sampling_mode.presence_penalty": Input(FLOAT, default=0.0, min=0.0, max=5.0, step=0.01, optional=True),
    })
    thinking = Input(BOOLEAN, default=False, optional=True,
                     tooltip="Operate in thinking mode if the model supports it.")
    use_default_template = Input(BOOLEAN, default=True, optional=True,
                                 tooltip="Use the built in system prompt/template if the model has one.")
    mtp = Input(COMBO, choices=MTP_CHOICES, default="auto", optional=True,
                tooltip="Speculative decoding with a multi-token-prediction head: no effect here (no MTP weights).")
    system_prompt = Input(STRING, force_input=True, optional=True,
                          tooltip="Replaces the system prompt in the model's chat template. Ignored when the "
                                  "default template is not used.")
    outputs = (Output(STRING, "generated_text"), Output(STRING, "thinking"))

    def execute(self, clip, prompt: str, max_length: int, sampling_mode: str, image=None, video=None, audio=None,
                thinking: bool = False, use_default_template: bool = True, mtp: str = "auto",
                system_prompt: str | None = None, **fields: Any) -> tuple:
        settings = self._checked(sampling_mode, fields, image, video, audio, mtp)
        out = generate_text(self.ctx, clip, prompt, max_length=max_length, settings=settings, image=image,
                            system_prompt=(system_prompt or "") if use_default_template else "",
                            thinking=bool(thinking), use_default_template=bool(use_default_template),
                            node=type(self).__name__)
        return split_thinking(out, prompt)

    def _checked(self, sampling_mode: str, fields: dict, image, video, audio, mtp: str) -> dict:
        node = type(self).__name__
        if video is not None:
            raise GenerationError(f"{node}.video: video input is not supported by nodegraph yet")
        if audio is not None:
            raise GenerationError(f"{node}.audio: audio input is not supported by nodegraph yet")
        if mtp not in MTP_CHOICES:
            raise GenerationError(f"{node}.mtp: {mtp!r} is not one of {', '.join(MTP_CHOICES)}")
        if isinstance(image, torch.Tensor) and image.ndim not in (3, 4):
            raise GenerationError(f"{node}.image: expected an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
        return _sampling_settings(sampling_mode, fields)


#: LTX-2's prompt-enhancer instructions, in nodegraph's own words (ComfyUI's wording is GPL text and not
#: copied): expand a short request into one detailed paragraph for a video model, with sound.
LTX2_T2V_SYSTEM = (
    "You turn a user's short request into a detailed prompt for a text-to-video model that also makes sound. "
    "Keep everything the user asked for (style, subjects, actions, camera, sound) and add concrete visual "
    "detail where the request is vague: setting, lighting, materials, clothing, expressions. Describe the "
    "action in the present progressive, in the order it happens, and weave the soundscape (ambience, effects, "
    "speech in quotes with the voice described, music when asked) into that order. Use plain, restrained "
    "words, describe only what is seen and heard, invent no camera moves, cuts or dialogue the user did not "
    "ask for. Answer with a single paragraph of English prose, no headings or lists; if the request cannot "
    "be used, answer with it unchanged.")
LTX2_I2V_SYSTEM = (
    "You write a prompt for an image-to-video model that also makes sound. The image is the first frame; "
    "the user's short request says what should happen. Describe what changes from that frame, in the order "
    "it happens, in the present progressive, keeping every motion, camera move, sound and line of speech "
    "the user asked for and staying consistent with the image. Weave the soundscape (ambience, effects, "
    "speech in quotes with the voice described, music when asked) into the action. Use plain, restrained "
    "words, describe only what is seen and heard, invent no camera moves, cuts or dialogue the user did not "
    "ask for. Answer with a single paragraph of English prose, no headings or lists; if the request cannot "
    "be used, answer with it unchanged.")


def ltx2_prompt(prompt: str, system_prompt: str = "", image: bool = False) -> str:
    """The turn ComfyUI's TextGenerateLTX2Prompt writes for Gemma 3 (system turn, the user's request after
    ``User Raw Input Prompt:``, an image token first when an image is given, the model turn opened)."""
    system = system_prompt.strip() or (LTX2_I2V_SYSTEM if image else LTX2_T2V_SYSTEM)
    media = "\n<image_soft_token>\n" if image else ""
    return (f"<start_of_turn>system\n{system}<end_of_turn>\n"
            f"<start_of_turn>user\n{media}\nUser Raw Input Prompt: {prompt}.<end_of_turn>\n"
            f"<start_of_turn>model\n")


class TextGenerateLTX2Prompt(TextGenerate):
    """LTX-2's prompt enhancer: TextGenerate with the request wrapped in a Gemma turn that asks for a
    detailed video-and-sound prompt; an empty answer gives back the prompt. Differs from ComfyUI: the
    default instructions are nodegraph's own wording (give ``system_prompt`` for others), so sampled text
    differs from ComfyUI's; images are refused (LTX-2's Gemma 3 is loaded without its vision tower)."""

    display_name = "Generate LTX2 Prompt"

    def execute(self, clip, prompt: str, max_length: int, sampling_mode: str, image=None, video=None, audio=None,
                thinking: bool = False, use_default_template: bool = True, mtp: str = "auto",
                system_prompt: str | None = None, **fields: Any) -> tuple:
        settings = self._checked(sampling_mode, fields, image, video, audio, mtp)
        text = ltx2_prompt(prompt, system_prompt or "", image is not None)
        out = generate_text(self.ctx, clip, text, max_length=max_length, settings=settings, image=image,
                            thinking=bool(thinking), use_default_template=False, node=type(self).__name__)
        answer, reasoning = split_thinking(out, text)
        return answer or prompt, reasoning
