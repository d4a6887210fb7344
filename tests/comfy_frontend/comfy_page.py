"""A Playwright page on ComfyUI's official frontend served by nodegraph, with what went wrong on it.

:class:`ComfyPage` records every request to our server that failed or answered 400 or more, every
console error and every uncaught page error, and sorts out the ones that are provably the frontend's
own business (:data:`EXPECTED_404` and requests to other hosts, which it makes on its own and which
cannot succeed offline). :meth:`ComfyPage.problems` is what is left: it must be empty.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

#: answers of ours that are right as they are: ComfyUI answers them the same way
EXPECTED_404 = {
    # the frontend reads its legacy node-templates file on every load; ComfyUI answers 404 when the user
    # has none, and the frontend takes a 404 as "no templates" (it logs other statuses as errors)
    "/api/userdata/comfy.templates.json",
    # the workflows panel reads its bookmarks file the same way (404: no bookmarks yet)
    "/api/userdata/workflows%2F.index.json",
}

#: the frontend's own requests to other hosts seen on these pages (none can succeed offline; none is ours):
#: release notes (api.comfy.org/releases) and, for the frontend's default graph, the sizes of the model
#: files it would offer to download (huggingface.co)
KNOWN_EXTERNAL_HOSTS = ("api.comfy.org", "huggingface.co")

READY = "() => !!(window.app && window.app.graph && window.comfyAPI?.api?.api?.socket?.readyState === 1)"


def _raw_path(url: str) -> str:
    """The path as sent (``%2F`` kept: the frontend encodes a user-file name as one path segment), less
    the ``/comfyui`` prefix the page's requests carry when it is served there."""
    path = urlsplit(url).path
    return path[len("/comfyui"):] if path.startswith("/comfyui/") else path


class ComfyPage:
    def __init__(self, page, server) -> None:
        self.page = page
        self.server = server
        self.origin = f"127.0.0.1:{server.port}"
        self.failures: list[str] = []
        #: the frontend's own requests to other hosts (reported, not failures)
        self.external: list[str] = []
        self.posted_prompts: list[dict] = []
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.failures.append(f"uncaught page error: {exc}"))
        page.on("request", self._request)

    def _ours(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https", "ws") and parts.netloc == self.origin

    def _request(self, request) -> None:
        if request.method == "POST" and urlsplit(request.url).path.endswith("/api/prompt"):
            self.posted_prompts.append(json.loads(request.post_data))

    def _request_failed(self, request) -> None:
        failure = request.failure or ""
        if not self._ours(request.url):
            if urlsplit(request.url).scheme in ("http", "https"):
                self.external.append(f"{request.method} {request.url}: {failure}")
        elif "ERR_ABORTED" not in failure:  # aborted by the page itself (navigation, a 404 style sheet)
            self.failures.append(f"request failed: {request.method} {request.url}: {failure}")

    def _response(self, response) -> None:
        if self._ours(response.url) and response.status >= 400 \
                and _raw_path(response.url) not in EXPECTED_404:
            self.failures.append(f"{response.status} {response.request.method} {response.url}")

    def _console(self, message) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        if message.text.startswith("Failed to load resource"):
            if url and not self._ours(url):
                return  # an external request: recorded by requestfailed
            if _raw_path(url) in EXPECTED_404:
                return
        self.failures.append(f"console error: {message.text} ({url})")

    def problems(self) -> list[str]:
        unknown = [e for e in self.external if not any(host in e for host in KNOWN_EXTERNAL_HOSTS)]
        return self.failures + [f"unexpected external request: {e}" for e in unknown]

    # -- actions ------------------------------------------------------------------------------------

    def open(self, path: str = "/") -> "ComfyPage":
        self.page.goto(self.server.url + path)
        self.page.locator("[data-testid=queue-button]").wait_for(timeout=60_000)
        self.page.wait_for_function(READY, timeout=60_000)
        return self

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def node_types(self) -> list[str]:
        return self.js("() => window.app.graph.nodes.map(n => n.type)")

    def wait_for_image(self, node_id: int, timeout: float = 120_000) -> str:
        """The first image a node shows (its ``/api/view`` URL), once it shows one."""
        self.page.wait_for_function("(id) => { const n = window.app.graph.getNodeById(id); "
                                    "return !!(n && n.imgs && n.imgs.length && n.imgs[0].complete "
                                    "&& n.imgs[0].naturalWidth > 0) }", arg=node_id, timeout=timeout)
        return self.js("(id) => window.app.graph.getNodeById(id).imgs[0].src", node_id)

    def run(self) -> None:
        self.page.locator("[data-testid=queue-button]").click()
