"""CLIP text encoding as ComfyUI does it: weighted tokens, 75-token windows, embeddings, SDXL pairs.

1. The prompt is split into weighted segments (:mod:`.prompt_weights`) and ``embedding:name`` words.
2. Each segment is tokenized whole; tokens fill windows of ``BOS + 75 + EOS`` padded to 77 (a group of 8
   or more tokens is split across windows, shorter groups move to the next window).
3. All windows are encoded in one batch; for weights ≠ 1 the hidden state is pushed away from the
   empty prompt's: ``z = (z - z_empty) * w + z_empty``. Windows are concatenated on the token axis.
4. Pooled output (SDXL) = projected EOS state of the first window.

With one window and no weights the result equals diffusers' ``text_encoder(input_ids)[0]`` exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from nodegraph_nodes.diffusion.files import MODEL_EXTENSIONS, ModelFileError, read_state_dict
from nodegraph_nodes.diffusion.prompt_weights import parse_prompt_weights

EMBEDDING_PREFIX = "embedding:"
WINDOW = 77
_EMBED_RE = re.compile(r"embedding:([^\s,()\[\]]+)")


def find_embedding(folder: Path | None, name: str) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    name = name.strip()
    direct = folder / name
    candidates = [direct] + [direct.with_name(direct.name + ext) for ext in (".safetensors", ".pt", ".bin", ".sft")]
    for c in candidates:
        if c.is_file() and c.suffix.lower() in MODEL_EXTENSIONS and c.resolve().is_relative_to(folder.resolve()):
            return c
    return None


def load_embedding(path: Path, key: str, hidden: int, allow_pickle: bool) -> torch.Tensor | None:
    """The vectors ``[n, hidden]`` of a textual-inversion file for the encoder named ``key``."""
    sd = read_state_dict(path, allow_pickle=allow_pickle)
    if "string_to_param" in sd:  # A1111 .pt (already flattened by read_state_dict only for tensors)
        sd = sd["string_to_param"]
    tensor = sd.get(key)
    if tensor is None:
        tensor = sd.get("emb_params")
    if tensor is None:
        candidates = [v for v in sd.values() if getattr(v, "ndim", 0) in (1, 2) and v.shape[-1] == hidden]
        tensor = candidates[0] if candidates else None
    if tensor is None or tensor.shape[-1] != hidden:
        return None
    return tensor.reshape(-1, hidden).float()


def tokenize(text: str, tokenizer, *, bos: int, eos: int, pad: int, embed_lookup) -> list[list[tuple[Any, float]]]:
    """Windows of 77 ``(token id or embedding vector, weight)`` pairs."""
    groups: list[list[tuple[Any, float]]] = []
    for segment, weight in parse_prompt_weights(text):
        pos = 0
        pieces: list[tuple[str, bool]] = []
        for m in _EMBED_RE.finditer(segment):
            pieces.append((segment[pos:m.start()], False))
            pieces.append((m.group(1), True))
            pos = m.end()
        pieces.append((segment[pos:], False))
        for piece, is_embed in pieces:
            if is_embed:
                vectors = embed_lookup(piece)
                if vectors is not None:
                    groups.append([(vectors[i], weight) for i in range(vectors.shape[0])])
                    continue
                piece = EMBEDDING_PREFIX + piece
            if not piece.strip():
                continue
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            if ids:
                groups.append([(int(t), weight) for t in ids])
    windows: list[list[tuple[Any, float]]] = []
    batch: list[tuple[Any, float]] = [(bos, 1.0)]
    windows.append(batch)
    for group in groups:
        is_large = len(group) >= 8
        while group:
            if len(group) + len(batch) > WINDOW - 1:
                room = WINDOW - len(batch) - 1
                if is_large:
                    batch.extend(group[:room])
                    batch.append((eos, 1.0))
                    group = group[room:]
                else:
                    batch.append((eos, 1.0))
                    batch.extend([(pad, 1.0)] * room)
                batch = [(bos, 1.0)]
                windows.append(batch)
            else:
                batch.extend(group)
                group = []
    batch.append((eos, 1.0))
    batch.extend([(pad, 1.0)] * (WINDOW - len(batch)))
    return windows


def _causal_mask(text_model, hidden: torch.Tensor):
    try:
        from transformers.masking_utils import create_causal_mask

        return create_causal_mask(config=text_model.config, inputs_embeds=hidden, attention_mask=None, cache=None)
    except ImportError:  # pragma: no cover - transformers 4
        n = hidden.shape[1]
        return torch.full((n, n), float("-inf"), dtype=hidden.dtype, device=hidden.device).triu(1)[None, None]


def run_encoder(module, rows: list[list[Any]], layer: int, layer_norm_hidden_state: bool, eos: int,
                device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states ``[n, 77, dim]`` at ``layer`` and pooled (projected when the model has a projection)."""
    text_model = module.text_model if hasattr(module, "text_model") else module
    ids = torch.tensor([[t if isinstance(t, int) else eos + 1 for t in row] for row in rows], device=device)
    vectors = [(b, j, t) for b, row in enumerate(rows) for j, t in enumerate(row) if not isinstance(t, int)]
    if not vectors and layer == -1:
        out = module(ids)
        hidden = out.last_hidden_state
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = getattr(out, "pooler_output", None)
        return hidden, pooled
    embeds = text_model.embeddings.token_embedding(ids.clamp(max=text_model.embeddings.token_embedding.num_embeddings - 1))
    if vectors:
        embeds = embeds.clone()
        for b, j, vec in vectors:
            embeds[b, j] = vec.to(embeds.dtype).to(embeds.device)
    h = text_model.embeddings(inputs_embeds=embeds)
    mask = _causal_mask(text_model, h)
    states = [h]
    for enc_layer in text_model.encoder.layers:
        out = enc_layer(h, mask, is_causal=True)
        h = out[0] if isinstance(out, tuple) else out
        states.append(h)
    last = text_model.final_layer_norm(h)
    hidden = last if layer == -1 else states[layer]
    if layer != -1 and layer_norm_hidden_state:
        hidden = text_model.final_layer_norm(hidden)
    eos_pos = (ids == eos).int().argmax(dim=-1)
    pooled = last[torch.arange(last.shape[0], device=last.device), eos_pos]
    if hasattr(module, "text_projection"):
        pooled = module.text_projection(pooled)
    return hidden, pooled


