"""ACE-Step 1.5's 5 Hz LM: audio codes sampled by a Qwen3 causal LM (the ``qwen_1.7b_ace15`` / ``qwen_4b_ace15``
file of DualCLIPLoader type ace) for TextEncodeAceStepAudio1.5's ``generate_audio_codes``.

ComfyUI's recipe: the LM prompt is a chat (system: the instruction; user: ``# Caption`` and ``# Lyric``;
assistant: ``<think>`` with the metadata as sorted YAML), the negative the same with an empty ``<think>``;
the shorter of the two is padded on the left with ``<|endoftext|>`` (masked). Each step takes the last position's
final hidden state against the audio-code rows of the (tied) embedding matrix, mixes the two rows as
``uncond + cfg_scale · (cond - uncond)`` (the positive alone at cfg 1), keeps the top_k (0: all), the tokens above
``min_p`` times the best probability and the nucleus ``top_p``, and draws from the softmax at ``temperature``
(greedy at 0) with a generator seeded by ``seed`` on the run's device; the chosen token goes to both rows.
``ceil(duration) · 5`` codes are drawn (the end token is never allowed, as ComfyUI's min = max tokens).
The audio-code tokens are the tokenizer's contiguous ``<|audio_code_N|>`` tokens.
"""

from __future__ import annotations

import math

import torch

CHAT = ("<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n"
        "<|im_end|>\n"
        "<|im_start|>user\n# Caption\n{}\n\n# Lyric\n{}\n<|im_end|>\n<|im_start|>assistant\n{}\n\n<|im_end|>\n")


def metas_yaml(bpm: int, duration: float, keyscale: str, timesignature: str) -> str:
    """The metadata in ``<think>``: ``key: value`` lines in sorted key order (YAML of ComfyUI's dict)."""
    values = {"bpm": int(bpm), "duration": int(math.ceil(float(duration))), "keyscale": keyscale,
              "timesignature": int(timesignature) if str(timesignature).isdigit() else timesignature}
    return "\n".join(f"{k}: {values[k]}" for k in sorted(values))


def lm_prompts(tags: str, lyrics: str, bpm: int, duration: float, keyscale: str, timesignature: str) -> tuple[str, str]:
    text = tags.strip()
    cot = "<think>\n" + metas_yaml(bpm, duration, keyscale, timesignature) + "\n</think>"
    return CHAT.format(text, lyrics.strip(), cot), CHAT.format(text, lyrics.strip(), "<think>\n\n</think>")


def audio_code_range(tokenizer) -> tuple[int, int]:
    """``[start, end)`` token ids of ``<|audio_code_0|>`` … (contiguous), or a clear error."""
    start = tokenizer.convert_tokens_to_ids("<|audio_code_0|>")
    if start is None or start == tokenizer.unk_token_id:
        raise ValueError("TextEncodeAceStepAudio1.5.generate_audio_codes: this tokenizer has no <|audio_code_N|> "
                         "tokens; ACE-Step 1.5's Qwen3 tokenizer (with its 64000 audio-code tokens) is needed")
    added = tokenizer.get_added_vocab()
    n = 0
    while added.get(f"<|audio_code_{n}|>") == start + n:
        n += 1
    return start, start + n


def _filter(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    floor = torch.finfo(logits.dtype).min
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, floor)
    if min_p and min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, floor)
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        over = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1) > top_p
        over[..., 1:] = over[..., :-1].clone()
        over[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(over).scatter(1, order, over), floor)
    return logits


@torch.inference_mode()
def generate_codes(lm, tokenizer, positive: str, negative: str, count: int, seed: int, cfg_scale: float,
                   temperature: float, top_p: float, top_k: int, min_p: float, device: str) -> list[int]:
    """``count`` audio codes (see the module docstring) from the Qwen3 model ``lm`` (a ``Qwen3Model``)."""
    from transformers import DynamicCache

    start, end = audio_code_range(tokenizer)
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = [tokenizer(positive)["input_ids"]]
    if cfg_scale != 1.0:
        rows.append(tokenizer(negative)["input_ids"])
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    dtype = next(lm.parameters()).dtype
    weight = lm.get_input_embeddings().weight
    vocab = int(weight.shape[0])
    generator = torch.Generator(device=device).manual_seed(int(seed))
    cache = DynamicCache()
    codes: list[int] = []
    inputs = ids
    for _ in range(count):
        out = lm(input_ids=inputs, attention_mask=mask, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        last = out.last_hidden_state[:, -1:].to(dtype)
        logits = torch.nn.functional.linear(last, weight[start:end])[:, -1]
        mixed = logits[1:2] + cfg_scale * (logits[0:1] - logits[1:2]) if len(rows) > 1 else logits[0:1]
        mixed = _filter(mixed, top_k, top_p, min_p)
        if temperature > 0:
            full = mixed.new_full((1, vocab), torch.finfo(mixed.dtype).min)
            full[:, start:end] = mixed / temperature
            token = torch.multinomial(torch.softmax(full, dim=-1), num_samples=1, generator=generator).squeeze(1)
        else:
            token = torch.argmax(mixed, dim=-1) + start
        codes.append(int(token[0]) - start)
        inputs = token[:1].view(1, 1).expand(len(rows), 1)
        mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype, device=device)], dim=1)
    return codes
