"""A tiny random-weight ACE-Step 1.5 model built from the real diffusers / transformers classes and saved in the
split layout of ComfyUI's template files: ``diffusion_models/tiny_acestep_v1.5.safetensors`` (ACE-Step's names:
``decoder.`` with ``proj_in.1`` / ``q_proj`` …, ``encoder.``, ``null_condition_emb``, plus the ``silence_latent``
ComfyUI carries in its code), ``text_encoders/tiny_qwen_ace15_embed.safetensors`` (a Qwen3 model, the narrower
file) and ``tiny_qwen_ace15_lm.safetensors`` (a wider Qwen3 causal LM: the 5 Hz LM's place), the tokenizer in
``text_encoders/qwen3_tokenizer/`` (a word-level stand-in with Qwen's ``<|endoftext|>``), and
``vae/tiny_ace_1.5_vae.safetensors`` (a 64-channel Oobleck in diffusers' names); the same weights in one
all-in-one file ``checkpoints/tiny_ace_step_1.5_aio.safetensors`` (:func:`write_all_in_one`).

The VAE's sampling_rate config is 10 for the reference pipeline (2.5 latent frames a second with its hop of 4),
so the pipeline's 30-second timbre reference is 75 frames — the length the test samples (ComfyUI's timbre reference
is the silence over the sampled length).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.helpers.tiny_sd import _randomize

WORDS = ("a warm soul track with drums and piano bass guitar voice night city rain love the of in on my your we "
         "instruction generate audio semantic tokens based given conditions caption metas bpm timesignature keyscale "
         "duration seconds languages lyric en e minor major c verse chorus").split()
TEXT_WIDTH = 32
SILENCE_FRAMES = 200
AUDIO_CODES = 16  # <|audio_code_0|> … in the tokenizer (ACE-Step's has 64000)


def write_qwen_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    specials += [f"<|audio_code_{i}|>" for i in range(AUDIO_CODES)]
    vocab = {"<unk>": 0}
    for w in specials + WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def qwen3(width: int, seed: int, lm: bool = False):
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=128, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
                      rope_theta=1000000.0, max_position_embeddings=4096, tie_word_embeddings=True)
    model = (Qwen3ForCausalLM if lm else Qwen3Model)(cfg).eval()
    _randomize(model, 0.2)
    return model


def transformer(hidden: int = 64, heads: int = 2):
    """The DiT; ``hidden`` 96 with 3 heads is the XL shape (a DiT wider than its 64-wide condition encoder)."""
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(0)
    net = AceStepTransformer1DModel(hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=heads, num_key_value_heads=1, head_dim=32, in_channels=192,
                                    audio_acoustic_hidden_dim=64, patch_size=2, encoder_hidden_size=64).eval()
    _randomize(net, 0.1)
    return net


def condition_encoder():
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepConditionEncoder

    torch.manual_seed(1)
    enc = AceStepConditionEncoder(hidden_size=64, intermediate_size=96, text_hidden_dim=TEXT_WIDTH,
                                  timbre_hidden_dim=64,
                                  num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=32).eval()
    _randomize(enc, 0.1)
    with torch.no_grad():  # VAE-encoded silence is nearly constant over time: a vector plus small wobble
        g = torch.Generator().manual_seed(9)
        base = torch.randn(1, 1, 64, generator=g)
        enc.silence_latent = base + 0.05 * torch.randn(1, SILENCE_FRAMES, 64, generator=g)
    return enc


def code_path():
    """The audio tokenizer (whose quantizer turns codes into vectors) and detokenizer of the 5 Hz codes."""
    from diffusers.pipelines.ace_step.modeling_ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer

    torch.manual_seed(7)
    shape = dict(hidden_size=64, intermediate_size=96, audio_acoustic_hidden_dim=64, pool_window_size=5,
                 num_attention_pooler_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    tokenizer = AceStepAudioTokenizer(fsq_dim=64, **shape).eval()
    detokenizer = AceStepAudioTokenDetokenizer(**shape).eval()
    _randomize(tokenizer, 0.1)
    _randomize(detokenizer, 0.1)
    return tokenizer, detokenizer


def oobleck():
    from diffusers import AutoencoderOobleck

    torch.manual_seed(2)
    vae = AutoencoderOobleck(encoder_hidden_size=128, downsampling_ratios=[2, 2], channel_multiples=[1, 1],
                             decoder_channels=4, decoder_input_channels=64, audio_channels=2, sampling_rate=10).eval()
    _randomize(vae, 0.1)
    return vae


_ORIGINAL_ATTN = (("to_q.", "q_proj."), ("to_k.", "k_proj."), ("to_v.", "v_proj."), ("to_out.0.", "o_proj."),
                  ("norm_q.", "q_norm."), ("norm_k.", "k_norm."))


def _original_attention(key: str) -> str:
    for new, old in _ORIGINAL_ATTN:
        key = key.replace("_attn." + new, "_attn." + old)
    return key


def ace_layout(net, enc, tokenizer, detokenizer) -> dict:
    """ACE-Step's checkpoint names for the DiT, the condition encoder and the audio-code path (what ComfyUI's
    split file holds)."""
    sd = {}
    for prefix, module in (("tokenizer.", tokenizer), ("detokenizer.", detokenizer)):
        for k, v in module.state_dict().items():
            sd[prefix + _original_attention(k)] = v
    for k, v in net.state_dict().items():
        k = k.replace("proj_in_conv.", "proj_in.1.").replace("proj_out_conv.", "proj_out.1.")
        sd["decoder." + _original_attention(k)] = v
    for k, v in enc.state_dict().items():
        if k == "null_condition_emb":
            sd[k] = v
        elif k == "silence_latent":
            sd[k] = v
        else:
            sd["encoder." + _original_attention(k)] = v
    return sd


def write_all_in_one(path: Path, net, enc, audio_tokenizer, audio_detokenizer, te, lm, vae) -> None:
    """ComfyUI's all-in-one layout: the DiT under ``model.diffusion_model.``, the Qwen3 models under
    ``cond_stage_model.qwen3_06b.transformer.`` / ``cond_stage_model.qwen3_2b.transformer.``, the VAE in
    stable-audio-tools' names under ``first_stage_model.``."""
    from tests.dit.tiny_stable_audio import oobleck_tools_layout

    sd = {"model.diffusion_model." + k: v for k, v in ace_layout(net, enc, audio_tokenizer, audio_detokenizer).items()}
    sd.update({"cond_stage_model.qwen3_06b.transformer.model." + k: v for k, v in te.state_dict().items()})
    sd.update({"cond_stage_model.qwen3_2b.transformer." + k: v for k, v in lm.state_dict().items()
               if k != "lm_head.weight"})
    sd.update({"first_stage_model." + k: v for k, v in oobleck_tools_layout(vae.state_dict(), 2).items()})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


