"""ComfyUI-quantised weights made with ``comfy-kitchen``'s own quantisers (its eager, pure-torch backend; a test
dependency, the ``dev`` extra): one layer in ComfyUI's file layout (``<layer>.weight``, its scales under
comfy-kitchen's serialisation suffixes, the ``<layer>.comfy_quant`` JSON as ComfyUI's MixedPrecisionOps writes
it), comfy-kitchen's own dequantisation of it, and whole files quantised the way Comfy-Org's ``*_int8_convrot``
releases are."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

ck = pytest.importorskip("comfy_kitchen")
from comfy_kitchen.tensor import QuantizedTensor  # noqa: E402


@dataclass
class QuantLayer:
    """One quantised layer: ``tensors`` as they go in the file, ``reference`` comfy-kitchen's dequantised
    float32 weight."""

    tensors: dict[str, torch.Tensor]
    reference: torch.Tensor


def marker(conf: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)


def _layout(fmt: str, weight: torch.Tensor, opts: dict):
    """``(layout name, qdata, params, comfy_quant JSON)`` of ``weight`` quantised as ``fmt``."""
    from comfy_kitchen.tensor import (AsymW4A8Int8Layout, TensorCoreConvRotW4A4Layout, TensorCoreFP8Layout,
                                      TensorCoreMXFP8Layout, TensorCoreNVFP4Layout, TensorWiseINT8Layout)

    conf = {"format": fmt}
    if fmt in ("float8_e4m3fn", "float8_e5m2"):
        q, p = TensorCoreFP8Layout.quantize(weight, dtype=getattr(torch, fmt))
        return "TensorCoreFP8Layout", q, p, conf
    if fmt == "int8_tensorwise":
        convrot = opts.get("convrot", False)
        q, p = TensorWiseINT8Layout.quantize(weight, per_channel=opts.get("per_channel", convrot), convrot=convrot,
                                             convrot_groupsize=opts.get("convrot_groupsize", 256))
        if convrot:
            conf.update(convrot=True, convrot_groupsize=p.convrot_groupsize)
        return "TensorWiseINT8Layout", q, p, conf
    if fmt == "mxfp8":
        q, p = TensorCoreMXFP8Layout.quantize(weight)
        return "TensorCoreMXFP8Layout", q, p, conf
    if fmt == "nvfp4":
        q, p = TensorCoreNVFP4Layout.quantize(weight)
        return "TensorCoreNVFP4Layout", q, p, conf
    if fmt == "convrot_w4a4":
        q, p = TensorCoreConvRotW4A4Layout.quantize(weight, convrot_groupsize=opts.get("convrot_groupsize", 256))
        conf["convrot_groupsize"] = p.convrot_groupsize
        return "TensorCoreConvRotW4A4Layout", q, p, conf
    if fmt == "asym_w4a8_int8":
        q, p = AsymW4A8Int8Layout.quantize(weight, group_size=opts.get("group_size", 16),
                                           convrot_groupsize=opts.get("convrot_groupsize", 256),
                                           bits=opts.get("bits", 4), codebook=opts.get("codebook", True))
        conf.update(group_size=p.group_size, convrot_groupsize=p.convrot_groupsize)
        return "AsymW4A8Int8Layout", q, p, conf
    raise ValueError(fmt)


def quantize_layer(layer: str, weight: torch.Tensor, fmt: str, **opts) -> QuantLayer:
    """``weight`` (float32 ``[N, K]``) quantised as ``fmt`` by comfy-kitchen, in ComfyUI's file layout."""
    with ck.registry.use_backend("eager"):
        name, q, params, conf = _layout(fmt, weight.float(), opts)
        qt = QuantizedTensor(q, name, params)
        tensors = {k: v.contiguous() for k, v in qt.state_dict(f"{layer}.weight").items()}
        reference = qt.dequantize().float()
    tensors[f"{layer}.comfy_quant"] = marker(conf)
    return QuantLayer(tensors, reference)


def awq_layer(layer: str, n: int, k: int, group: int = 64, seed: int = 0) -> QuantLayer:
    """An AWQ W4A16 layer (comfy-kitchen has no AWQ quantiser: it needs calibration): random codes, scales and
    zeros, dequantised by comfy-kitchen's layout."""
    from comfy_kitchen.tensor import TensorCoreAWQW4A16Layout

    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (n, k // 2), generator=gen, dtype=torch.int8)
    scale = torch.rand(k // group, n, generator=gen) * 0.1
    zeros = torch.randn(k // group, n, generator=gen) * 0.1
    params = TensorCoreAWQW4A16Layout.Params(scale=scale, orig_dtype=torch.float32, orig_shape=(n, k), zeros=zeros,
                                             group_size=group)
    with ck.registry.use_backend("eager"):
        reference = QuantizedTensor(q, "TensorCoreAWQW4A16Layout", params).dequantize().float()
    return QuantLayer({f"{layer}.weight": q, f"{layer}.weight_scale": scale, f"{layer}.weight_zeros": zeros,
                       f"{layer}.comfy_quant": marker({"format": "awq_w4a16", "group_size": group})}, reference)


def convrot_group(k: int) -> int | None:
    """The ConvRot group for ``k`` input columns: 256 as in the releases, else the largest power of 4 (≥ 4)
    dividing ``k`` (the tiny models are narrow); ``None`` when there is none."""
    for group in (256, 64, 16, 4):
        if k % group == 0:
            return group
    return None


def quantize_file(src: Path, dst: Path, fmt: str, pick: Callable[[str, torch.Tensor], dict | None]) -> dict:
    """``src`` saved as ``dst`` with each floating ``*.weight`` for which ``pick(key, tensor)`` gives options
    quantised as ``fmt`` with them; the other tensors as they are. Returns comfy-kitchen's dequantised weights
    by key."""
    from safetensors.torch import load_file, save_file

    out, references = {}, {}
    for key, value in load_file(str(src)).items():
        opts = pick(key, value) if key.endswith(".weight") and value.is_floating_point() else None
        if opts is not None:
            layer = quantize_layer(key[: -len(".weight")], value, fmt, **opts)
            out.update(layer.tensors)
            references[key] = layer.reference
        else:
            out[key] = value
    save_file(out, str(dst))
    return references


def int8_convrot_file(src: Path, dst: Path) -> int:
    """``src`` saved as ``dst`` with every 2-D floating ``*.weight`` quantised to ConvRot INT8 (what
    Comfy-Org's ``*_int8_convrot`` files hold); the other tensors as they are. Returns the layers quantised."""
    def pick(key: str, value: torch.Tensor) -> dict | None:
        group = convrot_group(value.shape[-1]) if value.ndim == 2 else None
        return None if group is None else dict(convrot=True, convrot_groupsize=group)

    return len(quantize_file(src, dst, "int8_tensorwise", pick))