def encode_with_encoder(enc, module, text: str, layer: int, device: str, embed_folder: Path | None,
                        allow_pickle: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    tok = enc.tokenizer
    hidden_size = module.config.hidden_size

    def lookup(name: str):
        path = find_embedding(embed_folder, name)
        if path is None:
            return None
        return load_embedding(path, enc.key, hidden_size, allow_pickle)

    windows = tokenize(text, tok, bos=int(tok.bos_token_id), eos=int(tok.eos_token_id), pad=enc.pad_id,
                       embed_lookup=lookup)
    has_weights = any(w != 1.0 for window in windows for _, w in window)
    rows = [[t for t, _ in window] for window in windows]
    if has_weights:
        empty = [int(tok.bos_token_id), int(tok.eos_token_id)] + [enc.pad_id] * (WINDOW - 2)
        rows.append(empty)
    with torch.inference_mode():
        hidden, pooled = run_encoder(module, rows, layer, enc.layer_norm_hidden_state, int(tok.eos_token_id), device)
        hidden = hidden.float()
        outs = []
        for k, window in enumerate(windows):
            z = hidden[k:k + 1].clone()
            if has_weights:
                z_empty = hidden[-1]
                weights = torch.tensor([w for _, w in window], dtype=z.dtype, device=z.device)
                changed = weights != 1.0
                if changed.any():
                    z[0, changed] = (z[0, changed] - z_empty[changed]) * weights[changed, None] + z_empty[changed]
            outs.append(z)
        cond = torch.cat(outs, dim=1)
        first_pooled = pooled[0:1].float() if pooled is not None else None
    return cond, first_pooled