@dataclass
class TinyAceStep:
    root: Path
    transformer: Any
    condition_encoder: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    audio_tokenizer: Any
    audio_detokenizer: Any
    xl_transformer: Any


def build_ace_step(root: Path) -> TinyAceStep:
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "checkpoints"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    net, enc, vae = transformer(), condition_encoder(), oobleck()
    audio_tokenizer, audio_detokenizer = code_path()
    te, lm = qwen3(TEXT_WIDTH, 3), qwen3(48, 4, lm=True)
    save_file({k: v.contiguous() for k, v in ace_layout(net, enc, audio_tokenizer, audio_detokenizer).items()},
              str(models / "diffusion_models" / "tiny_acestep_v1.5.safetensors"))
    save_file({"model." + k: v.contiguous() for k, v in te.state_dict().items()},
              str(models / "text_encoders" / "tiny_qwen_ace15_embed.safetensors"))
    save_file({k: v.contiguous() for k, v in lm.state_dict().items() if k != "lm_head.weight"},
              str(models / "text_encoders" / "tiny_qwen_ace15_lm.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(models / "vae" / "tiny_ace_1.5_vae.safetensors"))
    tokenizer = write_qwen_tokenizer(models / "text_encoders" / "qwen3_tokenizer")
    write_all_in_one(models / "checkpoints" / "tiny_ace_step_1.5_aio.safetensors", net, enc, audio_tokenizer,
                     audio_detokenizer, te, lm, vae)
    xl = transformer(hidden=96, heads=3)
    save_file({k: v.contiguous() for k, v in ace_layout(xl, enc, audio_tokenizer, audio_detokenizer).items()},
              str(models / "diffusion_models" / "tiny_acestep_v1.5_xl.safetensors"))
    return TinyAceStep(root, net, enc, vae, te, tokenizer, audio_tokenizer, audio_detokenizer, xl)
