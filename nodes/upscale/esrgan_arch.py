"""Real-ESRGAN's two upscaler architectures in plain torch, built from a state dict alone.

* **RRDBNet** (ESRGAN, Real-ESRGAN x4plus/x2plus, 4x-UltraSharp …), as in basicsr: ``conv_first``,
  ``body.N.rdb{1,2,3}.conv{1..5}`` (residual dense blocks, residual scale 0.2), ``conv_body``, nearest
  ×2 steps ``conv_up1``, ``conv_up2`` …, ``conv_hr``, ``conv_last``, LeakyReLU(0.2). x2/x1 models
  pixel-unshuffle the input first (``conv_first`` then takes 3·4 or 3·16 channels). The old ESRGAN key
  layout (``model.0``, ``model.1.sub.N.RDB1.conv1.0``, ``model.1.sub.<last>``, ``model.3`` …) is renamed
  to this one by :func:`from_old_esrgan`.
* **SRVGGNetCompact** (realesr-animevideov3, realesr-general-x4v3): ``body.0`` conv, PReLU, then
  ``num_conv`` × (conv, PReLU), a last conv to ``3·scale²`` channels, pixel shuffle, plus the input
  upsampled nearest.

:func:`detect` reads the architecture and every hyper-parameter from the tensors' names and shapes
(an :class:`ArchSpec`); :func:`build` makes the network and loads the weights (strictly).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

RRDB = "RRDBNet"
COMPACT = "SRVGGNetCompact"


class ArchError(ValueError):
    """A state dict is not one of the known upscaler layouts (the message says what was recognised)."""


@dataclass(frozen=True)
class ArchSpec:
    """An upscaler's architecture and hyper-parameters, as read from its state dict."""

    arch: str            # RRDB or COMPACT
    scale: int           # output pixels per input pixel, per side
    in_channels: int = 3
    out_channels: int = 3
    num_feat: int = 64
    num_block: int = 0   # RRDBNet: RRDB blocks
    num_grow_ch: int = 0  # RRDBNet: growth channels of the dense blocks
    num_upsample: int = 2  # RRDBNet: nearest ×2 steps (conv_up1 …)
    unshuffle: int = 1   # RRDBNet: pixel-unshuffle factor at the input (2 for x2, 4 for x1)
    num_conv: int = 0    # SRVGGNetCompact: body convs between the first and the last


# -- RRDBNet ----------------------------------------------------------------------------------------

