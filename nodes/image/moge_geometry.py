"""MoGe's post-processing and renders: the affine point map → camera space (focal and z-shift solved by
least squares on a 64x64 copy, as the official ``MoGeModel.infer``), intrinsics (normalised: image spans 0..1),
depth, the point map re-projected from depth, metric scale and mask; and the pictures ``MoGeRender`` makes
(disparity in grey or turbo, normal maps in OpenGL / DirectX convention, the mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from nodegraph_nodes.image.moge_net import view_plane_uv

#: the grid the focal / shift solve runs on (official ``recover_focal_shift``)
SOLVE_SIZE = (64, 64)
MASK_THRESHOLD = 0.5


@dataclass
class MoGeGeometry:
    """What ``MoGeInference`` returns (ComfyUI's MOGE_GEOMETRY keys): ``image`` (B, H, W, 3) always, the rest
    when the model predicts them: ``points`` (B, H, W, 3), ``depth`` (B, H, W), ``intrinsics`` (B, 3, 3),
    ``mask`` (B, H, W) bool, ``normal`` (B, H, W, 3). Masked-out points / depth are inf when asked."""

    image: torch.Tensor
    points: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    normal: torch.Tensor | None = None

    def get(self, key: str):
        return getattr(self, key, None)


def _shift_residual(uv, xy, z, focal, shift):
    proj = xy / (z + shift)[:, None]
    f = (proj * uv).sum() / np.square(proj).sum() if focal is None else focal
    return (f * proj - uv).ravel()


def _solve(uv: np.ndarray, xyz: np.ndarray, focal: float | None) -> tuple[float, float | None]:
    """``min |f * xy / (z + shift) - uv|`` over the shift (and the focal, in closed form, when not given):
    Levenberg-Marquardt from 0 with ftol 1e-3, as the official solver."""
    from scipy.optimize import least_squares

    uv, xy, z = uv.reshape(-1, 2), xyz[..., :2].reshape(-1, 2), xyz[..., 2].reshape(-1)
    sol = least_squares(partial(_shift_residual, uv, xy, z, focal), x0=0, ftol=1e-3, method="lm")
    shift = sol["x"].squeeze().astype(np.float32)
    if focal is not None:
        return float(shift), None
    proj = xy / (z + shift)[:, None]
    return float(shift), float((proj * uv).sum() / np.square(proj).sum())


def recover_focal_shift(points: torch.Tensor, mask: torch.Tensor | None,
                        focal: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal (relative to half the image diagonal) and z shift per image of a (B, H, W, 3) point map."""
    b, h, w, _ = points.shape
    uv = view_plane_uv(h, w, w / h, points.dtype, points.device)
    pts = F.interpolate(points.permute(0, 3, 1, 2), SOLVE_SIZE, mode="nearest").permute(0, 2, 3, 1).cpu().numpy()
    uv_lr = F.interpolate(uv[None].permute(0, 3, 1, 2), SOLVE_SIZE, mode="nearest")[0].permute(1, 2, 0).cpu().numpy()
    m_lr = None if mask is None else (F.interpolate(mask.float()[:, None], SOLVE_SIZE, mode="nearest")[:, 0] > 0).cpu().numpy()
    focals, shifts = [], []
    for i in range(b):
        p, u = (pts[i], uv_lr) if m_lr is None else (pts[i][m_lr[i]], uv_lr[m_lr[i]])
        f_in = None if focal is None else float(focal[i])
        if u.shape[0] < 2:
            shifts.append(0.0)
            focals.append(1.0 if f_in is None else f_in)
            continue
        s, f = _solve(u, p, f_in)
        shifts.append(s)
        focals.append(f if f_in is None else f_in)
    as_t = partial(torch.tensor, device=points.device, dtype=points.dtype)
    return as_t(focals), as_t(shifts)


def intrinsics_from_focal(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) normalised intrinsics, principal point at the image centre (0.5, 0.5)."""
    k = torch.zeros(fx.shape[0], 3, 3, dtype=fx.dtype, device=fx.device)
    k[:, 0, 0], k[:, 1, 1] = fx, fy
    k[:, 0, 2] = k[:, 1, 2] = 0.5
    k[:, 2, 2] = 1.0
    return k


def depth_to_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject (B, H, W) depth through normalised intrinsics at pixel centres ((j + 0.5) / W, (i + 0.5) / H)."""
    b, h, w = depth.shape
    u = (torch.arange(w, dtype=depth.dtype, device=depth.device) + 0.5) / w
    v = (torch.arange(h, dtype=depth.dtype, device=depth.device) + 0.5) / h
    v, u = torch.meshgrid(v, u, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)                      # (H, W, 3)
    rays = torch.einsum("bij,hwj->bhwi", torch.linalg.inv(intrinsics), pix)
    return rays * depth[..., None]


def postprocess(raw: dict[str, torch.Tensor], fov_x: float | None, force_projection: bool,
                apply_mask: bool) -> dict[str, torch.Tensor]:
    """The official ``infer`` steps after the network, in float32."""
    points, normal, mask, scale = (raw.get(k) for k in ("points", "normal", "mask", "metric_scale"))
    points, normal, mask, scale = (t.float() if t is not None else None for t in (points, normal, mask, scale))
    out: dict[str, torch.Tensor] = {}
    mask_bin = mask > MASK_THRESHOLD if mask is not None else None
    depth = None
    if points is not None:
        h, w = points.shape[1:3]
        aspect = w / h
        diag = (1 + aspect ** 2) ** 0.5
        if fov_x is None:
            focal, shift = recover_focal_shift(points, mask_bin)
        else:
            focal = aspect / diag / torch.tan(torch.deg2rad(torch.tensor(float(fov_x))) / 2)
            focal = focal.to(points).expand(points.shape[0])
            _, shift = recover_focal_shift(points, mask_bin, focal=focal)
        fx, fy = focal / 2 * diag / aspect, focal / 2 * diag
        out["intrinsics"] = intrinsics_from_focal(fx, fy)
        points = points.clone()
        points[..., 2] += shift[:, None, None]
        if mask_bin is not None:
            mask_bin = mask_bin & (points[..., 2] > 0)
        depth = points[..., 2].clone()
        if force_projection:
            points = depth_to_points(depth, out["intrinsics"])
    if scale is not None:
        points = points * scale[:, None, None, None] if points is not None else None
        depth = depth * scale[:, None, None] if depth is not None else None
    if apply_mask and mask_bin is not None:
        inf = torch.tensor(float("inf"))
        points = torch.where(mask_bin[..., None], points, inf) if points is not None else None
        depth = torch.where(mask_bin, depth, inf) if depth is not None else None
        normal = torch.where(mask_bin[..., None], normal, torch.zeros_like(normal)) if normal is not None else None
    for key, value in (("points", points), ("depth", depth), ("mask", mask_bin), ("normal", normal)):
        if value is not None:
            out[key] = value
    return out


# ---- renders -------------------------------------------------------------------------------------------

def turbo(x: torch.Tensor) -> torch.Tensor:
    """The turbo colour map (Mikhailov's polynomial fit), x in 0..1 → (..., 3)."""
    x = x.clamp(0.0, 1.0)
    powers = torch.stack([x ** i for i in range(6)], dim=-1)
    coeffs = torch.tensor([
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973]], dtype=x.dtype)
    return (powers @ coeffs.T.to(x.device)).clamp(0.0, 1.0)


