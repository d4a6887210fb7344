"""A tiny random MoGe-2 state dict in the official checkpoint layout (``encoder.backbone.blocks.N.attn.qkv`` …),
drawn from a seeded generator key by key so the same file comes out anywhere; what
``tests/data/moge_official/`` was recorded from (see its README) and what the MoGe tests load."""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN, LAYERS, GRID, PROJ = 64, 4, 8, 32
NECK = [64, 32, 32, 32, 32]
HEAD = [32, 32, 32, 32, 32]
HEAD_OUT = {"points_head": 3, "normal_head": 3, "mask_head": 1}
SCALE_HIDDEN = 32
#: the official model's constructor arguments for this file (for the reference script)
OFFICIAL_CONFIG = {
    "encoder": {"backbone": "tiny", "intermediate_layers": [0, 1, 2, 3], "dim_out": PROJ},
    "neck": {"dim_in": [PROJ + 2, 2, 2, 2, 2], "dim_res_blocks": NECK, "dim_out": [None] * 5,
             "resamplers": ["conv_transpose"] * 4, "num_res_blocks": 1},
    **{name: {"dim_in": NECK, "dim_res_blocks": HEAD, "dim_out": [None] * 4 + [out],
              "resamplers": ["conv_transpose"] * 4, "num_res_blocks": 1} for name, out in HEAD_OUT.items()},
    "scale_head": {"dims": [HIDDEN, SCALE_HIDDEN, 1]},
    "remap_output": "exp",
}


def _shapes() -> dict[str, tuple[tuple[int, ...], str]]:
    """key → (shape, kind): kind ``w`` (fan-in scaled), ``b`` (small), ``n`` (norm weight ~1), ``g`` (layer scale)."""
    d, s = HIDDEN, {}
    bb = "encoder.backbone."
    s[bb + "cls_token"] = ((1, 1, d), "b")
    s[bb + "pos_embed"] = ((1, GRID * GRID + 1, d), "b")
    s[bb + "mask_token"] = ((1, d), "b")
    s[bb + "patch_embed.proj.weight"] = ((d, 3, 14, 14), "w")
    s[bb + "patch_embed.proj.bias"] = ((d,), "b")
    for i in range(LAYERS):
        p = f"{bb}blocks.{i}."
        s[p + "norm1.weight"], s[p + "norm1.bias"] = ((d,), "n"), ((d,), "b")
        s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"] = ((3 * d, d), "w"), ((3 * d,), "b")
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = ((d, d), "w"), ((d,), "b")
        s[p + "ls1.gamma"] = ((d,), "g")
        s[p + "norm2.weight"], s[p + "norm2.bias"] = ((d,), "n"), ((d,), "b")
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = ((4 * d, d), "w"), ((4 * d,), "b")
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = ((d, 4 * d), "w"), ((d,), "b")
        s[p + "ls2.gamma"] = ((d,), "g")
    s[bb + "norm.weight"], s[bb + "norm.bias"] = ((d,), "n"), ((d,), "b")
    for i in range(4):
        s[f"encoder.output_projections.{i}.weight"] = ((PROJ, d, 1, 1), "w")
        s[f"encoder.output_projections.{i}.bias"] = ((PROJ,), "b")

    def stack(prefix: str, dim_in: list[int], dims: list[int], dim_out: list[int | None]) -> None:
        for i, (a, c) in enumerate(zip(dim_in, dims)):
            s[f"{prefix}input_blocks.{i}.weight"], s[f"{prefix}input_blocks.{i}.bias"] = ((c, a, 1, 1), "w"), ((c,), "b")
            r = f"{prefix}res_blocks.{i}.0.layers."
            s[r + "0.weight"], s[r + "0.bias"] = ((c,), "n"), ((c,), "b")
            s[r + "2.weight"], s[r + "2.bias"] = ((c, c, 3, 3), "w"), ((c,), "b")
            s[r + "3.weight"], s[r + "3.bias"] = ((c,), "n"), ((c,), "b")
            s[r + "5.weight"], s[r + "5.bias"] = ((c, c, 3, 3), "w"), ((c,), "b")
            if i < len(dims) - 1:
                nxt = dims[i + 1]
                s[f"{prefix}resamplers.{i}.0.weight"] = ((c, nxt, 2, 2), "w")
                s[f"{prefix}resamplers.{i}.0.bias"] = ((nxt,), "b")
                s[f"{prefix}resamplers.{i}.1.weight"] = ((nxt, nxt, 3, 3), "w")
                s[f"{prefix}resamplers.{i}.1.bias"] = ((nxt,), "b")
            if dim_out[i] is not None:
                s[f"{prefix}output_blocks.{i}.weight"] = ((dim_out[i], c, 1, 1), "w")
                s[f"{prefix}output_blocks.{i}.bias"] = ((dim_out[i],), "b")

    stack("neck.", [PROJ + 2, 2, 2, 2, 2], NECK, [None] * 5)
    for name, out in HEAD_OUT.items():
        stack(f"{name}.", NECK, HEAD, [None] * 4 + [out])
    s["scale_head.0.weight"], s["scale_head.0.bias"] = ((SCALE_HIDDEN, d), "w"), ((SCALE_HIDDEN,), "b")
    s["scale_head.2.weight"], s["scale_head.2.bias"] = ((1, SCALE_HIDDEN), "w"), ((1,), "b")
    return s


def tiny_moge_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny MoGe-2 weights (float32), the same for a seed on any machine."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, (shape, kind) in _shapes().items():
        x = torch.randn(shape, generator=gen)
        if kind == "w":
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1)
            if ".resamplers." in key and key.endswith(".0.weight"):
                fan_in = shape[0]
            x = x / fan_in ** 0.5
        elif kind == "n":
            x = 1.0 + 0.1 * x
        elif kind == "g":
            x = 0.5 + 0.1 * x
        else:
            x = 0.1 * x
        out[key] = x.contiguous()
    out["encoder.image_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    out["encoder.image_std"] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return out


def tiny_moge_image(seed: int = 1, height: int = 36, width: int = 48) -> torch.Tensor:
    """A smooth random RGB image (1, H, W, 3) in 0..1."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 5, generator=gen)
    img = torch.nn.functional.interpolate(low, (height, width), mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).contiguous()


def save_tiny_moge(folder: Path, name: str = "moge_2_vitl_normal_fp16.safetensors", seed: int = 0) -> Path:
    """Write the tiny file where ``LoadMoGeModel`` looks (``<folder>/<name>``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    save_file(tiny_moge_state_dict(seed), str(path))
    return path
