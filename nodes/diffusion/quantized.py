"""ComfyUI's quantised model files, read on any device: each quantised weight is dequantised to a floating
dtype when it is read (one layer at a time from the memory-mapped safetensors file, big layers a few rows at a
time), so the models are built from ordinary float weights.
:func:`read_state_dict <nodegraph_nodes.diffusion.files.read_state_dict>` calls this for every file, so every
loader (UNETLoader, CLIPLoader / DualCLIPLoader, VAELoader, CheckpointLoaderSimple and the families' own) reads
these files.

Markers (which layers are quantised, and how), as ComfyUI reads them:

* ``<layer>.comfy_quant``: a uint8 tensor holding the layer's JSON (``{"format": ..., options}``; options at
  the top level or under ``"params"``);
* the safetensors metadata ``_quantization_metadata``: ``{"layers": {layer: {"format": ...}}}``;
* the older ``*_fp8_scaled`` files: a ``scaled_fp8`` marker and ``<layer>.scale_weight`` per layer.

Formats (the layouts of ``comfy-kitchen``, Apache-2.0, which ComfyUI uses; weight ``W`` of ``[N, K]``, the
dequantised weight computed in float32 and rounded once to the output dtype):

* ``float8_e4m3fn`` / ``float8_e5m2``: fp8 ``weight`` × ``weight_scale`` (scalar);
* ``int8_tensorwise``: int8 ``weight`` × ``weight_scale`` (scalar or one per row); with ``"convrot": true``
  ("ConvRot INT8", the ``*_int8_convrot`` files) the product is rotated back: each group of
  ``convrot_groupsize`` (default 256) input columns times ``Hᵀ``, ``H`` the normalised regular Hadamard matrix
  (Kronecker powers of ``[[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]]`` / √g);
* ``mxfp8``: fp8 e4m3 ``weight`` × one power of two per 32 columns (``weight_scale``, e8m0, in cuBLAS's
  swizzled 128×4 tiles);
* ``nvfp4``: two e2m1 codes per byte (high nibble first) × one fp8 e4m3 scale per 16 columns (``weight_scale``,
  swizzled) × ``weight_scale_2``;
* ``convrot_w4a4``: two signed int4 per byte (low nibble first) × ``weight_scale`` per row, rotated back;
* ``asym_w4a8_int8``: 4- or 6-bit codes (a nibble plane, at 6 bits a 2-bit plane) through ``weight_codebook``
  (16 levels) or centred, × ``weight_s_rel`` per ``group_size`` columns rounded to the int8 grid,
  × ``weight_s_channel`` per row (+ ``weight_correction``), rotated back;
* ``awq_w4a16``: two uint4 per byte (low nibble first): ``(q − 8) × weight_scale + weight_zeros`` per
  ``group_size`` columns (both ``[K/G, N]``).

``pre_quant_scale`` (activation smoothing) is folded into the weight's columns; ``input_scale`` (the
activations' quantisation) is dropped: the models compute in floating point. Expert banks (3-D weights) are
dequantised expert by expert (their marker names ``num_experts``). A format not listed, or a layer whose tensors
do not fit its format, is a :class:`ModelFileError` naming the file, the layer and the format. The dequantised weights take the dtype of
the file's unquantised floating tensors (bf16 in the released files; bf16 when there are none) unless the
caller names one or a rule (the DiT loaders: the model manager's storage dtype, so a CPU computing in float32
gets the float32 dequantisation, as ComfyUI's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch

from nodegraph_nodes.diffusion.files import ModelFileError

MARKER = "comfy_quant"
METADATA_KEY = "_quantization_metadata"
LEGACY_MARKER = "scaled_fp8"
#: a quantised layer's tensors besides ``weight`` (``<layer>.<suffix>``)
AUX_SUFFIXES = ("comfy_quant", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "weight_s_rel",
                "weight_s_channel", "weight_codebook", "weight_correction", "weight_zeros", "scale_weight",
                "scale_input")
LEGACY_FORMAT = "scaled_fp8"
#: the dtype dequantised weights take: a dtype, or a rule from the file's unquantised floating dtype (``None``:
#: none) to one, e.g. the model manager's storage dtype; ``None``: :func:`output_dtype`
DtypeRule = Union[torch.dtype, Callable[[Optional[torch.dtype]], torch.dtype], None]
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


@dataclass(frozen=True)
class LayerQuant:
    """One quantised layer of a file: its name, its ``format`` and the marker's options."""

    layer: str
    format: str
    conf: Mapping[str, Any] = field(default_factory=dict)

    @property
    def weight_key(self) -> str:
        return f"{self.layer}.weight"

    def option(self, name: str, default: Any) -> Any:
        params = self.conf.get("params")
        params = params if isinstance(params, Mapping) else {}
        return self.conf.get(name, params.get(name, default))


