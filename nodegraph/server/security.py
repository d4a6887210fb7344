"""Request checks that run before any route: Host, Origin, token, content type, body size.

* ``Host``: when bound to loopback, only ``localhost`` / ``127.0.0.1`` / ``[::1]`` (any port) — a
  DNS-rebinding page reaches us under its own host name and is refused.
* ``Origin``: absent (non-browser clients) or same-origin (scheme-less host:port equal to ``Host``),
  or listed in ``allowed_origins``; ``Origin: null`` and cross-site origins are refused.
* fetch metadata: a state-changing request that carries no ``Origin`` (a browser or a proxy stripped
  it) but says ``Sec-Fetch-Site`` other than ``same-origin`` / ``none`` is a cross-site page: refused.
* token: when configured, ``Authorization: Bearer <token>`` or ``?token=<token>`` on every request
  (WebSocket included; browsers cannot set headers there).
* bodies of state-changing requests, by who sends them (:func:`sent_by_browser`):

  - a **browser** (``Origin`` or ``Sec-Fetch-*`` headers present) must send ``application/json``
    (``multipart/form-data`` on upload routes): the content types a cross-site HTML form can send
    (``text/plain``, ``application/x-www-form-urlencoded``) get 415, so a form post can never queue
    a prompt even where an old browser sent no ``Origin``;
  - a **script** (neither header: urllib, requests, curl — every browser request since 2020 carries
    one of them) may send its JSON with any Content-Type or none: ComfyUI's own ``script_examples``
    post with urllib's default ``application/x-www-form-urlencoded``, and ``requests.post(data=…)``
    sends none. The route reads the body as JSON whatever it is labelled (``Api.json_body``, the one
    place bodies are parsed). Upload routes still need ``multipart/form-data``.
* a declared body larger than the route's cap gets 413 before it is read.
"""

from __future__ import annotations

import hmac
import logging
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from .comfy_errors import bad_request
from .config import ServerConfig, is_loopback

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: the fetch-metadata headers browsers add to every request (scripts send none of them)
FETCH_METADATA = ("Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")
#: ``Sec-Fetch-Site`` values of a request this server's own page (or the user, typing the URL) made
SAME_ORIGIN_SITES = {"same-origin", "none"}


def refuse(status: int, type_: str, message: str) -> web.Response:
    return web.json_response(bad_request(type_, message), status=status)


