"""MoGe-2 network (Microsoft's monocular geometry model, MIT): a DINOv2 ViT encoder (transformers'
``Dinov2Model``) whose chosen layers are projected and summed, a conv "neck" over a 5-level pyramid of
view-plane UV maps, and conv heads for the affine point map, the normal map and the mask, with an MLP on the
class token for the metric scale. Written from the published architecture; the file layout is the official
checkpoint's state dict (``encoder.backbone.blocks.N.attn.qkv`` …, what ComfyUI's
``models/geometry_estimation/moge_2_*.safetensors`` hold), mapped to ours by :func:`load_moge`.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

#: DINOv2's ImageNet normalisation
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
#: the DINOv2 patch side
PATCH = 14
#: base tokens at resolution level 0 and 9 (MoGe-2)
NUM_TOKENS_RANGE = (1200, 3600)


class MoGeFileError(ValueError):
    """A file that is not a MoGe-2 checkpoint; the message names the file and what is missing."""


@dataclass(frozen=True)
class ConvStackConfig:
    dim_in: list[int | None]
    dim_res_blocks: list[int]
    dim_out: list[int | None]
    resamplers: list[str]
    num_res_blocks: list[int]
    hidden_mult: int = 1


@dataclass(frozen=True)
class MoGeConfig:
    hidden_size: int
    num_layers: int
    mlp_ratio: int
    pretrain_grid: int
    intermediate_layers: list[int]
    dim_proj: int
    neck: ConvStackConfig
    heads: dict[str, ConvStackConfig] = field(default_factory=dict)
    scale_dims: list[int] | None = None
    remap_output: str = "exp"


class ResidualConvBlock(nn.Module):
    """norm → ReLU → 3x3 conv → norm → ReLU → 3x3 conv, plus the input (replicate padding; the first norm a
    one-group GroupNorm, the second GroupNorm with 32 channels a group)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.GroupNorm(1, dim), nn.ReLU(),
            nn.Conv2d(dim, hidden, 3, padding=1, padding_mode="replicate"),
            nn.GroupNorm(max(hidden // 32, 1), hidden), nn.ReLU(),
            nn.Conv2d(hidden, dim, 3, padding=1, padding_mode="replicate"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def _resampler(kind: str, dim_in: int, dim_out: int) -> nn.Sequential:
    """A 2x upsampler: ``conv_transpose`` (2x2 transposed conv, 3x3 conv) or ``bilinear`` (upsample, 3x3 conv)."""
    conv = nn.Conv2d(dim_out if kind == "conv_transpose" else dim_in, dim_out, 3, padding=1, padding_mode="replicate")
    if kind == "conv_transpose":
        return nn.Sequential(nn.ConvTranspose2d(dim_in, dim_out, 2, stride=2), conv)
    if kind in ("bilinear", "nearest"):
        return nn.Sequential(nn.Upsample(scale_factor=2, mode=kind, align_corners=False if kind == "bilinear" else None),
                             conv)
    raise MoGeFileError(f"MoGe resampler {kind!r} is not supported")


class ConvStack(nn.Module):
    """Levels of residual blocks, each level 2x the previous; level i adds ``input_blocks[i]`` of input i and
    emits ``output_blocks[i]``."""

    def __init__(self, cfg: ConvStackConfig):
        super().__init__()
        self.input_blocks = nn.ModuleList(
            nn.Conv2d(i, d, 1) if i is not None else nn.Identity() for i, d in zip(cfg.dim_in, cfg.dim_res_blocks))
        self.resamplers = nn.ModuleList(
            _resampler(k, a, b) for k, a, b in zip(cfg.resamplers, cfg.dim_res_blocks[:-1], cfg.dim_res_blocks[1:]))
        self.res_blocks = nn.ModuleList(
            nn.Sequential(*(ResidualConvBlock(d, cfg.hidden_mult * d) for _ in range(n)))
            for d, n in zip(cfg.dim_res_blocks, cfg.num_res_blocks))
        self.output_blocks = nn.ModuleList(
            nn.Conv2d(d, o, 1) if o is not None else nn.Identity() for o, d in zip(cfg.dim_out, cfg.dim_res_blocks))

    def forward(self, inputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
        outs = []
        x = None
        for i, block in enumerate(self.res_blocks):
            feature = self.input_blocks[i](inputs[i]) if inputs[i] is not None else None
            x = feature if i == 0 else (x + feature if feature is not None else x)
            x = block(x)
            outs.append(self.output_blocks[i](x))
            if i < len(self.res_blocks) - 1:
                x = self.resamplers[i](x)
        return outs


def _pos_encoding_with_offset(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's original position-embedding resize: bicubic by scale factors ``(n + 0.1) / M`` (not by output
    size as transformers does), which is what MoGe's backbone computes."""
    n_patch = embeddings.shape[1] - 1
    pos = self.position_embeddings
    n_pos = pos.shape[1] - 1
    if n_patch == n_pos and height == width:
        return pos
    m = int(math.sqrt(n_pos))
    h0, w0 = height // PATCH, width // PATCH
    grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)


def _dinov2(cfg: MoGeConfig) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    conf = Dinov2Config(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                        num_attention_heads=max(cfg.hidden_size // 64, 1), mlp_ratio=cfg.mlp_ratio,
                        image_size=cfg.pretrain_grid * PATCH, patch_size=PATCH, layer_norm_eps=1e-6,
                        layerscale_value=1.0, use_swiglu_ffn=False, hidden_act="gelu")
    model = Dinov2Model(conf)
    model.embeddings.interpolate_pos_encoding = types.MethodType(_pos_encoding_with_offset, model.embeddings)
    return model


def view_plane_uv(height: int, width: int, aspect: float, dtype=None, device=None) -> torch.Tensor:
    """(H, W, 2) UV of pixel centres on the view plane, corners at ±(width, height) / diagonal."""
    span_x = aspect / (1 + aspect ** 2) ** 0.5
    span_y = 1 / (1 + aspect ** 2) ** 0.5
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype,
                       device=device)
    u, v = torch.meshgrid(u, v, indexing="xy")
    return torch.stack([u, v], dim=-1)


class MoGeNet(nn.Module):
    """MoGe-2: image (B, 3, H, W) in 0..1 → raw ``points`` (B, H, W, 3), ``mask`` probabilities (B, H, W),
    ``normal`` (B, H, W, 3, unit) and ``metric_scale`` (B,), each present when the file has its head."""

    def __init__(self, cfg: MoGeConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = _dinov2(cfg)
        self.output_projections = nn.ModuleList(
            nn.Conv2d(cfg.hidden_size, cfg.dim_proj, 1) for _ in cfg.intermediate_layers)
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        self.neck = ConvStack(cfg.neck)
        self.heads = nn.ModuleDict({name: ConvStack(c) for name, c in cfg.heads.items()})
        if cfg.scale_dims:
            dims = cfg.scale_dims
            layers: list[nn.Module] = []
            for a, b in zip(dims[:-2], dims[1:-1]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.scale_head = nn.Sequential(*layers, nn.Linear(dims[-2], dims[-1]))
        else:
            self.scale_head = None

    def encode(self, image: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(image, (rows * PATCH, cols * PATCH), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.image_mean.to(x)) / self.image_std.to(x)
        hidden = self.backbone(pixel_values=x, output_hidden_states=True).hidden_states
        norm = self.backbone.layernorm
        feats = [norm(hidden[i + 1]) for i in self.cfg.intermediate_layers]
        grid = sum(proj(f[:, 1:].permute(0, 2, 1).unflatten(2, (rows, cols)).contiguous())
                   for proj, f in zip(self.output_projections, feats))
        return grid, feats[-1][:, 0]

    def _remap(self, points: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.remap_output
        if kind == "linear":
            return points
        xy, z = points.split([2, 1], dim=-1)
        if kind == "exp":
            z = torch.exp(z)
            return torch.cat([xy * z, z], dim=-1)
        if kind == "sinh_exp":
            return torch.cat([torch.sinh(xy), torch.exp(z)], dim=-1)
        if kind == "sinh":
            return torch.sinh(points)
        raise MoGeFileError(f"MoGe remap_output {kind!r} is not supported")

    def forward(self, image: torch.Tensor, num_tokens: int) -> dict[str, torch.Tensor]:
        b, _, h, w = image.shape
        aspect = w / h
        rows, cols = round((num_tokens / aspect) ** 0.5), round((num_tokens * aspect) ** 0.5)
        grid, cls = self.encode(image, rows, cols)
        levels: list[torch.Tensor] = []
        for level in range(5):
            uv = view_plane_uv(rows * 2 ** level, cols * 2 ** level, aspect, grid.dtype, grid.device)
            levels.append(uv.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1))
        levels[0] = torch.cat([grid, levels[0]], dim=1)
        feats = self.neck(levels)
        out: dict[str, torch.Tensor] = {}
        for name, head in self.heads.items():
            y = F.interpolate(head(feats)[-1], (h, w), mode="bilinear", align_corners=False)
            if name == "points":
                out["points"] = self._remap(y.permute(0, 2, 3, 1))
            elif name == "normal":
                out["normal"] = F.normalize(y.permute(0, 2, 3, 1), dim=-1)
            else:
                out["mask"] = y.squeeze(1).sigmoid()
        if self.scale_head is not None:
            out["metric_scale"] = self.scale_head(cls).squeeze(1).exp()
        return out


# ---- the official checkpoint layout → ours -------------------------------------------------------------

_BACKBONE = "encoder.backbone."
_BLOCK_RENAMES = (("norm1.", "norm1."), ("norm2.", "norm2."), ("attn.proj.", "attention.o_proj."),
                  ("ls1.gamma", "layer_scale1.lambda1"), ("ls2.gamma", "layer_scale2.lambda1"),
                  ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))
_TOP_RENAMES = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
                "mask_token": "embeddings.mask_token", "patch_embed.proj.weight":
                "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.bias":
                "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
                "norm.bias": "layernorm.bias"}
_HEADS = {"points_head.": "points", "normal_head.": "normal", "mask_head.": "mask"}


def _indices(sd: dict, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for k in sd if (m := pat.match(k))})


def _conv_stack_config(sd: dict, prefix: str, name: str) -> ConvStackConfig:
    levels = _indices(sd, prefix + "res_blocks.")
    if not levels:
        raise MoGeFileError(f"{name}: no {prefix}res_blocks.* weights")
    n = levels[-1] + 1
    dims, counts, hidden = [], [], 1
    for i in range(n):
        blocks = _indices(sd, f"{prefix}res_blocks.{i}.")
        conv = sd[f"{prefix}res_blocks.{i}.0.layers.2.weight"]
        dims.append(int(conv.shape[1]))
        hidden = int(conv.shape[0]) // int(conv.shape[1])
        counts.append(len(blocks))
    dim_in = [int(sd[f"{prefix}input_blocks.{i}.weight"].shape[1]) if f"{prefix}input_blocks.{i}.weight" in sd
              else None for i in range(n)]
    dim_out = [int(sd[f"{prefix}output_blocks.{i}.weight"].shape[0]) if f"{prefix}output_blocks.{i}.weight" in sd
               else None for i in range(n)]
    resamplers = []
    for i in range(n - 1):
        first = sd.get(f"{prefix}resamplers.{i}.0.weight")
        if first is None:
            resamplers.append("bilinear")
        elif first.shape[-1] == 2 and first.shape[0] == dims[i]:
            resamplers.append("conv_transpose")
        else:
            raise MoGeFileError(f"{name}: {prefix}resamplers.{i} is a pixel-shuffle resampler (not supported)")
    return ConvStackConfig(dim_in, dims, dim_out, resamplers, counts, hidden)


_TRANSFORMERS_TOP = {v: k for k, v in _TOP_RENAMES.items()}
_TRANSFORMERS_BLOCK = (("attention.output.dense.", "attn.proj."), ("layer_scale1.lambda1", "ls1.gamma"),
                       ("layer_scale2.lambda1", "ls2.gamma"), ("norm1.", "norm1."), ("norm2.", "norm2."),
                       ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))


def meta_names(sd: dict) -> dict:
    """A state dict whose backbone is in transformers-style names (``encoder.backbone.embeddings.cls_token``,
    ``encoder.layer.N.attention.attention.query`` …, the names ComfyUI's own DINOv2 port uses) back in Meta's
    (``cls_token``, ``blocks.N.attn.qkv``); other state dicts are returned as they are."""
    if f"{_BACKBONE}embeddings.cls_token" not in sd:
        return sd
    out: dict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not key.startswith(_BACKBONE):
            out[key] = value
            continue
        rel = key[len(_BACKBONE):]
        if rel in _TRANSFORMERS_TOP:
            out[_BACKBONE + _TRANSFORMERS_TOP[rel]] = value
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.*)", rel)
        if m is None:
            out[key] = value
            continue
        block, sub = f"{_BACKBONE}blocks.{m[1]}.", m[2]
        a = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", sub)
        if a:
            qkv.setdefault((block, a[2]), {})[a[1]] = value
            continue
        for old, new in _TRANSFORMERS_BLOCK:
            if sub.startswith(old):
                sub = new + sub[len(old):]
                break
        out[block + sub] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise MoGeFileError(f"{block}attention: query, key and value are not all there")
        out[f"{block}attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def detect_config(sd: dict, name: str = "MoGe file") -> MoGeConfig:
    """The sizes of a MoGe-2 checkpoint, read from its weights (``name`` names the file in errors)."""
    if f"{_BACKBONE}cls_token" not in sd:
        hint = " (a MoGe-1 file: not supported)" if "backbone.cls_token" in sd else ""
        raise MoGeFileError(f"{name}: not a MoGe-2 checkpoint, it has no '{_BACKBONE}cls_token'{hint}")
    if f"{_BACKBONE}blocks.0.mlp.fc1.weight" not in sd:
        raise MoGeFileError(f"{name}: its DINOv2 has no plain MLP ('{_BACKBONE}blocks.0.mlp.fc1.weight'; a SwiGLU "
                            "ViT-g backbone, as MoGe-3's): not supported")
    if not any(k.startswith("encoder.output_projections.") for k in sd) or not any(k.startswith("neck.") for k in sd):
        raise MoGeFileError(f"{name}: not a MoGe-2 checkpoint (no encoder.output_projections / neck weights)")
    hidden = int(sd[f"{_BACKBONE}cls_token"].shape[-1])
    layers = _indices(sd, f"{_BACKBONE}blocks.")[-1] + 1
    fc1 = sd[f"{_BACKBONE}blocks.0.mlp.fc1.weight"]
    pos = sd[f"{_BACKBONE}pos_embed"]
    projections = _indices(sd, "encoder.output_projections.")
    n = len(projections)
    heads = {head: _conv_stack_config(sd, prefix, name) for prefix, head in _HEADS.items()
             if any(k.startswith(prefix) for k in sd)}
    scale = _indices(sd, "scale_head.")
    scale_dims = ([int(sd[f"scale_head.{scale[0]}.weight"].shape[1])]
                  + [int(sd[f"scale_head.{i}.weight"].shape[0]) for i in scale]) if scale else None
    return MoGeConfig(
        hidden_size=hidden, num_layers=layers, mlp_ratio=int(fc1.shape[0]) // hidden,
        pretrain_grid=int(round(math.sqrt(pos.shape[1] - 1))),
        # MoGe-2 takes four evenly spaced layers, the last one last (ViT-L: 5, 11, 17, 23)
        intermediate_layers=[(layers // n) * (i + 1) - 1 for i in range(n)],
        dim_proj=int(sd["encoder.output_projections.0.weight"].shape[0]),
        neck=_conv_stack_config(sd, "neck.", name), heads=heads, scale_dims=scale_dims)


def convert_state_dict(sd: dict) -> dict[str, torch.Tensor]:
    """Official MoGe-2 keys → :class:`MoGeNet` keys (DINOv2 ``qkv`` split into query/key/value)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_BACKBONE):
            rel = key[len(_BACKBONE):]
            if rel in _TOP_RENAMES:
                out["backbone." + _TOP_RENAMES[rel]] = value
                continue
            m = re.match(r"blocks\.(\d+)\.(.*)", rel)
            if m is None:
                continue  # register tokens are not in MoGe-2's backbone
            base, sub = f"backbone.encoder.layer.{m[1]}.", m[2]
            if sub.startswith("attn.qkv."):
                kind = sub.rsplit(".", 1)[1]
                for part, t in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{base}attention.{part}.{kind}"] = t
                continue
            for old, new in _BLOCK_RENAMES:
                if sub.startswith(old):
                    sub = new + sub[len(old):]
                    break
            out[base + sub] = value
        elif key.startswith("encoder.output_projections."):
            out[key[len("encoder."):]] = value
        elif key.startswith(("encoder.image_mean", "encoder.image_std")):
            continue
        elif key.startswith(tuple(_HEADS)):
            prefix = next(p for p in _HEADS if key.startswith(p))
            out[f"heads.{_HEADS[prefix]}.{key[len(prefix):]}"] = value
        else:
            out[key] = value
    return out


def load_moge(sd: dict, name: str = "MoGe file", dtype: torch.dtype = torch.float32) -> MoGeNet:
    """A :class:`MoGeNet` with the weights of an official MoGe-2 state dict (``model`` wrapper allowed)."""
    if isinstance(sd.get("model"), dict):
        sd = sd["model"]
    sd = meta_names(sd)
    cfg = detect_config(sd, name)
    net = MoGeNet(cfg)
    missing, unexpected = net.load_state_dict(convert_state_dict(sd), strict=False)
    if missing or unexpected:
        raise MoGeFileError(f"{name}: weights do not fit MoGe-2: missing {sorted(missing)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]}")
    return net.to(dtype).eval()
