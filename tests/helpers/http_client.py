"""A tiny HTTP client on ``http.client`` (standard library only) that lets tests set any header, and the
multipart body of an image upload."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 30) -> None:
        self.host, self.port, self.token, self.timeout = host, port, token, timeout

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                query: dict | None = None) -> Reply:
        if query:
            path += ("&" if "?" in path else "?") + urllib.parse.urlencode(query)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        hdrs = {}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        hdrs.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=hdrs)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs) -> Reply:
        return self.request("GET", path, **kwargs)

    def post_json(self, path: str, data: Any, headers: dict | None = None) -> Reply:
        return self.request("POST", path, json.dumps(data).encode(),
                            {"Content-Type": "application/json", **(headers or {})})

    def queue(self, prompt: dict, **fields) -> dict:
        reply = self.post_json("/prompt", {"prompt": prompt, **fields})
        assert reply.status == 200, reply.body
        return reply.json()

    def wait_history(self, prompt_id: str, timeout: float = 30) -> dict:
        """Poll ``GET /history/{prompt_id}`` until the prompt has finished; its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").json()
            if entry:
                return entry[prompt_id]
            time.sleep(0.02)
        raise AssertionError(f"prompt {prompt_id} did not finish")


def multipart(fields: dict, filename: str, data: bytes, boundary: str = "XyZzY") -> tuple[bytes, dict]:
    """A ``multipart/form-data`` upload body (``fields`` plus one PNG as ``image``) and its Content-Type header."""
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f'Content-Type: image/png\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
