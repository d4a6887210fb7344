"""A sentencepiece model carried inside a model file (ComfyUI stores T5-family tokenizers as a uint8 tensor, e.g.
``text_encoders.spiece_model``) as a transformers fast tokenizer, without the ``sentencepiece`` package:
transformers' T5 conversion (Unigram pieces and scores, the model's normaliser with its precompiled character
map, whitespace as ``▁``, the end token appended) on the model proto read with ``protobuf``. On sentencepiece's
own models this gives sentencepiece's ids (checked outside the tests against the ``sentencepiece`` package on a
model trained with its ``nmt_nfkc`` rule: full-width letters, repeated spaces, newlines, unknown characters).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from nodegraph_nodes.diffusion.files import ModelFileError


def available() -> bool:
    """Whether ``protobuf`` (which reads the model proto) is installed."""
    import importlib.util

    try:
        return importlib.util.find_spec("google.protobuf") is not None
    except ModuleNotFoundError:  # no ``google`` package at all
        return False


def fast_tokenizer(model: bytes | torch.Tensor, where: str):
    """A ``PreTrainedTokenizerFast`` (``<pad>``, ``</s>``, ``<unk>`` as the model names them) of the sentencepiece
    model ``model`` (its serialized proto, or a uint8 tensor of it); ``where`` names it in errors."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import T5Converter, import_protobuf

    data = model.cpu().numpy().tobytes() if isinstance(model, torch.Tensor) else bytes(model)
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
        raise ModelFileError(f"{where}: not a sentencepiece model ({exc})") from None
    if not proto.pieces:
        raise ModelFileError(f"{where}: the sentencepiece model has no pieces")
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    with tempfile.TemporaryDirectory() as tmp:  # the converter reads the model from a file
        path = Path(tmp) / "spiece.model"
        path.write_bytes(data)
        shim = SimpleNamespace(vocab_file=str(path), _extra_ids=0, convert_tokens_to_ids=lambda t: ids[t])
        backend = T5Converter(shim).converted()
    special = {name: tok for name, tok in (("pad_token", "<pad>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))
               if tok in ids}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)
