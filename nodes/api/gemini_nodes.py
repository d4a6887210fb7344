"""ComfyUI's Gemini API nodes: GeminiNodeV2 ("Google Gemini": text from a prompt and optional media) and
GeminiInputFiles (text/PDF files from the input folder for its ``files`` input).

GeminiNodeV2's ``model`` is a DynamicCombo (comfyui-embedded-docs GeminiNodeV2): each model shows
``model.thinking_level`` and ``model.max_output_tokens``, all but Gemini 3.8 Flash also
``model.temperature`` and ``model.top_p``, and every model the sockets ``model.images.image_1`` …
``image_16``, ``model.audio.audio_1``, ``model.video.video_1`` and ``model.files``. They are declared
flat, the widgets as required inputs with defaults (so a prompt that leaves out an option's widget gets
its default, and the canvas's widget order is ComfyUI's), the sockets optional. The request itself is
:mod:`.gemini`'s; it goes through :mod:`.comfy_org`, which refuses to send anything without the prompt's
Comfy.org credentials.

Stricter than ComfyUI: a thinking level the chosen model does not offer is a validation error (ComfyUI's
canvas cannot produce one; an API prompt can); an empty answer cut off by ``max_output_tokens`` also
warns to raise it. ComfyUI's chat-history widget event is not sent.
"""

from __future__ import annotations

from typing import Any

from nodegraph.context import Paths
from nodegraph.node import COMBO, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import IMAGE
from nodegraph.user_files import resolve_annotated

from .comfy_org import ComfyOrgClient
from .gemini import (EMPTY_ANSWER, GEMINI_PATH, MODELS, SEED_MAX, THINKING_LEVELS, GeminiError, GeminiFile,
                     GenerationSettings, answer_text, audio_parts, check_inline_size, file_parts, image_parts,
                     request_body, video_parts)

FILES_TYPE = "GEMINI_INPUT_FILES"
IMAGE_SLOTS = tuple(f"model.images.image_{i}" for i in range(1, 17))
AUDIO_SLOT, VIDEO_SLOT, FILES_SLOT = "model.audio.audio_1", "model.video.video_1", "model.files"
SOCKETS = (*IMAGE_SLOTS, AUDIO_SLOT, VIDEO_SLOT, FILES_SLOT)
#: the largest file GeminiInputFiles lists (ComfyUI's limit)
MAX_INPUT_FILE = 20 * 1024 * 1024
INPUT_FILE_TYPES = {".txt": "text/plain", ".pdf": "application/pdf"}


def _option_inputs(sampling: bool) -> tuple[str, ...]:
    widgets = (("model.thinking_level", "model.temperature", "model.top_p", "model.max_output_tokens") if sampling
               else ("model.thinking_level", "model.max_output_tokens"))
    return (*SOCKETS, *widgets)


