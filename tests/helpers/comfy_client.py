"""A client like ComfyUI's ``script_examples/websockets_api_example.py``: standard library +
``websockets`` only. One difference: it sends ``Content-Type: application/json`` (ComfyUI's example
posts JSON with urllib's default form content type, which nodegraph refuses to stop cross-site form
posts)."""

from __future__ import annotations

import contextlib
import json
import urllib.parse
import urllib.request
import uuid

from websockets.sync.client import connect


class ExampleReads:
    """The reads ComfyUI's script examples make after a run: ``GET /history/{prompt_id}``, then each
    output image through ``GET /view`` (shared by :class:`ComfyClient` and the tests' ``ScriptClient``)."""

    server_address: str

    def get_history(self, prompt_id: str) -> dict:
        with urllib.request.urlopen(f"http://{self.server_address}/history/{prompt_id}", timeout=30) as r:
            return json.loads(r.read())

    def get_image(self, filename: str, subfolder: str, folder_type: str) -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        with urllib.request.urlopen(f"http://{self.server_address}/view?{query}", timeout=30) as r:
            return r.read()

    def output_images(self, prompt_id: str) -> dict[str, list[bytes]]:
        """node id → the bytes of each image the prompt's history lists for it."""
        history = self.get_history(prompt_id)[prompt_id]
        images: dict[str, list[bytes]] = {}
        for node_id, node_output in history["outputs"].items():
            for image in node_output.get("images", []):
                images.setdefault(node_id, []).append(
                    self.get_image(image["filename"], image["subfolder"], image["type"]))
        return images


class ComfyClient(ExampleReads):
    """``features``: announced as the first WebSocket message (``feature_flags``), as ComfyUI's
    frontend does; ``None`` announces nothing, as ComfyUI's script examples."""

    def __init__(self, server_address: str, client_id: str | None = None, features: dict | None = None) -> None:
        self.server_address = server_address
        self.client_id = client_id or str(uuid.uuid4())
        self.features = features

    @contextlib.contextmanager
    def connect(self):
        with connect(f"ws://{self.server_address}/ws?clientId={self.client_id}", open_timeout=10,
                     max_size=None) as ws:
            if self.features is not None:
                ws.send(json.dumps({"type": "feature_flags", "data": self.features}))
            yield ws

    def queue_prompt(self, prompt: dict, prompt_id: str | None = None) -> dict:
        payload = {"prompt": prompt, "client_id": self.client_id}
        if prompt_id:
            payload["prompt_id"] = prompt_id
        req = urllib.request.Request(f"http://{self.server_address}/prompt", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read())

    def run(self, ws, prompt: dict, prompt_id: str | None = None, timeout: float = 60):
        """Queue, follow events until ``executing {node: null}`` of this prompt; return
        ``(prompt_id, text messages, binary frames, {node_id: [image bytes]})``."""
        prompt_id = self.queue_prompt(prompt, prompt_id)["prompt_id"]
        messages, frames = [], []
        while True:
            out = ws.recv(timeout=timeout)
            if isinstance(out, str):
                message = json.loads(out)
                messages.append(message)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["node"] is None and data["prompt_id"] == prompt_id:
                        break
            else:
                frames.append(out)
        return prompt_id, messages, frames, self.output_images(prompt_id)
