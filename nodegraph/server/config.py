"""Server settings: one typed record built by the CLI (or a test) and handed to ``create_app``."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..context import Paths

MiB = 1024 * 1024


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerConfig:
    """Everything the server needs; defaults are the safe ones (loopback, caps on every input).

    ``auth_token``: required on every request when set; :meth:`resolved` generates one when the bind
    address is not loopback. ``allowed_hosts`` / ``allowed_origins``: extra ``Host`` names and
    ``Origin`` values (``http://name:port``) to accept besides loopback / same-origin ones.
    ``nodes_modules``: extra modules whose node classes are registered (test and local node packs).
    ``ray_*``: run jobs on a Ray cluster instead of in this process (see ``docs/scale-out.md``).
    """

    host: str = "127.0.0.1"
    port: int = 8188
    paths: Paths = field(default_factory=Paths)
    data_dir: Path = Path("data")
    auth_token: str | None = None
    workers: int = 2
    device: str | None = None
    max_upload_bytes: int = 100 * MiB
    max_body_bytes: int = 16 * MiB
    max_image_pixels: int = 178_956_970  # Pillow's default decompression-bomb limit (2x warns)
    max_queue: int = 10_000
    max_attempts: int = 3
    preview_size: int = 512
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    nodes_modules: tuple[str, ...] = ()
    #: scale-out (``nodegraph.cluster``): a Ray address (``auto``, ``host:port``) runs jobs on Ray actors
    ray_address: str | None = None
    ray_workers: int | None = None
    #: seconds a job waits for the busy worker holding its models before an idle one loads them
    ray_affinity_wait: float = 0.0
    #: ``None``: workers on other machines return output files as bytes; ``True``/``False`` force it
    ray_ship_outputs: bool | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "nodegraph.sqlite3"

    def resolved(self) -> tuple["ServerConfig", bool]:
        """This config with a generated token when one is required; ``True`` if it was generated."""
        if self.auth_token or self.loopback:
            return self, False
        from dataclasses import replace

        return replace(self, auth_token=secrets.token_urlsafe(32)), True

    def check(self) -> None:
        """Refuse unsafe combinations: a public bind must have a token."""
        if not self.loopback and not self.auth_token:
            raise ValueError(f"binding {self.host} (not loopback) requires an auth token; pass "
                             "--auth-token or let the server generate one")