class _LayerError(Exception):
    """A layer's tensors do not fit its format (turned into a ModelFileError naming file and layer)."""


# -- markers ----------------------------------------------------------------------------------------

def _marker_conf(value: Any) -> dict:
    if isinstance(value, str):
        return {"format": value}
    if isinstance(value, torch.Tensor):
        value = json.loads(bytes(value.detach().cpu().to(torch.uint8).numpy().tobytes()).decode("utf-8"))
    if not isinstance(value, Mapping):
        raise ValueError(f"not a JSON object: {value!r}")
    return dict(value)


def _resolve_layer(layer: str, weights: set[str]) -> str:
    """The layer name under which ``layer`` (a metadata entry) has its weight in the file: as written, or
    the one weight that ends with it (some tools write the names without the model's prefix)."""
    if f"{layer}.weight" in weights:
        return layer
    hits = [k[: -len(".weight")] for k in weights if k.endswith(f".{layer}.weight")]
    return hits[0] if len(hits) == 1 else layer


def find_layers(keys, metadata: Mapping[str, str] | None, read: Callable[[str], torch.Tensor],
                name: str) -> dict[str, LayerQuant]:
    """The quantised layers of a file with tensor names ``keys`` and safetensors ``metadata``; ``read(key)``
    reads a (marker) tensor. Empty for an ordinary file."""
    keys = list(keys)
    weights = {k for k in keys if k.endswith(".weight")}
    layers: dict[str, LayerQuant] = {}
    raw = (metadata or {}).get(METADATA_KEY)
    if raw:
        try:
            entries = json.loads(raw).get("layers", {})
            for layer, conf in entries.items():
                conf = _marker_conf(conf)
                layer = _resolve_layer(layer, weights)
                layers[layer] = LayerQuant(layer, str(conf.get("format")), conf)
        except (ValueError, AttributeError, TypeError) as exc:
            raise ModelFileError(f"{name}: its {METADATA_KEY} metadata is not ComfyUI's layer JSON ({exc})") from None
    for key in keys:
        if key.endswith("." + MARKER):
            layer = key[: -len(MARKER) - 1]
            try:
                conf = _marker_conf(read(key))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ModelFileError(f"{name}: layer {layer}'s {MARKER} marker is not JSON ({exc})") from None
            layers[layer] = LayerQuant(layer, str(conf.get("format")), conf)
    for key in keys:  # the fp8_scaled files: a layer per scale_weight (their scaled_fp8 marker names no layer)
        if key.endswith(".scale_weight"):
            layer = key[: -len(".scale_weight")]
            layers.setdefault(layer, LayerQuant(layer, LEGACY_FORMAT))
    return layers


def is_legacy_marker(key: str) -> bool:
    """The ``fp8_scaled`` files' ``scaled_fp8`` marker (an empty tensor, never a model tensor)."""
    return key == LEGACY_MARKER or key.endswith("." + LEGACY_MARKER)


def is_aux_key(key: str, layers: Mapping[str, LayerQuant], legacy: bool) -> bool:
    """Whether ``key`` is a marker or a scale of a quantised layer (or, in an ``fp8_scaled`` file, any
    ``scaled_fp8`` / ``scale_weight`` / ``scale_input`` key): consumed, not a model tensor."""
    if is_legacy_marker(key) or legacy and key.endswith((".scale_weight", ".scale_input")):
        return True
    layer, _, suffix = key.rpartition(".")
    return suffix in AUX_SUFFIXES and layer in layers


# -- the formats ------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def hadamard(size: int) -> torch.Tensor:
    """The normalised regular Hadamard matrix of ``size`` (a power of 4), float32 (symmetric, orthogonal; shared,
    never written)."""
    if size < 4 or size & (size - 1) or (size.bit_length() - 1) % 2:
        raise _LayerError(f"convrot_groupsize {size} is not a power of 4")
    h4 = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    return h / size ** 0.5


