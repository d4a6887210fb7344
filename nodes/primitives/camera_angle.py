"""ComfyUI's CameraAngle ("Compose Camera Angle Prompt"): a camera angle around a subject, as a
``LOAD3D_CAMERA`` record for the 3D nodes and as the shot description multi-angle LoRAs (Qwen-Image-Edit
2511 Multiple-Angles) are trained on, e.g. ``front view eye-level shot medium shot``.

Facts from ComfyUI's node docs: the subject sits at the origin, the camera is 6 units from it with a
fixed 35° field of view; 0° is the front, 90° the right side, 180° the back; ``camera_info.zoom`` maps the
widget's 0..10 onto 1.0..1.875. The eight horizontal sectors are 45° wide and centred on the LoRA's
azimuths (0°, 45°, …), so 0° ± 22.5° is the front view; elevation and zoom terms follow the docs'
thresholds. Coordinates are right-handed with Y up (three.js, as ComfyUI's 3D nodes), the front on +Z.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nodegraph.node import FLOAT, INT, Input, Node, Output
from nodegraph.types import IMAGE, STRING

LOAD3D_CAMERA = "LOAD3D_CAMERA"
DISTANCE = 6.0
FOV = 35.0
AZIMUTH_TERMS = ("front view", "front-right quarter view", "right side view", "back-right quarter view",
                 "back view", "back-left quarter view", "left side view", "front-left quarter view")


@dataclass(frozen=True)
class CameraShot:
    """The clamped angles and zoom of a shot, and their terms."""

    horizontal_angle: int
    vertical_angle: int
    zoom: float

    @classmethod
    def clamped(cls, horizontal_angle: int, vertical_angle: int, zoom: float) -> "CameraShot":
        return cls(min(max(int(horizontal_angle), 0), 360), min(max(int(vertical_angle), -30), 60),
                   min(max(float(zoom), 0.0), 10.0))

    def azimuth_term(self) -> str:
        return AZIMUTH_TERMS[int(((self.horizontal_angle % 360) + 22.5) // 45) % 8]

    def elevation_term(self) -> str:
        if self.vertical_angle < -15:
            return "low-angle shot"
        if self.vertical_angle < 15:
            return "eye-level shot"
        return "elevated shot" if self.vertical_angle < 45 else "high-angle shot"

    def distance_term(self) -> str:
        if self.zoom < 2:
            return "wide shot"
        return "medium shot" if self.zoom < 6 else "close-up"

    def prompt(self) -> str:
        return f"{self.azimuth_term()} {self.elevation_term()} {self.distance_term()}"

    def camera_info(self) -> dict:
        """ComfyUI's camera record: position, target, zoom, cameraType, fov."""
        azimuth, elevation = math.radians(self.horizontal_angle), math.radians(self.vertical_angle)
        position = _Point(DISTANCE * math.cos(elevation) * math.sin(azimuth), DISTANCE * math.sin(elevation),
                          DISTANCE * math.cos(elevation) * math.cos(azimuth))
        return {"position": asdict(position), "target": asdict(_Point(0.0, 0.0, 0.0)),
                "zoom": 1.0 + 0.0875 * self.zoom, "cameraType": "perspective", "fov": FOV}


@dataclass(frozen=True)
class _Point:
    x: float
    y: float
    z: float


class CameraAngle(Node):
    """Picks a camera angle around a subject at the origin: camera_info for the 3D nodes (6 units away,
    35° field of view) and a shot description such as 'front view eye-level shot medium shot' for a
    prompt. Values are clamped to the widget ranges first. The image only shows on ComfyUI's 3D preview;
    the canvas's preview widget (``view``) is accepted and not used."""

    display_name = "Compose Camera Angle Prompt"
    category = "3d"
    horizontal_angle = Input(INT, default=0, min=0, max=360, step=1,
                             tooltip="azimuth in degrees: 0 front, 90 right side, 180 back")
    vertical_angle = Input(INT, default=0, min=-30, max=60, step=1,
                           tooltip="elevation in degrees: negative looks up from below")
    zoom = Input(FLOAT, default=5.0, min=0.0, max=10.0, step=0.1, tooltip="0 wide shot … 10 close-up")
    image = Input(IMAGE, optional=True, tooltip="reference image for the 3D preview (not used here)")
    extra_inputs = ("view",)
    outputs = (Output(LOAD3D_CAMERA, "camera_info"), Output(STRING, "prompt"))

    def execute(self, horizontal_angle: int = 0, vertical_angle: int = 0, zoom: float = 5.0,
                image=None) -> tuple:
        shot = CameraShot.clamped(horizontal_angle, vertical_angle, zoom)
        return (shot.camera_info(), shot.prompt())
