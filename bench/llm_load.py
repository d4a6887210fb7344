"""Built-in LLM start benchmark: the one-time conversion and the warm ``LLMLoader``, each in a fresh process.

    python bench/llm_load.py [--repeats 3] [--cache DIR]

Every figure is the ``LLMLoader`` node's own time as the engine reports it (``RunResult.timings``), in
a new Python process running a graph LLMLoader → LLMChat (1 token) → ShowText on the CPU:

1. cold: an empty cache dir (a new temporary one unless ``--cache`` is given): the node hashes the
   packaged GGUF, converts it (GGUF → fp32 safetensors + tokenizer) and loads the result;
2. warm: the same cache dir, a second process: the node finds the conversion by the GGUF's remembered
   digest and loads it (transformers' llama modules are imported inside the node, as in a real run
   where LLMLoader is the first node to need them); median of ``--repeats`` processes;
3. warm, transformers imported first: the same, with the imports done before the run, so the figure is
   the load itself (tokenizer + memory-mapped safetensors); median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = r"""
import json, sys, tempfile, time
cache, mode = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "preimport":
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
imports = time.perf_counter() - start
from nodegraph import Engine, Graph, Paths
root = Paths.under(tempfile.mkdtemp())
paths = Paths(output_dir=root.output_dir, input_dir=root.input_dir, temp_dir=root.temp_dir,
              models_dir=root.models_dir, cache_dir=cache)
engine = Engine(paths=paths, device="cpu")
g = Graph()
llm = g.node("LLMLoader")
chat = g.node("LLMChat", llm=llm, message="Say hello.", temperature=0.0, max_tokens=1)
g.node("ShowText", text=chat.out(0))
result = engine.run(g)
assert result.failure is None, result.failure
print(json.dumps({"loader_s": result.timings[llm.id], "preimport_s": imports}))
"""


def run(cache: Path, mode: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", RUN, str(cache), mode], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache dir to use (default: a new empty temporary one, so the cold run converts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = (args.cache or Path(tmp) / "cache").absolute()
        print(f"machine: {os.cpu_count()} CPUs; load average {open('/proc/loadavg').read().split()[:3]}")
        print(f"cache dir: {cache}")
        cold = run(cache, "cold")
        print(f"cold  (hash + convert + load, fresh process):          LLMLoader {cold['loader_s']:6.2f} s")
        warm = [run(cache, "warm")["loader_s"] for _ in range(args.repeats)]
        print(f"warm  (second process start, imports inside the node): LLMLoader {statistics.median(warm):6.2f} s "
              f"median of {len(warm)} ({', '.join(f'{s:.2f}' for s in warm)})")
        pre = [run(cache, "preimport") for _ in range(args.repeats)]
        loads = [r["loader_s"] for r in pre]
        print(f"warm, transformers imported before the run:            LLMLoader {statistics.median(loads):6.2f} s "
              f"median of {len(loads)} ({', '.join(f'{s:.2f}' for s in loads)}); those imports took "
              f"{statistics.median(r['preimport_s'] for r in pre):.2f} s")
        print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
