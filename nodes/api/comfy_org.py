"""The client of Comfy.org's API proxy (``https://api.comfy.org``) that API nodes (GeminiNodeV2) call.

This is the only code in nodegraph that sends requests over the network, and it sends one only for a
prompt that carries the user's Comfy.org credentials: ComfyUI's frontend queues them in the prompt's
``extra_data`` as ``auth_token_comfy_org`` (sign-in token, sent as ``Authorization: Bearer …``) or
``api_key_comfy_org`` (API key, sent as ``X-API-KEY``; the token wins when both are given), as ComfyUI's
API nodes send them. The queue strips both keys from history (``nodegraph/queue/store.py``); nothing
here logs or stores them, and error messages have them masked.

Where requests go: :class:`ComfyOrgSettings` from the engine's ``services["comfy_org"]`` when an
embedder sets it, else the base URL in the environment variable ``NODEGRAPH_COMFY_API_BASE``, else
``https://api.comfy.org``. Stricter than ComfyUI: credentials are checked before any network I/O (the
error names the missing ``extra_data`` key); a base URL must be ``https://`` (``http://`` only for a
loopback host) without user, query or fragment; redirects are never followed (credentials go to the
configured host only); an answer that is not a JSON object is an error naming the node.

Retries (as ComfyUI's client): statuses 408, 429, 500, 502, 503, 504 and connection failures are retried
``max_retries`` times with doubling delays (a ``Retry-After`` in seconds is honoured, capped), all
under one ``Idempotency-Key``. An interrupted run cancels the request within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Awaitable, TypeVar
from urllib.parse import urlsplit

from nodegraph.errors import Interrupted
from nodegraph.run_sync import run_sync as run_to_completion

LOG = logging.getLogger("nodegraph.nodes.api")

DEFAULT_BASE_URL = "https://api.comfy.org"
#: environment variable naming another base URL (a staging proxy, a local stand-in)
BASE_URL_ENV = "NODEGRAPH_COMFY_API_BASE"
#: the engine service an embedder may set to a :class:`ComfyOrgSettings`
SERVICE = "comfy_org"
#: the prompt's ``extra_data`` keys holding the credentials (ComfyUI's hidden AUTH_TOKEN_COMFY_ORG /
#: API_KEY_COMFY_ORG inputs)
AUTH_TOKEN_KEY = "auth_token_comfy_org"
API_KEY_KEY = "api_key_comfy_org"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 30.0
#: how often a waiting request looks at the run's interrupt flag (seconds)
INTERRUPT_POLL = 0.1

T = TypeVar("T")


class ApiNodeError(RuntimeError):
    """An API node's request could not be made or was answered with an error (the message names the node)."""


@dataclass(frozen=True)
class ComfyOrgSettings:
    """Where and how API nodes send requests; an engine service (``services["comfy_org"]``)."""

    base_url: str = DEFAULT_BASE_URL
    #: seconds one attempt may take, from connecting to the last byte of the answer
    timeout: float = 600.0
    max_retries: int = 2
    #: first retry delay in seconds (doubled each retry)
    retry_delay: float = 1.0


@dataclass(frozen=True)
class Credentials:
    """The user's Comfy.org credentials for one prompt. ``repr`` never shows them."""

    auth_token: str | None = None
    api_key: str | None = None

    def __repr__(self) -> str:
        state = lambda value: "<set>" if value else "<unset>"  # noqa: E731
        return f"Credentials(auth_token={state(self.auth_token)}, api_key={state(self.api_key)})"

    @classmethod
    def from_extra_data(cls, extra_data: dict[str, Any] | None, node: str) -> "Credentials":
        """The credentials the prompt was queued with, or an :class:`ApiNodeError` naming the keys."""
        extra = extra_data or {}
        token, key = extra.get(AUTH_TOKEN_KEY), extra.get(API_KEY_KEY)
        token = token.strip() if isinstance(token, str) and token.strip() else None
        key = key.strip() if isinstance(key, str) and key.strip() else None
        if token is None and key is None:
            raise ApiNodeError(
                f"{node}: this is an API node (it calls Comfy.org's paid API) and the prompt carries no "
                f"Comfy.org credentials: extra_data['{AUTH_TOKEN_KEY}'] and extra_data['{API_KEY_KEY}'] are "
                "both missing. Sign in to Comfy.org in ComfyUI's frontend, or queue the prompt with "
                f"{{\"extra_data\": {{\"{API_KEY_KEY}\": \"<your key>\"}}}}. Nothing was sent.")
        return cls(token, key)

    def headers(self) -> dict[str, str]:
        if self.auth_token:
            return {"Authorization": f"Bearer {self.auth_token}"}
        return {"X-API-KEY": str(self.api_key)}

    def mask(self, text: str) -> str:
        """``text`` with any credential in it replaced by ``***``."""
        for secret in (self.auth_token, self.api_key):
            if secret:
                text = text.replace(secret, "***")
        return text


