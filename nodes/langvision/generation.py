"""The LLM socket value and seeded text generation.

Sampling runs its own token loop with a private ``torch.Generator`` seeded from the node's seed, so a
fixed seed gives the same text on every run, whatever other threads do with torch's global RNG; each
step reports progress (the interruption point). The KV cache of the model is used between steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from nodegraph.models import ManagerOwned


@dataclass(frozen=True, eq=False)
class LanguageModel(ManagerOwned):
    """LLM: a causal LM held by the model manager, with its tokenizer."""

    handle: Any  # ManagedModel
    tokenizer: Any
    name: str
    max_positions: int
    eos_ids: tuple[int, ...]
    device: str = "cpu"


def build_prompt_text(llm: LanguageModel, messages: list[dict[str, str]]) -> str:
    """Chat messages → one prompt string (the tokenizer's chat template when it has one)."""
    tok = llm.tokenizer
    if getattr(tok, "chat_template", None):
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a broken template falls back to plain text
            pass
    lines = []
    for m in messages:
        role = {"system": "System", "user": "User", "assistant": "Assistant"}.get(m["role"], m["role"])
        lines.append(f"{role}: {m['content'].strip()}")
    lines.append("Assistant:")
    return "\n".join(lines)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _cache_argument(model: Any) -> str:
    """The forward() keyword of the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.inference_mode()
def generate_text(llm: LanguageModel, manager: Any, prompt_text: str, *, seed: int, temperature: float,
                  max_new_tokens: int, top_p: float = 0.95, top_k: int = 0, repetition_penalty: float = 1.1,
                  progress: Callable[[int, int], None] | None = None) -> str:
    """Continue ``prompt_text``; sampling is seeded (greedy when ``temperature`` is 0)."""
    tok = llm.tokenizer
    ids = tok(prompt_text, add_special_tokens=True, return_tensors="pt")["input_ids"][0].tolist()
    if not ids:
        bos = getattr(tok, "bos_token_id", None)
        ids = [bos if bos is not None else 0]
    room = max(1, llm.max_positions - max_new_tokens)
    ids = ids[-room:]  # keep the end of an over-long prompt (instructions come last)
    max_new_tokens = max(0, min(max_new_tokens, llm.max_positions - len(ids)))
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    out: list[int] = []
    with manager.use(llm.handle) as model:
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        cache_arg = _cache_argument(model)
        past = None
        mask = torch.ones(1, len(ids), dtype=torch.long, device=device)
        seen = torch.zeros(model.config.vocab_size if hasattr(model.config, "vocab_size") else 1 << 16,
                           dtype=torch.bool)
        seen[torch.tensor(ids).clamp(max=seen.numel() - 1)] = True
        step_input = input_ids
        for step in range(max_new_tokens):
            if progress is not None:
                progress(step, max_new_tokens)
            result = model(input_ids=step_input, attention_mask=mask, use_cache=True, **{cache_arg: past})
            past = getattr(result, cache_arg, None)
            logits = result.logits[0, -1].float().cpu()
            if repetition_penalty != 1.0:
                n = min(seen.numel(), logits.numel())
                penalised = logits[:n][seen[:n]]
                logits[:n][seen[:n]] = torch.where(penalised > 0, penalised / repetition_penalty,
                                                   penalised * repetition_penalty)
            if temperature <= 0:
                next_id = int(torch.argmax(logits))
            else:
                logits = _filter_logits(logits / temperature, top_k, top_p)
                probs = torch.softmax(logits, dim=-1)
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            if next_id in llm.eos_ids:
                break
            out.append(next_id)
            if next_id < seen.numel():
                seen[next_id] = True
            step_input = torch.tensor([[next_id]], device=device)
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        if progress is not None:
            progress(max_new_tokens, max_new_tokens)
    return tok.decode(out, skip_special_tokens=True)


def clean_generation(text: str) -> str:
    """First meaningful paragraph of a generation, without role/label prefixes or quotes."""
    text = text.strip()
    for prefix in ("Assistant:", "assistant:", "Prompt:", "prompt:", "Improved prompt:", "Revised prompt:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    for stop in ("\nUser:", "\nSystem:", "\nInstruction:", "\n\n"):
        cut = text.find(stop)
        if cut > 0:
            text = text[:cut]
    text = " ".join(text.split())
    return text.strip().strip('"').strip()
