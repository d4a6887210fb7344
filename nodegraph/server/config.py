"""Server settings: one typed record built by the CLI (or a test) and handed to ``create_app``."""

from __future__ import annotations

import ipaddress
import secrets
import warnings
from dataclasses import InitVar, dataclass, field
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
    ``custom_nodes_dirs``: folders of ComfyUI custom node packs to load at start (never through the API).
    ``threads``: nodes one engine runs at once (``workers=`` is its old, deprecated name). Where jobs
    run (this process, or Ray actors) is not configured here: ``create_app``'s ``make_runner`` says.
    """

    host: str = "127.0.0.1"
    port: int = 8188
    paths: Paths = field(default_factory=Paths)
    data_dir: Path = Path("data")
    auth_token: str | None = None
    threads: int = 2
    device: str | None = None
    max_upload_bytes: int = 100 * MiB
    max_body_bytes: int = 16 * MiB
    max_image_pixels: int = 178_956_970  # Pillow's default decompression-bomb limit (2x warns)
    max_queue: int = 10_000
    #: nodes one prompt may hold (a canvas workflow's nodes, or an API prompt's); more is a 400
    max_prompt_nodes: int = 10_000
    #: the output cache's budgets in bytes (``None``: the machine's defaults, see ``nodegraph.cache``;
    #: 0: keep no results between prompts, ``--cache-none``)
    cache_ram_bytes: int | None = None
    cache_vram_bytes: int | None = None
    #: the model manager's placement (``serve --lowvram`` / ``--vram-budget-gb``, see ``nodegraph.models``)
    low_vram: bool = False
    vram_budget_bytes: int | None = None
    #: flush every job-store commit to the disk before it returns (``serve --sync-commits``); by default
    #: commits survive a crash of the server at once and a power failure after ``SYNC_DELAY`` (0.2 s)
    sync_commits: bool = False
    max_attempts: int = 3
    preview_size: int = 512
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    nodes_modules: tuple[str, ...] = ()
    #: ComfyUI custom node packs: the folders to load them from (none by default; the CLI passes
    #: ``--custom-nodes-dir`` or ``./custom_nodes``), and the pack names not to load
    custom_nodes_dirs: tuple[Path, ...] = ()
    disabled_custom_nodes: tuple[str, ...] = ()
    #: the page at ``/``: ``"builtin"`` (our canvas; ComfyUI's frontend, when installed, at
    #: ``/comfyui/``) or ``"comfyui"`` (ComfyUI's frontend; our canvas at ``/builtin/``)
    frontend: str = "builtin"
    workers: InitVar[int | None] = None

    def __post_init__(self, workers: int | None) -> None:
        if workers is not None:
            warnings.warn("ServerConfig(workers=...) is deprecated; use ServerConfig(threads=...)",
                          DeprecationWarning, stacklevel=3)
            self.threads = workers

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
