"""The shapes-world captioner: a small CNN that reads a 64×64 render (larger images, e.g. the
generator's 128×128, are area-averaged to 64 first) and predicts its scene
(background; one object with its position, or two objects left/right or top/bottom), from which the
canonical caption is written. Predictions are for the normalized scene ('A left of B', 'A above B').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nodegraph_nodes.shapes.captions import canonical_caption
from nodegraph_nodes.shapes.world import COLORS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject

WEIGHTS = Path(__file__).parent / "weights" / "captioner.safetensors"

#: head name → number of classes
HEADS = {"count": 2, "background": len(COLORS), "position": len(POSITIONS), "orientation": 2,
         "shape1": len(SHAPES), "color1": len(COLORS), "size1": len(SIZES),
         "shape2": len(SHAPES), "color2": len(COLORS), "size2": len(SIZES)}
SINGLE_HEADS = ("position",)
PAIR_HEADS = ("orientation", "shape2", "color2", "size2")


class ShapesCaptioner(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.ReLU(),          # 32
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),      # 16
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),  # 8
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),  # 4
        )
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 256), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, n) for name, n in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images``: float ``[B, 3, 64, 64]`` in 0..1 → logits per head."""
        h = self.trunk(self.features(images * 2 - 1))
        return {name: head(h) for name, head in self.heads.items()}


def scene_targets(scene: Scene) -> dict[str, int]:
    """Class indices per head for the normalized scene (-100 = not applicable)."""
    s = scene.normalized()
    a = s.objects[0]
    t = {"count": len(s.objects) - 1, "background": COLORS.index(s.background),
         "shape1": SHAPES.index(a.shape), "color1": COLORS.index(a.color), "size1": SIZES.index(a.size),
         "position": -100, "orientation": -100, "shape2": -100, "color2": -100, "size2": -100}
    if s.position is not None:
        t["position"] = POSITIONS.index(s.position)
    else:
        b = s.objects[1]
        t.update(orientation=0 if s.relation == "left of" else 1, shape2=SHAPES.index(b.shape),
                 color2=COLORS.index(b.color), size2=SIZES.index(b.size))
    return t


@dataclass(frozen=True)
class Prediction:
    scene: Scene | None
    caption: str


def decode(logits: dict[str, torch.Tensor]) -> list[Prediction]:
    picks = {name: value.argmax(-1).tolist() for name, value in logits.items()}
    out = []
    for i in range(len(picks["count"])):
        p = {name: values[i] for name, values in picks.items()}
        background = COLORS[p["background"]]
        a = ShapeObject(SHAPES[p["shape1"]], COLORS[p["color1"]], SIZES[p["size1"]])
        try:
            if p["count"] == 0:
                scene = Scene(background, (a,), position=POSITIONS[p["position"]])
            else:
                b = ShapeObject(SHAPES[p["shape2"]], COLORS[p["color2"]], SIZES[p["size2"]])
                scene = Scene(background, (a, b), relation="left of" if p["orientation"] == 0 else "above")
        except AssertionError:  # an impossible scene (same colours): describe it anyway
            scene = None
        caption = canonical_caption(scene) if scene else _loose_caption(p, a, background)
        out.append(Prediction(scene, caption))
    return out


def _loose_caption(p: dict, a: ShapeObject, background: str) -> str:
    return f"a {a.size} {a.color} {a.shape} on a {background} background"


def load_captioner(path: Path | str = WEIGHTS, device: str = "cpu") -> ShapesCaptioner:
    from safetensors.torch import load_file

    model = ShapesCaptioner()
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()


@torch.no_grad()
def caption_images(model: ShapesCaptioner, images: torch.Tensor) -> list[Prediction]:
    """``images``: IMAGE tensor ``[B, H, W, 3]`` 0..1 (ComfyUI layout), any size (resized to 64)."""
    x = images[..., :3].permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (64, 64):
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="area")
    device = next(model.parameters()).device
    return decode(model(x.to(device)))
