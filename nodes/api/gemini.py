"""Google Gemini through Comfy.org's proxy: the model table, the generateContent request, the answer's text.

Facts from ComfyUI's API nodes (``comfy_api_nodes/nodes_gemini.py``, newer than the pinned commit; code
not copied): the request is ``POST /proxy/vertexai/gemini/<model id>`` with a body in Gemini's
``generateContent`` format —

    {"contents": [{"role": "user", "parts": [{"text": prompt}, {"inlineData": {"mimeType", "data"}}, …]}],
     "generationConfig": {"temperature", "topP", "maxOutputTokens", "seed", "thinkingConfig": {"thinkingLevel"}},
     "systemInstruction": {"parts": [{"text": system_prompt}]}}

(``seed`` left out for 0 = random; ``systemInstruction`` only with a system prompt; models without
sampling controls get no ``temperature``/``topP``). Media parts come after the prompt: videos (MP4/H.264),
then audio clips (MP3, one per batch item), then images (PNG, one per batch item), then the files of
GeminiInputFiles (text or PDF). The answer's text is every non-empty ``text`` part of every candidate,
joined by newlines; no candidates with a ``promptFeedback.blockReason`` means the request was blocked.

Deviation: ComfyUI uploads the first 10 media items to Comfy.org's storage and sends URLs; here every item
is sent inline (base64) and the inline total is capped at ComfyUI's 18 MB, over which the node fails
before sending anything.
"""

from __future__ import annotations

import base64
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

GEMINI_PATH = "/proxy/vertexai/gemini/{model_id}"
#: ComfyUI's cap on inline media (bytes of base64 text)
MAX_INLINE_BYTES = 18 * 1024 * 1024
EMPTY_ANSWER = "Empty response from Gemini model..."
SEED_MAX = 2147483647


class GeminiError(ValueError):
    """A request that cannot be built, or an answer that cannot be read (the message names the node)."""


@dataclass(frozen=True)
class GeminiModel:
    """One choice of GeminiNodeV2's ``model``: its API id and the inputs its option shows."""

    label: str
    model_id: str
    thinking_levels: tuple[str, ...]
    thinking_default: str
    #: whether the option shows temperature and top_p
    sampling: bool = True


#: GeminiNodeV2's model choices in ComfyUI's order (comfyui-embedded-docs GeminiNodeV2). The ids of 3.5 Flash,
#: 3.1 Pro and 3.1 Flash-Lite are ComfyUI's table; 3.7 and 3.8 Flash are Google's ids of those models.
MODELS: dict[str, GeminiModel] = {m.label: m for m in (
    GeminiModel("Gemini 3.8 Flash", "gemini-3.8-flash", ("LOW", "MEDIUM", "HIGH"), "MEDIUM", sampling=False),
    GeminiModel("Gemini 3.7 Flash", "gemini-3.7-flash", ("LOW", "MEDIUM", "HIGH"), "MEDIUM"),
    GeminiModel("Gemini 3.5 Flash", "gemini-3.5-flash", ("MINIMAL", "LOW", "MEDIUM", "HIGH"), "MEDIUM"),
    GeminiModel("Gemini 3.1 Pro", "gemini-3.1-pro-preview", ("LOW", "HIGH"), "HIGH"),
    GeminiModel("Gemini 3.1 Flash-Lite", "gemini-3.1-flash-lite-preview", ("LOW", "HIGH"), "LOW"),
)}
THINKING_LEVELS = ("MINIMAL", "LOW", "MEDIUM", "HIGH")


@dataclass(frozen=True)
class GenerationSettings:
    """The option inputs of the chosen model, checked."""

    thinking_level: str
    max_output_tokens: int
    temperature: float | None = None
    top_p: float | None = None

    def config(self, seed: int) -> dict[str, Any]:
        """``generationConfig``: sampling controls only when the model shows them; ``seed`` unless 0."""
        config: dict[str, Any] = {}
        if self.temperature is not None:
            config["temperature"] = self.temperature
        if self.top_p is not None:
            config["topP"] = self.top_p
        config["maxOutputTokens"] = self.max_output_tokens
        if seed > 0:
            config["seed"] = seed
        config["thinkingConfig"] = {"thinkingLevel": self.thinking_level}
        return config


@dataclass(frozen=True)
class GeminiFile:
    """One file of a GEMINI_INPUT_FILES value (GeminiInputFiles): its name, MIME type and bytes."""

    name: str
    mime_type: str
    data: bytes

    def part(self) -> dict[str, Any]:
        return inline_part(self.mime_type, self.data)


def inline_part(mime_type: str, data: bytes) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime_type, "data": base64.b64encode(data).decode("ascii")}}


def request_body(prompt: str, media_parts: list[dict[str, Any]], settings: GenerationSettings, seed: int,
                 system_prompt: str | None) -> dict[str, Any]:
    """The generateContent body (see the module doc)."""
    body: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": prompt}, *media_parts]}],
        "generationConfig": settings.config(seed),
    }
    if system_prompt:
        body["systemInstruction"] = {"parts": [{"text": system_prompt}]}
    return body


# -- media → parts --------------------------------------------------------------------------------


def image_parts(images: Iterable[tuple[str, Any]], node: str) -> list[dict[str, Any]]:
    """One PNG part per batch item of each ``(input name, IMAGE)``."""
    parts = []
    for name, image in images:
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-1] not in (1, 3, 4):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise GeminiError(f"{node}: input '{name}' must be an IMAGE [B, H, W, C], got {shape}")
        for frame in (image if image.ndim == 4 else image.unsqueeze(0)):
            parts.append(inline_part("image/png", png_bytes(frame)))
    return parts


