"""Benchmark: the built-in shapes-world models through the nodes, from a cold process.

    python bench/shapes_models.py [--runs 3] [--steps 20]

Each run is a fresh Python process (nothing cached, the OS file cache warm) that times, separately:

- ``import``: importing nodegraph, torch, diffusers and transformers (their top-level packages);
- ``classes``: importing the model classes the loaders use — diffusers' ``UNet2DConditionModel`` and
  ``AutoencoderKL`` and transformers' ``BertModel``. diffusers builds these lazily, and the first one
  drags in its whole model zoo (every transformer model, the LoRA loaders, transformers' losses and
  through them scipy): library start-up that any diffusers program pays once per process, whatever
  model it loads;
- ``load``: loading every default image model through the loader nodes — ``CheckpointLoaderSimple``
  "shapes-world (built-in)" (UNet, VAE and the packaged MiniLM text encoder) and ``CaptionerLoader``
  "shapes-world (built-in)" — the figure issue 8 bounds (≤ 3 s); ``classes + load`` is also printed;
- ``sample``: ``workflows/txt2img.json`` as shipped (20 Euler steps, CFG 5, 128×128 from 16×16 latents) after the load, i.e.
  text encoding + sampling + VAE decode + saving the PNG (the second-and-later prompt of a session);
- ``caption``: captioning that image with the built-in captioner.

Prints the median of each over the runs (and every run) as one line per figure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile, time, pathlib
t0 = time.perf_counter()
import torch, diffusers, transformers  # noqa: F401
from nodegraph import Engine
from nodegraph.builder import Graph
from nodegraph.context import Paths
from nodegraph.registry import default_registry
from nodegraph.workflow.loader import load_workflow_file
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
from transformers import BertModel  # noqa: F401
t_classes = time.perf_counter() - t0
root = pathlib.Path(tempfile.mkdtemp(prefix="nodegraph-shapes-bench-"))
paths = Paths(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp", models_dir=root / "models")
registry = default_registry(packs=False)
engine = Engine(registry, paths=paths, device="cpu", threads=1)
g = Graph()
ck = g.node("CheckpointLoaderSimple", "ck", ckpt_name="shapes-world (built-in)")
cap = g.node("CaptionerLoader", "cap", model_name="shapes-world (built-in)")
for i, out in enumerate((ck.out(0), ck.out(1), ck.out(2), cap)):
    g.node("PreviewAny", f"p{i}", source=out)
t1 = time.perf_counter()
engine.run(g).raise_for_status()
# the text encoder loads on first use: encode once so its load is counted here, not in sampling
g2 = Graph()
ck2 = g2.node("CheckpointLoaderSimple", "ck", ckpt_name="shapes-world (built-in)")
g2.node("PreviewAny", source=g2.node("CLIPTextEncode", "warm", text="", clip=ck2.out(1)))
engine.run(g2).raise_for_status()
t_load = time.perf_counter() - t1
workflow = load_workflow_file(pathlib.Path(sys.argv[1]), registry).api
workflow["cap"] = {"class_type": "CaptionerLoader", "inputs": {"model_name": "shapes-world (built-in)"}}
workflow["caption"] = {"class_type": "ImageCaption", "inputs": {"captioner": ["cap", 0], "image": ["8", 0]}}
workflow["show"] = {"class_type": "ShowText", "inputs": {"text": ["caption", 0]}}
t2 = time.perf_counter()
result = engine.run(workflow).raise_for_status()
t_total = time.perf_counter() - t2
t_caption = result.timings["caption"]
t_sample = t_total - t_caption
print(json.dumps({"import": t_import, "classes": t_classes, "load": t_load, "classes + load": t_classes + t_load, "sample": t_sample, "caption": t_caption,
                  "text": result.value("caption")[0] if isinstance(result.value("caption"), list) else result.value("caption")}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "workflows" / "txt2img.json")], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"caption of the txt2img image: {runs[0]['text']!r}")
    for key in ("import", "classes", "load", "classes + load", "sample", "caption"):
        values = [r[key] for r in runs]
        print(f"{key:>14}: median {statistics.median(values):.3f} s  (runs: {', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
