"""Benchmark: the engine's txt2img against the bare diffusers StableDiffusionPipeline, same model; and
step caching (EasyCache) against no cache on the same model.

    python bench/sampling.py [--runs 5] [--steps 20] [--size 256] [--channels 96]
                             [--cache-thresholds 0.2,0.5] [--cache-only]

A small random SD 1.x model (built from the real diffusers / transformers classes, saved as an LDM
single file and loaded by CheckpointLoaderSimple) keeps one run in the seconds on a CPU. Runs are
interleaved (engine, pipeline, engine, …); each engine run changes only the seed, so the loader and the
text encoders come from the cache — the script checks that only KSampler, VAEDecode and the output
node ran. The pipeline gets the prompt embeddings precomputed (``prompt_embeds``), so both sides do
the same work: the sampling loop plus the VAE decode. The same seed's images are compared too.

Step cache: KSampler (euler, ``simple`` scheduler: the sampling core, the path any patched MODEL takes)
on the plain model and on ``EasyCache(model, reuse_threshold=t)`` (ComfyUI's default start 0.15 / end
0.95) for each threshold, runs interleaved with the same seeds. Printed per threshold: steps skipped,
median wall and CPU time (the process's, less sensitive to other jobs on the machine), speed-up (median
no-cache time over median cached time, both clocks) and the max pixel error of the decoded images
against the no-cache image of the same seed (images in [0, 1]). A run's time includes its VAE decode.
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
    ap.add_argument("--cache-thresholds", default="0.2,0.5", help="EasyCache reuse_threshold values, comma-separated")
    ap.add_argument("--cache-only", action="store_true", help="only the step-cache figures")
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

    if args.cache_only:
        step_cache_figures(engine, args, prompt, negative, cfg)
        engine.close()
        return
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
    step_cache_figures(engine, args, prompt, negative, cfg)
    engine.close()


def step_cache_figures(engine, args, prompt: str, negative: str, cfg: float) -> None:
    """EasyCache at each threshold against no cache (see the module docstring)."""
    from nodegraph.builder import Graph

    thresholds = [float(t) for t in args.cache_thresholds.split(",") if t.strip()]
    h = w = args.size

    def graph(seed: int, threshold: float | None) -> Graph:
        g = Graph()
        ck = g.node("CheckpointLoaderSimple", "4", ckpt_name="bench_sd15.safetensors")
        model = ck.out(0)
        if threshold is not None:
            model = g.node("EasyCache", "ec", model=model, reuse_threshold=threshold, start_percent=0.15,
                           end_percent=0.95, verbose=False)
        ks = g.node("KSampler", "3", model=model, seed=seed, steps=args.steps, cfg=cfg, sampler_name="euler",
                    scheduler="simple", positive=g.node("CLIPTextEncode", "6", text=prompt, clip=ck.out(1)),
                    negative=g.node("CLIPTextEncode", "7", text=negative, clip=ck.out(1)),
                    latent_image=g.node("EmptyLatentImage", "5", width=w, height=h, batch_size=1), denoise=1.0)
        g.node("PreviewAny", "9", source=g.node("VAEDecode", "8", samples=ks, vae=ck.out(2)))
        return g

    variants: list[float | None] = [None] + thresholds
    for t in variants:  # warm-up: loads, encodes, builds each EasyCache node once
        engine.run(graph(10_000, t)).raise_for_status()
    times: dict = {t: [] for t in variants}
    cpu: dict = {t: [] for t in variants}
    errors: dict = {t: [] for t in thresholds}
    skipped: dict = {t: [] for t in thresholds}
    calls: dict = {t: [] for t in thresholds}
    for i in range(1, args.runs + 1):
        images = {}
        for t in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            result = engine.run(graph(20_000 + i, t)).raise_for_status()
            times[t].append(time.perf_counter() - t0)
            cpu[t].append(time.process_time() - c0)
            images[t] = result.value("8")
            if t is not None:
                (patch,) = result.value("ec").sampling_patches.model_patches
                stats = patch.last_stats
                skipped[t].append(stats.skipped)
                calls[t].append(f"{stats.calls - stats.skipped_calls}/{stats.calls}")
        for t in thresholds:
            errors[t].append((images[t] - images[None]).abs().max().item())
    base, base_cpu = statistics.median(times[None]), statistics.median(cpu[None])
    print(f"step cache: EasyCache (start 0.15, end 0.95) vs no cache; KSampler euler/simple, {args.steps} steps, "
          f"cfg {cfg}, {h}x{w}, {args.runs} seeds, runs interleaved")
    print(f"  no cache        runs (s): {' '.join(f'{x:.3f}' for x in times[None])}  median {base:.3f}; "
          f"CPU time median {base_cpu:.3f}")
    for t in thresholds:
        med, med_cpu = statistics.median(times[t]), statistics.median(cpu[t])
        print(f"  threshold {t:<5}  runs (s): {' '.join(f'{x:.3f}' for x in times[t])}  median {med:.3f}; "
              f"CPU time median {med_cpu:.3f}")
        print(f"      skipped {' '.join(str(n) for n in skipped[t])} of {args.steps} steps (UNet calls computed/made "
              f"{' '.join(calls[t])}); speed-up {base / med:.2f}x wall, {base_cpu / med_cpu:.2f}x CPU time; "
              f"max pixel error {max(errors[t]):.4f} (per seed {' '.join(f'{e:.4f}' for e in errors[t])})")


if __name__ == "__main__":
    main()