def normalized_disparity(depth: torch.Tensor) -> torch.Tensor:
    """1 / depth per image, stretched so its 0.1 and 99.9 percentiles of the valid pixels are 0 and 1;
    invalid (inf, non-positive) pixels 0."""
    out = torch.zeros_like(depth)
    for i, d in enumerate(depth):
        valid = torch.isfinite(d) & (d > 0)
        if not valid.any():
            continue
        disp = torch.where(valid, 1.0 / d.clamp_min(1e-6), torch.zeros_like(d))
        lo, hi = torch.quantile(disp[valid], 0.001), torch.quantile(disp[valid], 0.999)
        norm = ((disp - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
        out[i] = torch.where(valid, norm, torch.zeros_like(norm))
    return out


def normals_from_points(points: torch.Tensor) -> torch.Tensor:
    """Camera-space normals of a (B, H, W, 3) point map by central differences (edges zero-padded),
    pointing back at the camera (OpenCV axes); non-finite points give 0."""
    finite = torch.isfinite(points).all(dim=-1, keepdim=True)
    p = torch.where(finite, points, torch.zeros_like(points))
    dx = F.pad((p[:, :, 2:] - p[:, :, :-2]).permute(0, 3, 1, 2), (1, 1, 0, 0)).permute(0, 2, 3, 1)
    dy = F.pad((p[:, 2:] - p[:, :-2]).permute(0, 3, 1, 2), (0, 0, 1, 1)).permute(0, 2, 3, 1)
    n = F.normalize(torch.cross(dy, dx, dim=-1), dim=-1)
    return torch.where(finite, n, torch.zeros_like(n))


def normal_map(normal: torch.Tensor, opengl: bool) -> torch.Tensor:
    """A normal map picture: z flipped to point out of the surface, y up (OpenGL) or down (DirectX)."""
    sign = normal.new_tensor([1.0, -1.0 if opengl else 1.0, -1.0])
    return (normal * sign * 0.5 + 0.5).clamp(0.0, 1.0)