def settings_for(services: dict[str, Any] | None) -> ComfyOrgSettings:
    """The engine's :class:`ComfyOrgSettings` service, else the defaults with ``NODEGRAPH_COMFY_API_BASE``."""
    configured = (services or {}).get(SERVICE)
    if configured is not None:
        if not isinstance(configured, ComfyOrgSettings):
            raise TypeError(f"services[{SERVICE!r}] must be a ComfyOrgSettings, not {type(configured).__name__}")
        return configured
    return ComfyOrgSettings(base_url=os.environ.get(BASE_URL_ENV, "").strip() or DEFAULT_BASE_URL)


def checked_base_url(url: str, node: str) -> str:
    """``url`` without a trailing slash, if it is a safe place to send credentials to."""
    parts = urlsplit(url)
    where = f"{node}: the Comfy.org API base URL {url!r} ({BASE_URL_ENV} or services[{SERVICE!r}])"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ApiNodeError(f"{where} is not an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ApiNodeError(f"{where} must not hold a user, a query or a fragment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ApiNodeError(f"{where} is plain http to a host other than this machine; credentials are sent "
                           "over https only (http is allowed for 127.0.0.1, ::1 and localhost)")
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ApiResponse:
    """A decoded answer: HTTP status and its JSON object."""

    status: int
    body: dict[str, Any]


class ComfyOrgClient:
    """Sends an API node's requests to the proxy; see the module doc."""

    def __init__(self, node: str, credentials: Credentials, settings: ComfyOrgSettings | None = None, *,
                 interrupt: threading.Event | None = None, job_id: str | None = None) -> None:
        self.node = node
        self.credentials = credentials
        self.settings = settings or ComfyOrgSettings()
        self.base_url = checked_base_url(self.settings.base_url, node)
        self.interrupt = interrupt
        self.job_id = job_id

    @classmethod
    def for_node(cls, ctx: Any, node: str) -> "ComfyOrgClient":
        """The client for a running node (``ctx``: its NodeContext): credentials from the prompt's
        ``extra_data`` (checked first), settings from the engine's services."""
        credentials = Credentials.from_extra_data(ctx.run.extra_data, node)
        return cls(node, credentials, settings_for(ctx.run.services), interrupt=ctx.run.interrupt,
                   job_id=ctx.run.prompt_id)

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to ``base_url + path``; the answer's JSON object, or an :class:`ApiNodeError`."""
        if not path.startswith("/"):
            raise ValueError(f"API path {path!r} must start with '/'")
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return run_sync(self._interruptible(self._post(self.base_url + path, payload))).body

    # -- internals --------------------------------------------------------------------------------

    def _headers(self, idempotency_key: str) -> dict[str, str]:
        headers = {**self.credentials.headers(), "Content-Type": "application/json", "Accept": "application/json",
                   "Idempotency-Key": idempotency_key, "User-Agent": "nodegraph"}
        if self.job_id:
            headers["Comfy-Job-Id"] = self.job_id
        return headers

    async def _post(self, url: str, payload: bytes) -> ApiResponse:
        import aiohttp

        headers = self._headers(uuid.uuid4().hex)
        timeout = aiohttp.ClientTimeout(total=float(self.settings.timeout))
        attempt = 0
        async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
            while True:
                try:
                    async with session.post(url, data=payload, headers=headers, allow_redirects=False) as resp:
                        status, raw = resp.status, await resp.read()
                        retry_after = resp.headers.get("Retry-After")
                        location = resp.headers.get("Location", "")
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    if attempt < self.settings.max_retries:
                        await asyncio.sleep(self._delay(attempt, None))
                        attempt += 1
                        continue
                    tries = f"tried {attempt + 1} time(s)"
                    if isinstance(exc, asyncio.TimeoutError):
                        raise ApiNodeError(f"{self.node}: no answer from the Comfy.org API at {self.base_url} "
                                           f"within {self.settings.timeout:g} s ({tries})") from None
                    reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                    raise ApiNodeError(self._masked(f"{self.node}: cannot reach the Comfy.org API at "
                                                    f"{self.base_url} ({reason}; {tries})")) from None
                LOG.debug("%s: POST %s -> HTTP %s (%d bytes)", self.node, url, status, len(raw))
                if status in RETRY_STATUSES and attempt < self.settings.max_retries:
                    await asyncio.sleep(self._delay(attempt, retry_after))
                    attempt += 1
                    continue
                if 300 <= status < 400:
                    raise ApiNodeError(f"{self.node}: the Comfy.org API answered HTTP {status} (redirect to "
                                       f"{location or 'nowhere'}); redirects are not followed, so the "
                                       "credentials stay with the configured host. Check the base URL.")
                if status >= 400:
                    raise ApiNodeError(self._masked(self._http_error(status, raw)))
                return ApiResponse(status, self._json_object(raw, status))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after.strip()), MAX_RETRY_AFTER)
        return float(self.settings.retry_delay) * (2 ** attempt)

    def _json_object(self, raw: bytes, status: int) -> dict[str, Any]:
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiNodeError(self._masked(f"{self.node}: malformed answer from the Comfy.org API (HTTP {status}): "
                                            f"not JSON: {_excerpt(raw)}")) from None
        if not isinstance(body, dict):
            raise ApiNodeError(f"{self.node}: malformed answer from the Comfy.org API (HTTP {status}): a JSON "
                               f"{type(body).__name__}, not an object")
        return body

    def _http_error(self, status: int, raw: bytes) -> str:
        """ComfyUI's user-facing sentences for the statuses it names, plus the server's own message."""
        hints = {401: "Unauthorized: the Comfy.org credentials were refused; sign in again or check the API key",
                 402: "Payment Required: add credits to your Comfy.org account",
                 409: "there is a problem with your Comfy.org account; contact support@comfy.org",
                 429: "Rate Limit Exceeded: try again later"}
        message = _server_message(raw)
        parts = [f"{self.node}: the Comfy.org API answered HTTP {status}"]
        if status in hints:
            parts.append(hints[status])
        if message:
            parts.append(f"server says: {message}")
        return "; ".join(parts)

    def _masked(self, text: str) -> str:
        return self.credentials.mask(text)

    async def _interruptible(self, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=INTERRUPT_POLL)
                if done:
                    return task.result()
                if self.interrupt is not None and self.interrupt.is_set():
                    raise Interrupted(f"interrupted in {self.node} while waiting for the Comfy.org API")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def _server_message(raw: bytes) -> str:
    """The error message in an answer body: ``error.message`` (+ ``type``), ``message``, or the text."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return _excerpt(raw)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            kind = error.get("type") or error.get("status")
            return error["message"] + (f" (type: {kind})" if isinstance(kind, str) and kind else "")
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str):
                return body[key]
    return _excerpt(raw)


def _excerpt(raw: bytes, limit: int = 300) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= limit else text[:limit] + "…") if text else "(empty body)"


def run_sync(work: Awaitable[T]) -> T:
    """Run a coroutine to completion from a node's (synchronous) ``execute``: on this thread when it has
    no running event loop, else on a helper thread (:func:`nodegraph.run_sync.run_sync`)."""
    return run_to_completion(work, "nodegraph-api-node")


__all__ = ["ApiNodeError", "ApiResponse", "ComfyOrgClient", "ComfyOrgSettings", "Credentials", "DEFAULT_BASE_URL",
           "BASE_URL_ENV", "SERVICE", "AUTH_TOKEN_KEY", "API_KEY_KEY", "checked_base_url", "settings_for", "run_sync"]
