"""Images sent straight to the client over its WebSocket instead of written to disk.

``SaveImageWebsocket`` is ComfyUI's node of that name (its ``websockets_api_example_ws_images.py``
uses it): input ``images``, an output node that saves nothing. For each image of the batch it reports
``progress`` (the image's index of the batch) and then sends the image as a PNG in a binary frame —
``PREVIEW_IMAGE`` (``uint32 1``, ``uint32 2`` = PNG, the file; clients strip the first 8 bytes) or,
to clients that announced ``supports_preview_metadata``, ``PREVIEW_IMAGE_WITH_METADATA``. The frame
goes through the run's event stream (``self.ctx.send_image``) to the client that queued the prompt,
whether or not it asked for live previews. No metadata is written into the PNG (as in ComfyUI). It
never comes from the cache: every run sends its images again.
"""

from __future__ import annotations

import torch

from nodegraph.node import Input, Node, NodeResult
from nodegraph.pngmeta import encode_png
from nodegraph.types import IMAGE


class SaveImageWebsocket(Node):
    """Sends each image to the client that queued the prompt, as a PNG over its WebSocket (not saved)."""

    category = "api/image"
    display_name = "Save Image (WebSocket)"
    output_node = True
    cacheable = False  # ComfyUI's IS_CHANGED returns the time: the images are sent on every run
    images = Input(IMAGE, tooltip="The images to send.")
    outputs = ()

    def execute(self, images: torch.Tensor) -> NodeResult:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"node {self.ctx.node_id} (SaveImageWebsocket): input 'images' must be an "
                             f"IMAGE batch [B,H,W,C], got {getattr(images, 'shape', type(images).__name__)}")
        total = images.shape[0]
        for index in range(total):
            self.ctx.progress(index, total)
            self.ctx.send_image(encode_png(images[index], compress_level=1), "PNG")
        return NodeResult()
