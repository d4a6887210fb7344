"""ComfyUI's MoGe nodes: LoadMoGeModel (a MoGe-2 file in ``models/geometry_estimation``) → MOGE_MODEL,
MoGeInference (image → MOGE_GEOMETRY: points, depth, intrinsics, mask, normals) and MoGeRender (a geometry →
IMAGE: depth grey / turbo, OpenGL / DirectX normal map, mask). The network is
:mod:`nodegraph_nodes.image.moge_net`, the steps after it :mod:`nodegraph_nodes.image.moge_geometry`.
MoGe-1 and MoGe-3 files are refused with an error naming the file (``refine_steps`` is accepted and unused:
it is MoGe-3's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nodegraph.context import Paths
from nodegraph.models import ManagerOwned
from nodegraph.node import BOOLEAN, COMBO, FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE
from nodegraph.value_checks import check_image

from nodegraph_nodes.diffusion.files import MODEL_EXTENSIONS, list_model_files, read_state_dict
from nodegraph_nodes.image import moge_geometry as geo
from nodegraph_nodes.image.moge_net import NUM_TOKENS_RANGE, MoGeFileError, load_moge

FOLDER = "geometry_estimation"
MOGE_MODEL = "MOGE_MODEL"
MOGE_GEOMETRY = "MOGE_GEOMETRY"
RENDER_MODES = ["depth", "depth_colored", "normal_opengl", "normal_directx", "mask"]


@dataclass(frozen=True, eq=False)
class MoGeModel(ManagerOwned):
    handle: Any
    name: str


def model_choices(paths: Paths) -> list[str]:
    return list_model_files(paths, FOLDER, extensions=frozenset(MODEL_EXTENSIONS))


def resolve(paths: Paths, name: Any) -> Path:
    """The file of a ``model_name`` choice, or a :class:`MoGeFileError` naming the input and the folders."""
    rel = Path(str(name))
    if rel.is_absolute() or ".." in rel.parts:
        raise MoGeFileError(f"input 'model_name': {name!r} must be a path inside models/{FOLDER}")
    bases = paths.model_dirs(FOLDER)
    path = next((base / rel for base in bases if (base / rel).is_file()), None)
    if path is None:
        raise MoGeFileError(f"input 'model_name': there is no MoGe model {name!r} in "
                            f"{' or '.join(str(b) for b in bases) or 'models/' + FOLDER}")
    return path


def num_tokens(resolution_level: int) -> int:
    """Base ViT tokens for a resolution level 0..9 (MoGe-2: 1200 … 3600)."""
    lo, hi = NUM_TOKENS_RANGE
    return int(lo + (resolution_level / 9) * (hi - lo))


class LoadMoGeModel(Node):
    """Load a MoGe-2 monocular geometry model from models/geometry_estimation."""

    category = "loaders"
    display_name = "Load MoGe Model"
    model_name = Input(COMBO, choices=model_choices)
    outputs = (Output(MOGE_MODEL, "MOGE_MODEL"),)

    @classmethod
    def fingerprint(cls, model_name=None, paths: Paths | None = None, **_: Any) -> Any:
        try:
            path = resolve(paths or Paths(), model_name)
            st = path.stat()
        except (MoGeFileError, OSError):
            return None
        return (str(path), st.st_size, st.st_mtime_ns)

    def execute(self, model_name: str) -> tuple:
        path = resolve(self.ctx.paths, model_name)
        st = path.stat()
        entry = self.ctx.service("models").load(
            ("moge", str(path), st.st_size, st.st_mtime_ns),
            lambda: load_moge(read_state_dict(path, dtype=torch.float32), name=str(path)))
        return (MoGeModel(entry, model_name),)


class MoGeInference(Node):
    """Estimate points, depth, intrinsics, mask and normals of images with MoGe."""

    category = "image/geometry_estimation"
    display_name = "MoGe Inference"
    moge_model = Input(MOGE_MODEL)
    image = Input(IMAGE)
    resolution_level = Input(INT, default=9, min=0, max=9, tooltip="0 = fastest, 9 = most detail.")
    fov_x_degrees = Input(FLOAT, default=0.0, min=0.0, max=170.0, step=0.1,
                          tooltip="Horizontal field of view of the source camera; 0 = recover it from the points.")
    batch_size = Input(INT, default=4, min=1, max=64, tooltip="Images per inference call.")
    force_projection = Input(BOOLEAN, default=True)
    apply_mask = Input(BOOLEAN, default=True, tooltip="Masked-out pixels become inf in points and depth.")
    refine_steps = Input(INT, default=3, min=0, max=8, optional=True,
                         tooltip="MoGe-3 only; ignored by MoGe-2.")
    outputs = (Output(MOGE_GEOMETRY, "moge_geometry"),)

    @torch.inference_mode()
    def execute(self, moge_model: MoGeModel, image, resolution_level: int = 9, fov_x_degrees: float = 0.0,
                batch_size: int = 4, force_projection: bool = True, apply_mask: bool = True,
                refine_steps: int = 3) -> tuple:
        if not isinstance(moge_model, MoGeModel):
            raise TypeError(f"input 'moge_model' must be a MOGE_MODEL, got {type(moge_model).__name__}")
        image = check_image(image, "image")[..., :3]
        fov = float(fov_x_degrees) if fov_x_degrees > 0 else None
        tokens = num_tokens(int(resolution_level))
        parts: list[dict[str, torch.Tensor]] = []
        total = image.shape[0]
        with self.ctx.service("models").use(moge_model.handle) as net:
            param = next(net.parameters())
            for start in range(0, total, batch_size):
                chunk = image[start:start + batch_size].movedim(-1, 1).to(param.device, param.dtype)
                raw = net(chunk, tokens)
                parts.append({k: v.cpu() for k, v in geo.postprocess(raw, fov, force_projection, apply_mask).items()})
                self.ctx.progress(min(start + batch_size, total), total)
        fields = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return (geo.MoGeGeometry(image=image.cpu(), **fields),)


class MoGeRender(Node):
    """Render a MoGe geometry as an image: depth (grey or coloured), a normal map, or the mask."""

    category = "image/geometry_estimation"
    display_name = "MoGe Render"
    moge_geometry = Input(MOGE_GEOMETRY)
    output = Input(COMBO, choices=RENDER_MODES, default="depth",
                   tooltip="normal_opengl: green = +Y up; normal_directx: green = -Y down.")
    outputs = (Output(IMAGE, "IMAGE"),)

    def execute(self, moge_geometry: geo.MoGeGeometry, output: str = "depth") -> tuple:
        g = moge_geometry
        if output in ("depth", "depth_colored"):
            if g.depth is None:
                raise ValueError("input 'moge_geometry' has no depth")
            d = geo.normalized_disparity(g.depth.float())
            img = geo.turbo(d) if output == "depth_colored" else d[..., None].expand(*d.shape, 3)
        elif output in ("normal_opengl", "normal_directx"):
            if g.normal is not None:
                n = g.normal.float()
            elif g.points is not None:
                n = geo.normals_from_points(g.points.float())
            else:
                raise ValueError("input 'moge_geometry' has neither normals nor points")
            img = geo.normal_map(n, opengl=output == "normal_opengl")
        elif output == "mask":
            if g.mask is None:
                raise ValueError("input 'moge_geometry' has no mask")
            m = g.mask.float()
            img = m[..., None].expand(*m.shape, 3)
        else:
            raise ValueError(f"input 'output': unknown mode {output!r} (one of {', '.join(RENDER_MODES)})")
        return (img.contiguous(),)


__all__ = ["LoadMoGeModel", "MoGeInference", "MoGeRender", "MoGeModel", "MOGE_MODEL", "MOGE_GEOMETRY"]