class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        for i in range(5):
            out = num_feat if i == 4 else num_grow_ch
            setattr(self, f"conv{i + 1}", nn.Conv2d(num_feat + i * num_grow_ch, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDBlock(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """basicsr's RRDBNet; ``unshuffle`` 2 / 4 gives its x2 / x1 variants, ``num_upsample`` 1 / 3 old x2 / x8."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, num_upsample: int = 2, unshuffle: int = 1) -> None:
        super().__init__()
        self.unshuffle = unshuffle
        self.num_upsample = num_upsample
        self.conv_first = nn.Conv2d(in_channels * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDBlock(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for i in range(num_upsample):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.num_upsample):
            up = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(getattr(self, f"conv_up{i + 1}")(up), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


# -- SRVGGNetCompact --------------------------------------------------------------------------------

class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style network (PReLU activations)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_feat: int = 64, num_conv: int = 16,
                 scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(in_channels, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, out_channels * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# -- key layouts ------------------------------------------------------------------------------------

_OLD_RDB = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_BODY_CONV = re.compile(r"^model\.1\.sub\.(\d+)\.(weight|bias)$")
_OLD_TOP = re.compile(r"^model\.(\d+)\.(weight|bias)$")


def is_old_esrgan(state: Mapping[str, torch.Tensor]) -> bool:
    return "model.0.weight" in state and any(_OLD_RDB.match(k) for k in state)


def from_old_esrgan(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The old ESRGAN keys renamed to basicsr's RRDBNet keys (other keys are kept, so a strict load fails)."""
    tops = sorted({int(m.group(1)) for k in state if (m := _OLD_TOP.match(k)) and int(m.group(1)) > 1})
    if len(tops) < 2:
        raise ArchError(f"old ESRGAN layout without conv_hr/conv_last (model.N convs after the body: {tops})")
    names = {0: "conv_first", **{n: f"conv_up{i + 1}" for i, n in enumerate(tops[:-2])}}
    names[tops[-2]], names[tops[-1]] = "conv_hr", "conv_last"
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := _OLD_RDB.match(key):
            block, rdb, conv, kind = m.groups()
            new[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif m := _OLD_BODY_CONV.match(key):
            new[f"conv_body.{m.group(2)}"] = value
        elif (m := _OLD_TOP.match(key)) and int(m.group(1)) in names:
            new[f"{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            new[key] = value
    return new


def _shape(state: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    value = state.get(key)
    if value is None or value.ndim != ndim:
        raise ArchError(f"expected a {ndim}-d tensor {key!r}, found "
                        f"{'none' if value is None else list(value.shape)}")
    return tuple(value.shape)


def _rrdb_spec(state: Mapping[str, torch.Tensor]) -> ArchSpec:
    num_feat, first_in = _shape(state, "conv_first.weight", 4)[:2]
    out_channels = _shape(state, "conv_last.weight", 4)[0]
    num_grow_ch = _shape(state, "body.0.rdb1.conv1.weight", 4)[0]
    num_block = len({int(k.split(".")[1]) for k in state if re.match(r"^body\.\d+\.rdb1\.conv1\.weight$", k)})
    num_upsample = len({k for k in state if re.match(r"^conv_up\d+\.weight$", k)})
    ratio = first_in // out_channels if first_in % out_channels == 0 else 0
    unshuffle = math.isqrt(ratio) if ratio else 0
    if unshuffle < 1 or unshuffle * unshuffle != ratio or unshuffle & (unshuffle - 1):
        raise ArchError(f"conv_first takes {first_in} channels, conv_last gives {out_channels}: not an "
                        "RGB upscaler with a pixel-unshuffle factor of 1, 2 or 4")
    if (1 << num_upsample) % unshuffle:
        raise ArchError(f"{num_upsample} ×2 steps after a ×1/{unshuffle} pixel unshuffle is no integer scale")
    return ArchSpec(RRDB, (1 << num_upsample) // unshuffle, first_in // (unshuffle * unshuffle), out_channels,
                    num_feat, num_block, num_grow_ch, num_upsample, unshuffle)


def _compact_spec(state: Mapping[str, torch.Tensor]) -> ArchSpec:
    num_feat, in_channels = _shape(state, "body.0.weight", 4)[:2]
    if _shape(state, "body.1.weight", 1) != (num_feat,):
        raise ArchError(f"body.1.weight (PReLU) should have {num_feat} values")
    last = max(int(k.split(".")[1]) for k in state if re.match(r"^body\.\d+\.weight$", k))
    out = _shape(state, f"body.{last}.weight", 4)[0]
    scale = math.isqrt(out // in_channels) if out % in_channels == 0 else 0
    if last % 2 or scale < 1 or scale * scale * in_channels != out:
        raise ArchError(f"the last conv body.{last} gives {out} channels, not {in_channels}·scale²")
    return ArchSpec(COMPACT, scale, in_channels, in_channels, num_feat, num_conv=(last - 2) // 2)


def normalise(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict in the layout :func:`build` loads (old ESRGAN keys renamed)."""
    return from_old_esrgan(state) if is_old_esrgan(state) else dict(state)


def detect(state: Mapping[str, torch.Tensor]) -> ArchSpec:
    """The architecture of a (normalised) state dict, or an :class:`ArchError` saying what was recognised."""
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        try:
            return _rrdb_spec(state)
        except ArchError as exc:
            raise ArchError(f"recognised an RRDBNet (ESRGAN) layout, but {exc}") from None
    if "body.0.weight" in state and "body.1.weight" in state:
        try:
            return _compact_spec(state)
        except ArchError as exc:
            raise ArchError(f"recognised an SRVGGNetCompact layout, but {exc}") from None
    sample = ", ".join(list(state)[:4]) or "no tensors"
    raise ArchError(f"no known upscaler layout in its {len(state)} tensors ({sample} …); recognised are "
                    "RRDBNet/ESRGAN (conv_first.*, body.N.rdb1.* or old model.0.*, model.1.sub.N.RDB1.*) and "
                    "SRVGGNetCompact (body.0.weight with a PReLU body.1.weight)")


def build(state: Mapping[str, torch.Tensor]) -> tuple[nn.Module, ArchSpec]:
    """The network for a state dict in either layout, weights loaded strictly, in eval mode."""
    state = normalise(state)
    spec = detect(state)
    if spec.arch == RRDB:
        net: nn.Module = RRDBNet(spec.in_channels, spec.out_channels, spec.num_feat, spec.num_block,
                                 spec.num_grow_ch, spec.num_upsample, spec.unshuffle)
    else:
        net = SRVGGNetCompact(spec.in_channels, spec.out_channels, spec.num_feat, spec.num_conv, spec.scale)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ArchError(f"recognised a {spec.arch} layout, but its tensors do not fit it: {detail}") from None
    return net.eval().requires_grad_(False), spec


__all__ = ["ArchError", "ArchSpec", "COMPACT", "RRDB", "RRDBNet", "SRVGGNetCompact", "build", "detect",
           "from_old_esrgan", "normalise"]
