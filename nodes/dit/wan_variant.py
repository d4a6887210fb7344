"""Loading steps the Wan 2.1-based variants behind UNETLoader share (S2V, Wan-Dancer, SCAIL, Animate 2): their
detection by marker keys in Wan's original layout, the Wan config entries they keep, the transformer built from
converted weights, the MODEL value around the manager's handle, and a condition latent as their runners take it.
Each variant keeps its own markers, conversion, config extras, model class and runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from nodegraph_nodes.dit.model import _rows
from nodegraph_nodes.dit.qwen_image import WAN21, refuse_integer_weights
from nodegraph_nodes.dit.wan import detect_transformer

#: the entries of :func:`nodegraph_nodes.dit.wan.transformer_config` a variant's config keeps
WAN_CONFIG_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                   "text_dim", "freq_dim", "ffn_dim", "num_layers", "eps")


def original_prefix(keys, markers: tuple[str, ...]) -> str | None:
    """The key prefix of a Wan file in the original layout that holds every key of ``markers`` (after the
    prefix), else ``None``."""
    found = detect_transformer(keys)
    if found is None or found[0] != "original":
        return None
    keyset = set(keys)
    return found[1] if all(found[1] + m in keyset for m in markers) else None


def wan_base_config(base: dict, extra: tuple[str, ...] = ()) -> dict:
    """The Wan config entries (:data:`WAN_CONFIG_KEYS` and ``extra``) a variant keeps from ``base``."""
    return {k: base[k] for k in WAN_CONFIG_KEYS + extra}


def build_variant(sd: dict, dtype: torch.dtype, what: str, convert: Callable[[dict], dict],
                  config: Callable[[dict], dict], model_class) -> torch.nn.Module:
    """The ``model_class`` transformer (named ``what`` in errors) from original-layout weights ``sd``:
    integer weights refused, ``convert`` applied, its config ``config(converted)``."""
    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    refuse_integer_weights(sd, what)
    sd = convert(sd)
    return _instantiate(model_class, config(sd), sd, dtype, what)


def load_variant(path: Path, prefix: str, manager, device: str, weight_dtype: str,
                 build: Callable[[dict, torch.dtype], torch.nn.Module], model_class):
    """UNETLoader's MODEL ``model_class`` (a :class:`~nodegraph_nodes.dit.wan.WanModel`) for the variant file
    ``path``: the manager's handle of ``build(sd, storage dtype)``."""
    from nodegraph_nodes.dit.file_loading import load_transformer_handle
    from nodegraph_nodes.dit.loading import flow_dtype

    handle = load_transformer_handle(path, prefix, manager, device, weight_dtype, flow_dtype(device), build)
    return model_class(handle, "wan", source=str(path))


def latent_in(value: torch.Tensor, rows: int, device, dtype) -> torch.Tensor:
    """A Wan 2.1 condition latent (VAE space) in the model's space, repeated to ``rows`` rows, on ``device``."""
    return _rows(WAN21.process_in(value.float()), rows).to(device, dtype)
