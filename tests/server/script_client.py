"""A client that behaves as ComfyUI's ``script_examples/websockets_api_example.py`` and
``websockets_api_example_ws_images.py`` do (written from what they send and read, not from their code):

* ``POST /prompt`` (or ``/api/prompt``) with ``urllib.request.Request(url, data=json_bytes)`` and no
  headers of its own — urllib then labels the JSON ``application/x-www-form-urlencoded`` and sends no
  ``Origin``; the body is ``{"prompt": …, "client_id": …}`` and the answer's ``prompt_id`` is kept;
* one WebSocket ``/ws?clientId=<uuid4>``, opened before queueing, announcing nothing;
* it reads messages until ``executing`` with ``node: null`` for its prompt. Text messages are JSON;
  the first example ignores binary frames (previews); the second remembers the node of the last
  ``executing`` and keeps every binary frame that arrives while that node is its
  ``SaveImageWebsocket`` node, without the first 8 bytes (event type, image format);
* the first example then reads ``GET /history/{prompt_id}`` and downloads each image of each output
  with ``GET /view?filename=…&subfolder=…&type=…``.

(websocket-client in the examples; the ``websockets`` package here, as in the rest of the tests.)
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from dataclasses import dataclass, field

from websockets.sync.client import connect

from tests.helpers.comfy_client import ExampleReads


@dataclass
class ScriptRun:
    """What one run showed the client."""

    prompt_id: str
    messages: list[dict] = field(default_factory=list)
    #: every binary frame, whole (header included), in arrival order
    frames: list[bytes] = field(default_factory=list)
    #: the ws_images example's result: node id → image bytes (frames minus their 8-byte header)
    ws_images: dict[str, list[bytes]] = field(default_factory=dict)
    #: the first example's result: node id → image bytes downloaded through /view
    images: dict[str, list[bytes]] = field(default_factory=dict)
    #: text message types and "<binary>" in arrival order
    order: list[str] = field(default_factory=list)


class ScriptClient(ExampleReads):
    def __init__(self, server_address: str, api_prefix: str = "") -> None:
        self.server_address = server_address
        self.client_id = str(uuid.uuid4())
        self.prefix = api_prefix  # the ws_images example posts to /api/prompt, the other to /prompt

    def queue_prompt(self, prompt: dict) -> dict:
        data = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode("utf-8")
        request = urllib.request.Request(f"http://{self.server_address}{self.prefix}/prompt", data=data)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def connect(self):
        return connect(f"ws://{self.server_address}/ws?clientId={self.client_id}", open_timeout=10,
                       max_size=None)

    def run(self, ws, prompt: dict, ws_image_node: str = "save_image_websocket_node",
            timeout: float = 60) -> ScriptRun:
        """Queue ``prompt`` and follow it to its end, as both examples do; then download its images."""
        run = ScriptRun(self.queue_prompt(prompt)["prompt_id"])
        current_node = ""
        while True:
            out = ws.recv(timeout=timeout)
            if isinstance(out, str):
                message = json.loads(out)
                run.messages.append(message)
                run.order.append(message["type"])
                if message["type"] == "executing":
                    data = message["data"]
                    if data["prompt_id"] == run.prompt_id:
                        if data["node"] is None:
                            break
                        current_node = data["node"]
            else:
                run.frames.append(out)
                run.order.append("<binary>")
                if current_node == ws_image_node:
                    run.ws_images.setdefault(current_node, []).append(out[8:])
        run.images = self.output_images(run.prompt_id)
        return run
