"""ComfyUI's ACE-Step nodes: ``EmptyAceStepLatentAudio`` (1.0's ``[B, 8, 16, T]`` latent) and
``TextEncodeAceStepAudio`` (1.0's tags and lyrics, :mod:`.ace_step1`), ``EmptyAceStep1.5LatentAudio`` (a
``[B, 64, T]`` latent at 25 frames per second) and ``TextEncodeAceStepAudio1.5`` (caption, lyrics and metadata
through ACE-Step's Qwen3 encoder, :mod:`.ace_step`).

``generate_audio_codes`` samples the 5 Hz LM's audio codes (:mod:`.ace_step_lm`; the LM is DualCLIPLoader's second
file); without it the DiT's context is the silence latent.
"""

from __future__ import annotations

import math

import torch

from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, STRING, Input, Node, Output
from nodegraph.types import CLIP, CONDITIONING, LATENT

TIME_SIGNATURES = ["2", "3", "4", "6"]
LANGUAGES = ["ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr", "ht",
             "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro", "ru", "sa",
             "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown"]
KEYSCALES = [f"{root} {mode}" for mode in ("major", "minor")
             for root in ("C", "C#", "Db", "D", "D#", "Eb", "E", "F", "F#", "Gb", "G", "G#", "Ab", "A", "A#", "Bb",
                          "B")]


class EmptyAceStep15LatentAudio(Node):
    """An empty ACE-Step 1.5 latent ``[B, 64, round(seconds · 25)]`` (48 kHz audio, 1920 samples a frame)."""

    CLASS_TYPE = "EmptyAceStep1.5LatentAudio"
    category = "latent/audio"
    seconds = Input(FLOAT, default=120.0, min=1.0, max=1000.0, step=0.01)
    batch_size = Input(INT, default=1, min=1, max=4096, tooltip="The number of latent images in the batch.")
    outputs = (Output(LATENT),)

    def execute(self, seconds: float, batch_size: int = 1) -> tuple:
        length = int(round(seconds * 48000 / 1920))
        return ({"samples": torch.zeros([batch_size, 64, length]), "type": "audio"},)


class EmptyAceStepLatentAudio(Node):
    """An empty ACE-Step 1.0 latent ``[B, 8, 16, ⌊seconds · 44100 / 512 / 8⌋]`` (ComfyUI's ``nodes_ace.py``: the
    music DCAE's 8 channels × 16 mel-bin rows, one frame per 8 hops of 512 samples at 44.1 kHz); ACE-Step 1.0's
    checkpoint samples it (:mod:`.ace_step1`), 1.5 models take ``EmptyAceStep1.5LatentAudio``'s latent."""

    category = "latent/audio"
    display_name = "Empty Ace Step 1.0 Latent Audio"
    seconds = Input(FLOAT, default=120.0, min=1.0, max=1000.0, step=0.1)
    batch_size = Input(INT, default=1, min=1, max=4096, tooltip="The number of latent images in the batch.")
    outputs = (Output(LATENT),)

    def execute(self, seconds: float, batch_size: int = 1) -> tuple:
        length = int(seconds * 44100 / 512 / 8)
        return ({"samples": torch.zeros([batch_size, 8, 16, length]), "type": "audio"},)


class TextEncodeAceStepAudio(Node):
    """Encodes tags (UMT5) and lyrics (ACE-Step's lyric tokens) for ACE-Step 1.0; ``lyrics_strength`` scales the
    lyric encoder's output in the model."""

    category = "conditioning"
    clip = Input(CLIP)
    tags = Input(STRING, multiline=True, dynamic_prompts=True)
    lyrics = Input(STRING, multiline=True, dynamic_prompts=True)
    lyrics_strength = Input(FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, tags: str, lyrics: str, lyrics_strength: float = 1.0) -> tuple:
        from nodegraph_nodes.dit.ace_step1 import AceStep1Clip

        if not isinstance(clip, AceStep1Clip):
            raise TypeError("TextEncodeAceStepAudio.clip: ACE-Step 1.0's text encoder is needed (the CLIP of "
                            "CheckpointLoaderSimple with ace_step_v1_3.5b.safetensors); this CLIP is "
                            f"{getattr(clip, 'family', type(clip).__name__)}'s (ACE-Step 1.5 takes "
                            "TextEncodeAceStepAudio1.5)")
        return (clip.encode_ace1(self.ctx, tags, lyrics, lyrics_strength),)


class TextEncodeAceStepAudio15(Node):
    """Encodes tags, lyrics and music metadata for ACE-Step 1.5."""

    CLASS_TYPE = "TextEncodeAceStepAudio1.5"
    category = "conditioning"
    clip = Input(CLIP)
    tags = Input(STRING, multiline=True, dynamic_prompts=True)
    lyrics = Input(STRING, multiline=True, dynamic_prompts=True)
    seed = Input(INT, default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)
    bpm = Input(INT, default=120, min=10, max=300)
    duration = Input(FLOAT, default=120.0, min=0.0, max=2000.0, step=0.1)
    timesignature = Input(COMBO, choices=TIME_SIGNATURES, default="4")
    language = Input(COMBO, choices=LANGUAGES, default="en")
    keyscale = Input(COMBO, choices=KEYSCALES, default="C major")
    generate_audio_codes = Input(BOOLEAN, default=True, tooltip="Enable the LLM that generates audio codes. This can "
                                 "be slow but will increase the quality of the generated audio. Turn this off if you "
                                 "are giving the model an audio reference.")
    cfg_scale = Input(FLOAT, default=2.0, min=0.0, max=100.0, step=0.1)
    temperature = Input(FLOAT, default=0.85, min=0.0, max=2.0, step=0.01)
    top_p = Input(FLOAT, default=0.9, min=0.0, max=2000.0, step=0.01)
    top_k = Input(INT, default=0, min=0, max=100)
    min_p = Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.001)
    outputs = (Output(CONDITIONING),)

    def execute(self, clip, tags: str, lyrics: str, seed: int, bpm: int, duration: float, timesignature: str,
                language: str, keyscale: str, generate_audio_codes: bool, cfg_scale: float, temperature: float,
                top_p: float, top_k: int, min_p: float = 0.0) -> tuple:
        from nodegraph_nodes.dit.ace_step import AceClip, caption_text, lyrics_text

        if not isinstance(clip, AceClip):
            raise TypeError("TextEncodeAceStepAudio1.5.clip: ACE-Step 1.5's text encoders are needed (DualCLIPLoader "
                            f"type ace); this CLIP is {getattr(clip, 'family', type(clip).__name__)}'s")
        codes = None
        if generate_audio_codes:
            from nodegraph_nodes.dit.ace_step_lm import lm_prompts

            positive, negative = lm_prompts(tags, lyrics, bpm, duration, keyscale, timesignature)
            codes = clip.audio_codes(self.ctx, positive, negative, math.ceil(duration) * 5, seed=seed,
                                     cfg_scale=cfg_scale, temperature=temperature, top_p=top_p, top_k=top_k,
                                     min_p=min_p)
        return (clip.encode_ace(self.ctx, caption_text(tags, bpm, duration, str(int(timesignature)), keyscale),
                                lyrics_text(lyrics, language), codes),)