class GeminiNodeV2(Node):
    """Generate text with Google's Gemini models through Comfy.org's API (a paid API node: it needs the
    prompt's Comfy.org credentials and sends the prompt and any attached media to Comfy.org)."""

    category = "partner/text/Gemini"
    display_name = "Google Gemini"
    description = ("Generate text responses with Google's Gemini models. Provide a text prompt and, optionally, "
                   "one or more images, audio clips, videos, or files as multimodal context.")
    deprecated = True  # as in ComfyUI, where GeminiNodeV3 supersedes it; saved workflows keep working
    api_node = True
    dynamic_combos = {"model": {label: _option_inputs(m.sampling) for label, m in MODELS.items()}}
    prompt = Input(STRING, multiline=True, default="",
                   tooltip="Text input to the model. Include detailed instructions, questions, or context.")
    model = Input(COMBO, choices=list(MODELS), tooltip="The Gemini model used to generate the response.")
    vars().update({
        "model.thinking_level": Input(COMBO, choices=list(THINKING_LEVELS), default="MEDIUM",
                                      tooltip="How hard the model reasons before answering (the levels depend on "
                                              "the model). HIGH improves quality on difficult tasks but costs more "
                                              "(thinking) tokens and is slower."),
        "model.temperature": Input(FLOAT, default=1.0, min=0.0, max=2.0, step=0.01,
                                   tooltip="Controls randomness (not shown for Gemini 3.8 Flash)."),
        "model.top_p": Input(FLOAT, default=0.95, min=0.0, max=1.0, step=0.01,
                             tooltip="Nucleus sampling (not shown for Gemini 3.8 Flash)."),
        "model.max_output_tokens": Input(INT, default=32768, min=16, max=65536,
                                         tooltip="Maximum tokens to generate, including the model's thinking."),
    })
    seed = Input(INT, default=42, min=0, max=SEED_MAX, control_after_generate=True,
                 tooltip="Seed for sampling. Set to 0 for a random seed. Deterministic output isn't guaranteed.")
    system_prompt = Input(STRING, multiline=True, default="", optional=True,
                          tooltip="Foundational instructions that dictate the model's behavior.")
    vars().update({name: Input(IMAGE, optional=True, tooltip="Optional image(s) to use as context (up to 16).")
                   for name in IMAGE_SLOTS})
    vars().update({
        AUDIO_SLOT: Input("AUDIO", optional=True, tooltip="Optional audio clip to use as context for the model."),
        VIDEO_SLOT: Input("VIDEO", optional=True, tooltip="Optional video clip to use as context for the model."),
        FILES_SLOT: Input(FILES_TYPE, optional=True,
                          tooltip="Optional file(s) to use as context: the output of Gemini Input Files."),
    })
    outputs = (Output(STRING),)

    @classmethod
    def validate_inputs(cls, **constants: Any) -> bool | str:
        model = MODELS.get(constants.get("model"))  # type: ignore[arg-type]
        level = constants.get("model.thinking_level")
        if model is not None and level is not None and level not in model.thinking_levels:
            return (f"input 'model.thinking_level' is {level!r}, which {model.label} does not offer; use one of "
                    f"{', '.join(model.thinking_levels)}")
        prompt = constants.get("prompt")
        if isinstance(prompt, str) and not prompt.strip():
            return "input 'prompt' is empty; it must contain at least one non-whitespace character"
        return True

    def execute(self, prompt: str, model: str, seed: int, system_prompt: str = "", **fields: Any) -> tuple:
        node = f"GeminiNodeV2 (node {self.ctx.display_node})"
        chosen = MODELS.get(model)
        if chosen is None:
            raise GeminiError(f"{node}: input 'model' is {model!r}; use one of {', '.join(MODELS)}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise GeminiError(f"{node}: input 'prompt' is empty; it must contain at least one non-whitespace "
                              "character")
        settings = self._settings(node, chosen, fields)
        seed = int(seed)
        if not 0 <= seed <= SEED_MAX:
            raise GeminiError(f"{node}: input 'seed' is {seed}; use 0 (random) … {SEED_MAX}")
        client = ComfyOrgClient.for_node(self.ctx, node)  # no credentials: fails here, before any encoding
        media = self._media_parts(node, fields)
        body = request_body(prompt, media, settings, seed, system_prompt or None)
        answer = answer_text(client.post_json(GEMINI_PATH.format(model_id=chosen.model_id), body), node)
        if not answer.text and "MAX_TOKENS" in answer.finish_reasons:
            self.ctx.warn(f"Gemini stopped at max_output_tokens ({settings.max_output_tokens}) before answering; "
                          "raise model.max_output_tokens or lower model.thinking_level")
        return (answer.text or EMPTY_ANSWER,)

    @staticmethod
    def _settings(node: str, chosen: Any, fields: dict[str, Any]) -> GenerationSettings:
        level = fields.get("model.thinking_level") or chosen.thinking_default
        if level not in chosen.thinking_levels:
            raise GeminiError(f"{node}: input 'model.thinking_level' is {level!r}, which {chosen.label} does not "
                              f"offer; use one of {', '.join(chosen.thinking_levels)}")
        tokens = fields.get("model.max_output_tokens")
        sampling = {}
        if chosen.sampling:
            temperature, top_p = fields.get("model.temperature"), fields.get("model.top_p")
            sampling = {"temperature": float(1.0 if temperature is None else temperature),
                        "top_p": float(0.95 if top_p is None else top_p)}
        return GenerationSettings(level, int(32768 if tokens is None else tokens), **sampling)

    @staticmethod
    def _media_parts(node: str, fields: dict[str, Any]) -> list[dict[str, Any]]:
        """Videos, then audio, then images, then files (ComfyUI's order), checked against the inline cap."""
        present = lambda names: [(n, fields[n]) for n in names if fields.get(n) is not None]  # noqa: E731
        parts = (video_parts(present([VIDEO_SLOT]), node) + audio_parts(present([AUDIO_SLOT]), node)
                 + image_parts(present(IMAGE_SLOTS), node) + file_parts(fields.get(FILES_SLOT), node, FILES_SLOT))
        check_inline_size(parts, node)
        return parts


def list_input_files(paths: Paths) -> list[str]:
    """Text and PDF files under 20 MB at the top level of the input folder, sorted (GeminiInputFiles' choices)."""
    try:
        return sorted(p.name for p in paths.input_dir.iterdir()
                      if p.is_file() and p.suffix.lower() in INPUT_FILE_TYPES and p.stat().st_size < MAX_INPUT_FILE)
    except OSError:
        return []


class GeminiInputFiles(Node):
    """Loads a text (.txt) or PDF (.pdf) file from the input folder for a Gemini node's ``files`` input;
    chain several to send several files."""

    category = "partner/text/Gemini"
    display_name = "Gemini Input Files"
    file = Input(COMBO, choices=list_input_files,
                 tooltip="Input file to include as context for the model: a .txt or .pdf file under 20 MB.")
    GEMINI_INPUT_FILES = Input(FILES_TYPE, optional=True,
                               tooltip="Files from another Gemini Input Files node, sent after this one.")
    outputs = (Output(FILES_TYPE),)

    @classmethod
    def validate_inputs(cls, file: str, paths: Paths) -> bool | str:
        try:
            path = resolve_annotated(str(file), paths)
        except ValueError as exc:
            return f"Invalid file: {exc}"
        if path.suffix.lower() not in INPUT_FILE_TYPES:
            return f"Invalid file: {file} is not a .txt or .pdf file"
        if not path.is_file():
            return f"Invalid file: {file} (not found in {path.parent})"
        if path.stat().st_size >= MAX_INPUT_FILE:
            return f"Invalid file: {file} is 20 MB or larger"
        return True

    @classmethod
    def fingerprint(cls, paths: Paths, file: str | None = None, **_: Any) -> Any:
        from nodegraph_nodes.media.video_nodes import input_file_fingerprint

        return input_file_fingerprint(paths, file)

    def execute(self, file: str, GEMINI_INPUT_FILES: list | None = None) -> tuple:  # noqa: N803 (ComfyUI's name)
        path = resolve_annotated(str(file), self.ctx.paths)
        if not path.is_file():
            raise FileNotFoundError(f"GeminiInputFiles: input 'file': {file!r} does not exist in the input folder "
                                    f"({self.ctx.paths.input_dir})")
        this = GeminiFile(path.name, INPUT_FILE_TYPES[path.suffix.lower()], path.read_bytes())
        return ([this, *(GEMINI_INPUT_FILES or [])],)