def split_host(value: str) -> tuple[str, str | None]:
    """``"[::1]:8188"`` → ``("::1", "8188")``; ``"localhost"`` → ``("localhost", None)``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return value, None
        host, rest = value[1:end], value[end + 1:]
        return host, rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    return value, None


def host_allowed(config: ServerConfig, host_header: str | None) -> bool:
    if not host_header:
        return False
    host, _ = split_host(host_header)
    if host in (h.lower() for h in config.allowed_hosts):
        return True
    if config.loopback:
        return host in LOOPBACK_NAMES
    return True  # a public bind is protected by its token; Host names vary behind proxies


def origin_allowed(config: ServerConfig, origin: str | None, host_header: str | None) -> bool:
    if origin is None:
        return True  # not a browser, or a same-origin GET
    if origin.strip().lower() == "null":
        return False
    if origin.rstrip("/") in config.allowed_origins:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or not host_header:
        return False
    origin_host = parts.hostname.lower()
    origin_port = str(parts.port or (443 if parts.scheme == "https" else 80))
    host, port = split_host(host_header)
    port = port or "80"
    if origin_host == host and origin_port == port:
        return True
    # 'localhost' vs '127.0.0.1' on the same port is still this server, not another site
    return config.loopback and is_loopback(origin_host) and is_loopback(host) and origin_port == port


def sent_by_browser(headers) -> bool:
    """Whether a browser sent the request: it carries ``Origin`` or fetch metadata (``Sec-Fetch-*``).

    Browsers add ``Origin`` to every POST and ``Sec-Fetch-Site`` to every request (a page cannot
    remove either); clients such as urllib, requests or curl send neither."""
    return "Origin" in headers or any(name in headers for name in FETCH_METADATA)


def cross_site_without_origin(request: web.Request) -> bool:
    """A state-changing request with no ``Origin`` whose fetch metadata says another site made it
    (``cross-site``, or ``same-site``: another port or subdomain is another origin)."""
    if request.method not in STATE_CHANGING or "Origin" in request.headers:
        return False
    site = request.headers.get("Sec-Fetch-Site")
    return site is not None and site.strip().lower() not in SAME_ORIGIN_SITES


def token_ok(config: ServerConfig, request: web.Request) -> bool:
    expected = config.auth_token
    if not expected:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def same_origin_browser(headers) -> bool:
    """A browser request this server's own page made: its ``Origin`` (checked before) or its
    ``Sec-Fetch-Site`` says so."""
    site = headers.get("Sec-Fetch-Site")
    return "Origin" in headers or (site is not None and site.strip().lower() in SAME_ORIGIN_SITES)


def security_middleware(config: ServerConfig, upload_paths: frozenset[str],
                        raw_body: Callable[[str], bool] = lambda path: False):
    """The aiohttp middleware enforcing the checks in the module doc, in that order.

    ``raw_body(path)``: routes whose body is a file or a value, not a request (ComfyUI's ``/userdata``
    and ``/settings``, which its frontend posts as ``text/plain``): a browser may send any Content-Type
    there when the request provably comes from this server's own page (same-origin ``Origin``, or
    ``Sec-Fetch-Site: same-origin``); a cross-site page is refused by the Origin checks above."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not host_allowed(config, host):
            return refuse(403, "forbidden_host", f"Host {host!r} is not accepted by this server "
                          "(DNS rebinding protection); use http://127.0.0.1:<port>")
        if not origin_allowed(config, request.headers.get("Origin"), host):
            return refuse(403, "forbidden_origin", "cross-origin requests are refused; pass "
                          "--allow-origin to permit a site")
        if cross_site_without_origin(request):
            return refuse(403, "forbidden_origin", f"a request from another site (Sec-Fetch-Site: "
                          f"{request.headers['Sec-Fetch-Site']}) cannot change anything here")
        if request.method == "OPTIONS":
            return web.Response(status=200)
        if not token_ok(config, request):
            return refuse(401, "unauthorized", "this server needs its token: send "
                          "'Authorization: Bearer <token>' or add '?token=<token>'")
        if request.method in STATE_CHANGING:
            length = request.content_length
            upload = _route_path(request) in upload_paths
            # a script's JSON may come labelled as anything (see the module doc); a browser's may not,
            # except a raw body from this server's own page
            raw = not upload and raw_body(request.path) and same_origin_browser(request.headers)
            checked = upload or (sent_by_browser(request.headers) and not raw)
            if checked and (request.body_exists or request.headers.get("Content-Type")):
                wanted = "multipart/form-data" if upload else "application/json"
                if request.content_type != wanted:
                    return refuse(415, "unsupported_media_type",
                                  f"Content-Type {request.content_type!r} is not accepted here; send "
                                  f"{wanted}")
            limit = config.max_upload_bytes + 1024 * 1024 if upload else config.max_body_bytes
            if length is not None and length > limit:
                return refuse(413, "request_too_large",
                              f"the request body is {length} bytes; the limit here is {limit} bytes")
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return middleware


def _route_path(request: web.Request) -> str:
    path = request.path
    return path[4:] if path.startswith("/api/") else path


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers JSON with a clear message; the server keeps serving."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return refuse(413, "request_too_large", exc.text or "the request body is too large")
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return web.json_response(bad_request(exc.reason.lower().replace(" ", "_"), exc.reason,
                                                 exc.text or ""), status=exc.status, headers={
                k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("error handling %s %s", request.method, request.path)
        return refuse(500, "internal_error", f"{type(exc).__name__}: {exc}")