def rotate_back(w: torch.Tensor, group: int) -> torch.Tensor:
    """ConvRot's rotation undone on a ``[N, K]`` float32 weight: each ``group`` input columns times ``Hᵀ``."""
    n, k = w.shape
    if k % group:
        raise _LayerError(f"{k} input columns are not a multiple of convrot_groupsize {group}")
    return (w.reshape(n, k // group, group) @ hadamard(group).T).reshape(n, k)


def _need(aux: Mapping[str, torch.Tensor], suffix: str) -> torch.Tensor:
    t = aux.get(suffix)
    if t is None:
        raise _LayerError(f"it has no {suffix}")
    return t


def _as_float8(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if t.dtype == dtype:
        return t
    if t.dtype in (torch.uint8, torch.int8):
        return t.view(dtype)
    return t.to(dtype)


def _two_d(q: torch.Tensor, what: str) -> None:
    if q.ndim != 2:
        raise _LayerError(f"{what} weights must be 2-D, got shape {tuple(q.shape)}")


def _fp8(dtype: torch.dtype):
    def run(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
        scale = aux.get("weight_scale")
        w = _as_float8(q, dtype).float()
        return w if scale is None else w * scale.float()
    return run


def _legacy_fp8(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    return q.float() * _need(aux, "scale_weight").float()


def _row_scale(scale: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A scalar, or one scale per row shaped to broadcast over ``q``."""
    scale = scale.float()
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() != q.shape[0]:
        raise _LayerError(f"weight_scale has {scale.numel()} values for {q.shape[0]} rows")
    return scale.reshape(q.shape[0], *([1] * (q.ndim - 1)))


def _int8(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    w = q.to(torch.int8).float() * _row_scale(_need(aux, "weight_scale"), q)
    if quant.option("convrot", False):
        _two_d(q, "ConvRot INT8")
        w = rotate_back(w, int(quant.option("convrot_groupsize", 256)))
    return w


def unswizzle(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """cuBLAS's block-scale layout (128×4 tiles, each stored as 32 rows of 4×4) back to ``[rows, cols]``."""
    rb, cb = -(-rows // 128), -(-cols // 4)
    if blocked.numel() != rb * cb * 512:
        raise _LayerError(f"the block scales hold {blocked.numel()} values, not the {rb * cb * 512} of "
                          f"{rows}×{cols} blocks in 128×4 tiles")
    tiles = blocked.reshape(rb, cb, 32, 4, 4).permute(0, 3, 2, 1, 4)  # (row tile, a, b, col tile, c)
    return tiles.reshape(rb * 128, cb * 4)[:rows, :cols]


def _mxfp8(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    _two_d(q, "MXFP8")
    rows, cols = q.shape
    if cols % 32:
        raise _LayerError(f"{cols} columns are not a multiple of MXFP8's 32-column blocks")
    exps = _need(aux, "weight_scale")
    exps = exps.view(torch.uint8) if exps.element_size() == 1 else exps.to(torch.uint8)
    exps = unswizzle(exps, rows, cols // 32).to(torch.int32)
    scale = torch.where(exps == 0, torch.zeros((), dtype=torch.float32),
                        torch.exp2((exps - 127).to(torch.float32)))
    w = _as_float8(q, torch.float8_e4m3fn).float().reshape(rows, cols // 32, 32)
    return (w * scale.unsqueeze(-1)).reshape(rows, cols)


def _nvfp4(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    _two_d(q, "NVFP4")
    rows, cols = q.shape[0], q.shape[1] * 2
    if cols % 16:
        raise _LayerError(f"{cols} columns are not a multiple of NVFP4's 16-column blocks")
    packed = q.view(torch.uint8).to(torch.int64)
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=-1).reshape(rows, cols)  # high nibble first
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32)[codes]
    blocks = unswizzle(_as_float8(_need(aux, "weight_scale"), torch.float8_e4m3fn).float(), rows, cols // 16)
    scale = _need(aux, "weight_scale_2").float().reshape(()) * blocks
    return (values.reshape(rows, cols // 16, 16) * scale.unsqueeze(-1)).reshape(rows, cols)


def _nibbles(q: torch.Tensor, signed: bool) -> torch.Tensor:
    """``[N, K/2]`` bytes → ``[N, K]`` int32, low nibble = even column."""
    packed = q.view(torch.uint8).to(torch.int32)
    lo, hi = packed & 0x0F, (packed >> 4) & 0x0F
    if signed:
        lo, hi = torch.where(lo >= 8, lo - 16, lo), torch.where(hi >= 8, hi - 16, hi)
    return torch.stack([lo, hi], dim=-1).reshape(q.shape[0], -1)


def _convrot_w4a4(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    _two_d(q, "ConvRot W4A4")
    w = _nibbles(q, signed=True).float()
    scale = _need(aux, "weight_scale").float()
    if scale.numel() != w.shape[0]:
        raise _LayerError(f"weight_scale has {scale.numel()} values for {w.shape[0]} rows")
    return rotate_back(w * scale.reshape(-1, 1), int(quant.option("convrot_groupsize", 256)))


def _w4a8_codes(q: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    packed = q.view(torch.uint8).to(torch.int32)
    low = packed[:, : k // 2]
    codes = torch.stack([low & 0x0F, (low >> 4) & 0x0F], dim=-1).reshape(q.shape[0], k)
    if bits == 6:  # byte b of the high plane: the top 2 bits of columns 4b..4b+3 at bits 0, 2, 4, 6
        hi = (packed[:, k // 2:].unsqueeze(-1) >> torch.tensor([0, 2, 4, 6], dtype=torch.int32)) & 0x3
        codes = codes | (hi.reshape(q.shape[0], k) << 4)
    return codes


def _w4a8(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    if q.ndim != 2:
        raise _LayerError("W4A8 weights must be the canonical 2-D layout (the GEMV-packed 1-D one is "
                          "resident-only)")
    group = int(quant.option("group_size", 16))
    s_rel = _as_float8(_need(aux, "weight_s_rel"), torch.float8_e4m3fn).float()
    n, k = q.shape[0], s_rel.shape[1] * group
    bits = q.shape[1] * 8 // k if k else 0
    if bits not in (4, 6) or bits * k != q.shape[1] * 8 or s_rel.shape[0] != n:
        raise _LayerError(f"packed rows of {q.shape[1]} bytes do not fit K={k} at 4 or 6 bits")
    codes = _w4a8_codes(q, k, bits)
    codebook = aux.get("weight_codebook")
    values = codebook.float()[codes] if codebook is not None else codes.float() - float(1 << (bits - 1))
    grid = (values.reshape(n, k // group, group) * s_rel.unsqueeze(-1)).round().clamp(-127, 127)
    w = grid * _need(aux, "weight_s_channel").float().reshape(n, 1, 1)
    correction = aux.get("weight_correction")
    if correction is not None:
        w = w + correction.float().t().unsqueeze(-1)
    return rotate_back(w.reshape(n, k), int(quant.option("convrot_groupsize", 256)))


def _awq(q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant) -> torch.Tensor:
    _two_d(q, "AWQ W4A16")
    codes = _nibbles(q, signed=False).float()
    n, k = codes.shape
    group = int(quant.option("group_size", 64))
    if k % group:
        raise _LayerError(f"{k} columns are not a multiple of group_size {group}")
    scale = _need(aux, "weight_scale").float().t().unsqueeze(-1)
    zeros = _need(aux, "weight_zeros").float().t().unsqueeze(-1)
    return ((codes.reshape(n, k // group, group) - 8.0) * scale + zeros).reshape(n, k)


#: format name (``comfy_quant``'s ``format``) → dequantiser ``(weight, aux tensors by suffix, layer) → float32``
FORMATS: dict[str, Callable[[torch.Tensor, Mapping[str, torch.Tensor], LayerQuant], torch.Tensor]] = {
    "float8_e4m3fn": _fp8(torch.float8_e4m3fn),
    "float8_e5m2": _fp8(torch.float8_e5m2),
    LEGACY_FORMAT: _legacy_fp8,
    "int8_tensorwise": _int8,
    "mxfp8": _mxfp8,
    "nvfp4": _nvfp4,
    "convrot_w4a4": _convrot_w4a4,
    "asym_w4a8_int8": _w4a8,
    "awq_w4a16": _awq,
}


#: rows are dequantised at most this many stored elements at a time, so that no float32 copy of a whole big
#: weight (a 150k-token embedding, a wide MLP) is ever held
CHUNK_ELEMENTS = 1 << 24
#: per format, the scales that run along the weight's rows (suffix → their axis of rows); the formats not listed
#: (mxfp8, nvfp4: scales in 128-row tiles) are dequantised whole
ROW_SCALES: dict[str, dict[str, int]] = {
    "float8_e4m3fn": {}, "float8_e5m2": {}, LEGACY_FORMAT: {}, "int8_tensorwise": {"weight_scale": 0},
    "convrot_w4a4": {"weight_scale": 0},
    "asym_w4a8_int8": {"weight_s_rel": 0, "weight_s_channel": 0, "weight_correction": 1},
    "awq_w4a16": {"weight_scale": 1, "weight_zeros": 1},
}


def _finish(w: torch.Tensor, aux: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    pre = aux.get("pre_quant_scale")  # AWQ-style smoothing of the inputs, folded into the columns
    if pre is not None:
        w = w * pre.float().reshape(*([1] * (w.ndim - 1)), -1)
    return w.to(dtype)


def _row_slice(aux: Mapping[str, torch.Tensor], axes: Mapping[str, int], rows: int, start: int,
               stop: int) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in aux.items():
        axis = axes.get(name)
        if axis is not None and t.ndim > axis and t.shape[axis] == rows:
            t = t.narrow(axis, start, stop - start)
        out[name] = t
    return out


def _by_rows(run, q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant,
             dtype: torch.dtype) -> torch.Tensor:
    """``run`` on ``q``, in ``dtype``: row chunk by row chunk into one output where the format allows."""
    axes = ROW_SCALES.get(quant.format)
    if q.ndim != 2 or axes is None or q.numel() <= CHUNK_ELEMENTS:
        return _finish(run(q, aux, quant), aux, dtype)
    rows, step = q.shape[0], max(1, CHUNK_ELEMENTS // q.shape[1])
    out = None
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        part = _finish(run(q[start:stop], _row_slice(aux, axes, rows, start, stop), quant), aux, dtype)
        if out is None:
            out = torch.empty((rows, *part.shape[1:]), dtype=dtype)
        out[start:stop] = part
    return out


def _per_expert(run, q: torch.Tensor, aux: Mapping[str, torch.Tensor], quant: LayerQuant,
                dtype: torch.dtype) -> torch.Tensor:
    """A 3-D bank ``[E, N, K]`` (ComfyUI's MoE experts): each expert dequantised with its slice of every
    scale whose first dimension is E (a shared scale or codebook as it is)."""
    experts = q.shape[0]

    def part(name: str, t: torch.Tensor, i: int) -> torch.Tensor:
        per_expert = t.ndim >= 1 and t.shape[0] == experts and (name != "weight_codebook" or t.ndim == 2)
        return t[i] if per_expert else t

    return torch.stack([_by_rows(run, q[i], {n: part(n, t, i) for n, t in aux.items()}, quant, dtype)
                        for i in range(experts)])


def dequantize_weight(quant: LayerQuant, weight: torch.Tensor, aux: Mapping[str, torch.Tensor], name: str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight of the quantised layer ``quant`` of file ``name`` in ``dtype`` (computed in float32, rounded
    once) from its stored ``weight`` and its ``aux`` tensors (by suffix: ``weight_scale`` …)."""
    run = FORMATS.get(quant.format)
    if run is None:
        raise ModelFileError(
            f"{name}: layer {quant.layer} is quantised as {quant.format!r}, a format nodegraph cannot dequantise "
            f"(it reads {', '.join(sorted(f for f in FORMATS if f != LEGACY_FORMAT))} and the fp8_scaled "
            "files); use the bf16 or fp8 release")
    try:
        if weight.ndim == 3 and quant.option("num_experts", None) is not None:
            return _per_expert(run, weight, aux, quant, dtype)
        return _by_rows(run, weight, aux, quant, dtype)
    except _LayerError as exc:
        raise ModelFileError(f"{name}: layer {quant.layer} ({quant.format}) cannot be dequantised: {exc}") from None
    except (RuntimeError, IndexError, ValueError) as exc:
        raise ModelFileError(f"{name}: layer {quant.layer}'s {quant.format} tensors do not fit the format "
                             f"(weight {tuple(weight.shape)} {weight.dtype}: {exc})") from None


# -- whole files ------------------------------------------------------------------------------------

def _floating(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize >= 2


def output_dtype(sizes: Mapping[torch.dtype, int]) -> torch.dtype:
    """The dtype dequantised weights take: the one holding most bytes among the file's unquantised
    floating tensors (``sizes``: bytes per dtype), bf16 when there are none."""
    floats = {d: n for d, n in sizes.items() if _floating(d)}
    return max(floats, key=floats.get) if floats else torch.bfloat16


def _aux_of(layer: str, has: Callable[[str], bool], read: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    return {s: read(f"{layer}.{s}") for s in AUX_SUFFIXES if s != MARKER and has(f"{layer}.{s}")}


def dequantize_state_dict(sd: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                          dtype: DtypeRule = None, name: str = "this file") -> dict[str, Any]:
    """``sd`` (already in memory) with its quantised layers dequantised to ``dtype`` (see :data:`DtypeRule`) and
    their markers and scales dropped; ``sd`` itself when nothing is quantised."""
    layers = find_layers(sd.keys(), metadata, sd.__getitem__, name)
    if not layers:
        if any(is_legacy_marker(k) for k in sd):
            return {k: v for k, v in sd.items() if not is_legacy_marker(k)}
        return dict(sd) if not isinstance(sd, dict) else sd
    legacy = any(q.format == LEGACY_FORMAT for q in layers.values())
    weights = {q.weight_key: q for q in layers.values()}
    sizes: dict[torch.dtype, int] = {}
    for key, value in sd.items():
        if isinstance(value, torch.Tensor) and key not in weights and not is_aux_key(key, layers, legacy):
            sizes[value.dtype] = sizes.get(value.dtype, 0) + value.numel() * value.element_size()
    dtype = _pick_dtype(dtype, sizes)
    out = {}
    for key, value in sd.items():
        if is_aux_key(key, layers, legacy):
            continue
        quant = weights.get(key)
        if quant is not None:
            value = dequantize_weight(quant, value, _aux_of(quant.layer, sd.__contains__, sd.__getitem__),
                                      name, dtype)
        out[key] = value
    return out


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _pick_dtype(dtype, sizes: Mapping[torch.dtype, int]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    floats = {d: n for d, n in sizes.items() if _floating(d)}
    if dtype is None:
        return output_dtype(floats)
    return dtype(max(floats, key=floats.get) if floats else None)


def read_safetensors(path: Path, dtype: DtypeRule = None,
                     want: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file on the CPU (those whose name ``want`` accepts, default all), its
    quantised layers dequantised one at a time as they are read (the file stays memory-mapped; no second copy of
    the quantised weights is held) to ``dtype`` (see :data:`DtypeRule`); markers and scales are not returned."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        keys = list(fh.keys())
        layers = find_layers(keys, fh.metadata(), fh.get_tensor, path.name)
        if not layers:
            return {k: fh.get_tensor(k) for k in keys if (want is None or want(k)) and not is_legacy_marker(k)}
        keyset = set(keys)
        legacy = any(q.format == LEGACY_FORMAT for q in layers.values())
        weights = {q.weight_key: q for q in layers.values()}
        missing = [q.layer for q in layers.values() if q.weight_key not in keyset]
        if missing:
            raise ModelFileError(f"{path.name}: the quantised layer {missing[0]} has no weight in the file")
        plain = [k for k in keys if k not in weights and not is_aux_key(k, layers, legacy)]
        sizes: dict[torch.dtype, int] = {}
        if not isinstance(dtype, torch.dtype):
            for key in plain:
                part = fh.get_slice(key)
                d = _SAFETENSORS_DTYPES.get(part.get_dtype())
                if d is not None:
                    numel = 1
                    for s in part.get_shape():
                        numel *= int(s)
                    sizes[d] = sizes.get(d, 0) + numel * d.itemsize
        dtype = _pick_dtype(dtype, sizes)
        plainset = set(plain)
        out: dict[str, torch.Tensor] = {}
        for key in keys:
            if want is not None and not want(key):
                continue
            quant = weights.get(key)
            if quant is not None:
                aux = _aux_of(quant.layer, keyset.__contains__, fh.get_tensor)
                out[key] = dequantize_weight(quant, fh.get_tensor(key), aux, path.name, dtype)
            elif key in plainset:
                out[key] = fh.get_tensor(key)
        return out
