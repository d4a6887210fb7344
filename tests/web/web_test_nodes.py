"""Model-free node classes for the browser tests (loaded through ``ServerConfig.nodes_modules``).

``SlowImage`` passes an image through in ``steps`` sleeps, reporting progress and sending a live
preview each step (as a sampler does); ``FailingImage`` raises, for execution errors on the canvas.
"""

from __future__ import annotations

import time

from nodegraph.node import Input, Node, Output
from nodegraph.types import FLOAT, IMAGE, INT, STRING


class SlowImage(Node):
    """Passes the image on after ``seconds``, in ``steps`` steps with progress and previews."""

    category = "testing"
    display_name = "Slow Image (test)"
    image = Input(IMAGE)
    steps = Input(INT, default=8, min=1, max=1000)
    seconds = Input(FLOAT, default=1.0, min=0.0, max=600.0, step=0.1)
    outputs = (Output(IMAGE),)
    cacheable = False

    def execute(self, image, steps: int, seconds: float):
        for step in range(steps):
            time.sleep(seconds / steps)
            self.ctx.preview(image[0] * (step + 1) / steps)
            self.ctx.progress(step + 1, steps)
        return (image,)


class FailingImage(Node):
    """Raises ``RuntimeError(message)``."""

    category = "testing"
    display_name = "Failing Image (test)"
    image = Input(IMAGE)
    message = Input(STRING, default="boom")
    outputs = (Output(IMAGE),)

    def execute(self, image, message: str):
        raise RuntimeError(message)