def png_bytes(frame: torch.Tensor) -> bytes:
    """A ``[H, W, C]`` float frame in 0..1 as PNG (values × 255, clamped, truncated as ComfyUI saves)."""
    array = np.clip(frame.detach().float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8)
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def audio_parts(clips: Iterable[tuple[str, Any]], node: str) -> list[dict[str, Any]]:
    """One MP3 part per batch item of each ``(input name, AUDIO)``."""
    from nodegraph_nodes.media.audio import check_audio
    from nodegraph_nodes.media.codec import MediaError, encode_audio

    parts = []
    for name, audio in clips:
        try:
            waveform, rate = check_audio(audio, node, name)
            for item in waveform:
                parts.append(inline_part("audio/mp3", encode_audio(item.detach().float().cpu(), rate, "mp3",
                                                                  None, None)))
        except (MediaError, TypeError, ValueError) as exc:
            raise GeminiError(str(exc) if str(exc).startswith(node) else f"{node}: input '{name}': {exc}") from None
    return parts


def video_parts(videos: Iterable[tuple[str, Any]], node: str) -> list[dict[str, Any]]:
    """One MP4 (H.264) part per ``(input name, VIDEO)``."""
    from nodegraph_nodes.media.codec import MediaError
    from nodegraph_nodes.media.video import Video

    parts = []
    for name, video in videos:
        if not isinstance(video, Video):
            raise GeminiError(f"{node}: input '{name}' must be a VIDEO, got {type(video).__name__}")
        with tempfile.TemporaryDirectory(prefix="nodegraph-gemini-") as folder:
            path = Path(folder) / "video.mp4"
            try:
                video.save_to(path, format="mp4", codec="h264")
            except (MediaError, ValueError) as exc:
                raise GeminiError(f"{node}: input '{name}': cannot encode it as MP4/H.264: {exc}") from None
            parts.append(inline_part("video/mp4", path.read_bytes()))
    return parts


def file_parts(files: Any, node: str, name: str) -> list[dict[str, Any]]:
    """The parts of a GEMINI_INPUT_FILES value: a list of :class:`GeminiFile` (or Gemini part dicts)."""
    if files is None:
        return []
    if not isinstance(files, (list, tuple)):
        raise GeminiError(f"{node}: input '{name}' must be GEMINI_INPUT_FILES (a list of files from Gemini Input "
                          f"Files), got {type(files).__name__}")
    parts = []
    for item in files:
        if isinstance(item, GeminiFile):
            parts.append(item.part())
        elif isinstance(item, dict) and ("inlineData" in item or "fileData" in item or "text" in item):
            parts.append(item)
        elif hasattr(item, "model_dump"):  # a pack's pydantic GeminiPart
            parts.append(item.model_dump(exclude_none=True))
        else:
            raise GeminiError(f"{node}: input '{name}' holds a {type(item).__name__}, not a Gemini file part")
    return parts


def check_inline_size(parts: list[dict[str, Any]], node: str) -> None:
    """Fail before sending when the inline media is over :data:`MAX_INLINE_BYTES`."""
    total = sum(len(p["inlineData"]["data"]) for p in parts if isinstance(p.get("inlineData"), dict))
    if total > MAX_INLINE_BYTES:
        raise GeminiError(f"{node}: the attached media is {total / 2**20:.1f} MB as base64, over the "
                          f"{MAX_INLINE_BYTES // 2**20} MB sent inline; attach fewer or smaller images, clips or "
                          "videos. Nothing was sent.")


# -- answer → text --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeminiAnswer:
    """The text of an answer and the finish reasons of its candidates."""

    text: str
    finish_reasons: tuple[str, ...]


def answer_text(body: dict[str, Any], node: str) -> GeminiAnswer:
    """Every non-empty, non-thought ``text`` part of every candidate, joined by newlines."""
    candidates = body.get("candidates")
    if not candidates:
        feedback = body.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            detail = feedback.get("blockReasonMessage")
            raise GeminiError(f"{node}: Gemini blocked the request: {feedback['blockReason']}"
                              + (f" ({detail})" if detail else ""))
        if candidates is None and "candidates" not in body:
            raise GeminiError(f"{node}: malformed answer from Gemini: no 'candidates' "
                              f"(keys: {', '.join(sorted(map(str, body))) or 'none'})")
        raise GeminiError(f"{node}: Gemini returned no response candidates")
    if not isinstance(candidates, list):
        raise GeminiError(f"{node}: malformed answer from Gemini: 'candidates' is a {type(candidates).__name__}, "
                          "not a list")
    texts: list[str] = []
    reasons: list[str] = []
    for i, candidate in enumerate(candidates):
        where = f"candidates[{i}]"
        if not isinstance(candidate, dict):
            raise GeminiError(f"{node}: malformed answer from Gemini: {where} is a {type(candidate).__name__}")
        if isinstance(candidate.get("finishReason"), str):
            reasons.append(candidate["finishReason"])
        content = candidate.get("content")
        if content is None:
            continue
        if not isinstance(content, dict):
            raise GeminiError(f"{node}: malformed answer from Gemini: {where}.content is a {type(content).__name__}")
        parts = content.get("parts")
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise GeminiError(f"{node}: malformed answer from Gemini: {where}.content.parts is a "
                              f"{type(parts).__name__}, not a list")
        for j, part in enumerate(parts):
            if not isinstance(part, dict):
                raise GeminiError(f"{node}: malformed answer from Gemini: {where}.content.parts[{j}] is a "
                                  f"{type(part).__name__}")
            text = part.get("text")
            if text is None or part.get("thought") is True:
                continue
            if not isinstance(text, str):
                raise GeminiError(f"{node}: malformed answer from Gemini: {where}.content.parts[{j}].text is a "
                                  f"{type(text).__name__}, not a string")
            if text:
                texts.append(text)
    return GeminiAnswer("\n".join(texts), tuple(reasons))
