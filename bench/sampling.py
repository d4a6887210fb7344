"""Benchmark: the engine's txt2img against the bare diffusers StableDiffusionPipeline, same model.

    python bench/sampling.py [--runs 5] [--steps 20] [--size 256] [--channels 96]

A small random SD 1.x model (built from the real diffusers / transformers classes, saved as an LDM
single file and loaded by CheckpointLoaderSimple) keeps one run in the seconds on a CPU. Runs are
interleaved (engine, pipeline, engine, …); each engine run changes only the seed, so the loader and the
text encoders come from the cache — the script checks that only KSampler, VAEDecode and the output
node ran. The pipeline gets the prompt embeddings precomputed (``prompt_embeds``), so both sides do
the same work: the sampling loop plus the VAE decode. The same seed's images are compared too.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test helpers: tests.diffusion, tests.helpers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--channels", type=int, default=96)
    args = ap.parse_args()

    from diffusers import EulerDiscreteScheduler

    from nodegraph import Engine, OutputCache
    from nodegraph.context import Paths
    from nodegraph.models import ModelManager
    from nodegraph.registry import default_registry
    from tests.diffusion.diffusion_helpers import diffusers_pipeline, txt2img_graph
    from tests.helpers.noise import engine_noise
    from tests.helpers.tiny_sd import build_sd1

    root = pathlib.Path(tempfile.mkdtemp(prefix="nodegraph-bench-"))
    tiny = build_sd1(root, name="bench_sd15", size=args.channels, layers_per_block=2)
    paths = Paths(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp", models_dir=root / "models")
    engine = Engine(default_registry(packs=False), paths=paths, device="cpu", threads=1,
                    cache=OutputCache(ram_budget=1 << 30), services={"models": ModelManager("cpu")})
    pipe = diffusers_pipeline(tiny, EulerDiscreteScheduler)
    prompt, negative, cfg = "a red fox in snow", "blue sky", 7.0
    h = w = args.size

    def graph(seed):
        return txt2img_graph("bench_sd15.safetensors", prompt, negative, seed=seed, steps=args.steps, cfg=cfg,
                             width=w, height=h)

    with torch.no_grad():
        embeds, neg_embeds = pipe.encode_prompt(prompt, "cpu", 1, True, negative)

    def run_pipe(seed):
        noise, gen = engine_noise((1, 4, h // 8, w // 8), seed)
        return pipe(prompt_embeds=embeds, negative_prompt_embeds=neg_embeds, num_inference_steps=args.steps,
                    guidance_scale=cfg, latents=noise, generator=gen, height=h, width=w, output_type="pt").images

    first = engine.run(graph(0)).raise_for_status()  # warm-up: loads and encodes once
    ref = run_pipe(0)
    diff = (first.value("8") - ref.permute(0, 2, 3, 1)).abs().max().item()
    engine_times, pipe_times = [], []
    for i in range(1, args.runs + 1):
        t0 = time.perf_counter()
        result = engine.run(graph(i)).raise_for_status()
        engine_times.append(time.perf_counter() - t0)
        assert sorted(result.executed) == ["3", "8", "9"], result.executed
        t0 = time.perf_counter()
        run_pipe(i)
        pipe_times.append(time.perf_counter() - t0)
    e, p = statistics.median(engine_times), statistics.median(pipe_times)
    manager = engine.services["models"]
    print(f"model: SD1-shaped random UNet channels ({args.channels}, {args.channels * 2}), {h}x{w}, "
          f"{args.steps} euler steps, cfg {cfg}, torch threads {torch.get_num_threads()}")
    print(f"max |engine - pipeline| (seed 0): {diff:.2e}")
    print(f"engine   runs (s): {' '.join(f'{t:.3f}' for t in engine_times)}  median {e:.3f}")
    print(f"pipeline runs (s): {' '.join(f'{t:.3f}' for t in pipe_times)}  median {p:.3f}")
    print(f"ratio engine/diffusers (median): {e / p:.3f}; (best of each): {min(engine_times) / min(pipe_times):.3f}")
    print(f"second run executed only: {result.executed}; model loads: "
          f"{sorted(m['loads'] for m in manager.loaded())}")
    engine.close()


if __name__ == "__main__":
    main()
