"""Benchmark: the engine's Flux.1 / SD3.5 text-to-image against the bare diffusers pipeline, same model.

    python bench/flow_sampling.py [--family flux|sd3] [--runs 5] [--steps 8] [--size 256] [--heads 4]

A small random transformer (the real diffusers class: Flux 2 double + 4 single blocks, SD3.5 4 joint
blocks, ``--heads`` heads of the family's width) with the tiny text encoders and 16-channel VAE of
``tests/dit/tiny_flow.py``, saved in the original single-file layouts and loaded by UNETLoader +
DualCLIPLoader / TripleCLIPLoader + VAELoader, keeps one run in the seconds on a CPU. Runs are
interleaved (engine, pipeline, …); each engine run changes only the seed, so the loaders and the text
encoding come from the cache (checked: only KSampler, VAEDecode and the output node run). The pipeline
gets the prompt embeddings precomputed (``prompt_embeds`` / ``pooled_prompt_embeds``) and the engine's
initial noise, so both sides do the same work: the sampling loop plus the VAE decode. Printed: median
wall and CPU time (the process's) per side, their ratio engine / diffusers, and the max pixel difference
of the same seed's images.
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
sys.path.insert(0, str(ROOT))  # the test helpers: tests.dit, tests.helpers


def build(root: pathlib.Path, family: str, heads: int):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from safetensors.torch import save_file

    from tests.dit import tiny_flow as tf

    text = tf.build_text_encoders(root)
    models = root / "models"
    for sub in ("diffusion_models", "vae"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if family == "flux":
        net = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                     attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=tf.T5_DIM,
                                     pooled_projection_dim=tf.CLIP_L, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        vae = tf._vae(0.3611, 0.1159)
        weights = tf.flux_to_bfl(tf._random_transformer(net, 12))
    else:
        net = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=4, attention_head_dim=64,
                                    num_attention_heads=heads, joint_attention_dim=tf.T5_DIM,
                                    caption_projection_dim=64 * heads, pooled_projection_dim=tf.CLIP_L + tf.CLIP_G,
                                    out_channels=16, pos_embed_max_size=64, qk_norm="rms_norm")
        vae = tf._vae(1.5305, 0.0609)
        weights = tf.sd3_to_mmdit(tf._random_transformer(net, 11))
    save_file(tf._contig(weights), str(models / "diffusion_models" / "bench.safetensors"))
    save_file(tf._contig(tf._vae_file(vae)), str(models / "vae" / "bench_vae.safetensors"))
    return net, vae, text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["flux", "sd3"], default="flux")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    args = ap.parse_args()
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    from nodegraph.builder import Graph
    from nodegraph.registry import default_registry
    from nodegraph_nodes.dit.model import pack_latents
    from tests.helpers.engines import make_engine
    from tests.helpers.noise import engine_noise

    prompt, cfg, size = "a red fox in snow", 4.5, args.size
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        net, vae, text = build(root, args.family, args.heads)
        engine = make_engine(root, root / "run", default_registry(packs=False))
        flux = args.family == "flux"

        def graph(seed: int) -> Graph:
            g = Graph()
            model = g.node("UNETLoader", unet_name="bench.safetensors", weight_dtype="default").out(0)
            if flux:
                clip = g.node("DualCLIPLoader", clip_name1="tiny_clip_l.safetensors",
                              clip_name2="tiny_t5xxl.safetensors", type="flux")
                model = g.node("ModelSamplingFlux", model=model, max_shift=1.15, base_shift=0.5, width=size,
                               height=size).out(0)
                pos = g.node("CLIPTextEncodeFlux", clip=clip, clip_l=prompt, t5xxl=prompt, guidance=3.5)
                neg = g.node("ConditioningZeroOut", conditioning=pos)
            else:
                clip = g.node("TripleCLIPLoader", clip_name1="tiny_clip_l.safetensors",
                              clip_name2="tiny_clip_g.safetensors", clip_name3="tiny_t5xxl.safetensors")
                pos = g.node("CLIPTextEncode", text=prompt, clip=clip)
                neg = g.node("CLIPTextEncode", text="", clip=clip)
            lat = g.node("EmptySD3LatentImage", width=size, height=size, batch_size=1)
            ks = g.node("KSampler", "ks", model=model, seed=seed, steps=args.steps, cfg=1.0 if flux else cfg,
                        sampler_name="euler", scheduler="simple" if flux else "normal", positive=pos, negative=neg,
                        latent_image=lat, denoise=1.0)
            dec = g.node("VAEDecode", "dec", samples=ks, vae=g.node("VAELoader", vae_name="bench_vae.safetensors"))
            g.node("PreviewAny", "out", source=dec)
            return g

        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=flux)
        if flux:
            from transformers import CLIPTextModel

            clip_l = CLIPTextModel(text.clip_l.config).eval()  # Flux's CLIP-L: no projection
            own = clip_l.state_dict()
            clip_l.load_state_dict({k if k in own else k[len("text_model."):]: v
                                    for k, v in text.clip_l.state_dict().items() if k != "text_projection.weight"})
            pipe = FluxPipeline(transformer=net, vae=vae, text_encoder=clip_l, tokenizer=text.tokenizer,
                                text_encoder_2=text.t5, tokenizer_2=text.tokenizer_t5, scheduler=sched)
            with torch.no_grad():
                embeds = dict(zip(("prompt_embeds", "pooled_prompt_embeds"),
                                  pipe.encode_prompt(prompt, None, max_sequence_length=256)[:2]))
        else:
            pipe = StableDiffusion3Pipeline(transformer=net, vae=vae, text_encoder=text.clip_l,
                                            tokenizer=text.tokenizer, text_encoder_2=text.clip_g,
                                            tokenizer_2=text.tokenizer_2, text_encoder_3=text.t5,
                                            tokenizer_3=text.tokenizer_t5, scheduler=sched)
            with torch.no_grad():
                out = pipe.encode_prompt(prompt, None, None, negative_prompt="", max_sequence_length=77)
            embeds = dict(zip(("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                               "negative_pooled_prompt_embeds"), out))
        pipe.set_progress_bar_config(disable=True)

        def run_pipe(seed: int) -> torch.Tensor:
            noise, _ = engine_noise((1, 16, size // 8, size // 8), seed)
            kwargs = {"guidance_scale": 3.5 if flux else cfg, "latents": pack_latents(noise) if flux else noise}
            with torch.no_grad():
                return pipe(num_inference_steps=args.steps, height=size, width=size, output_type="pt",
                            **embeds, **kwargs).images.permute(0, 2, 3, 1)

        engine.run(graph(0)).raise_for_status()  # loads the models and encodes the prompt once
        run_pipe(0)
        wall: dict[str, list[float]] = {"engine": [], "pipeline": []}
        cpu: dict[str, list[float]] = {"engine": [], "pipeline": []}
        diff = 0.0
        for i in range(args.runs):
            seed = 1000 + i
            t0, c0 = time.perf_counter(), time.process_time()
            result = engine.run(graph(seed)).raise_for_status()
            wall["engine"].append(time.perf_counter() - t0)
            cpu["engine"].append(time.process_time() - c0)
            assert sorted(result.executed) == ["dec", "ks", "out"], result.executed
            t0, c0 = time.perf_counter(), time.process_time()
            ref = run_pipe(seed)
            wall["pipeline"].append(time.perf_counter() - t0)
            cpu["pipeline"].append(time.process_time() - c0)
            diff = max(diff, float((result.value("dec") - ref).abs().max()))
        engine.close()
    e, p = statistics.median(wall["engine"]), statistics.median(wall["pipeline"])
    ec, pc = statistics.median(cpu["engine"]), statistics.median(cpu["pipeline"])
    print(f"{args.family}: {args.steps} steps at {size}x{size}, {torch.get_num_threads()} threads")
    print(f"engine   runs (s): {' '.join(f'{t:.3f}' for t in wall['engine'])}  median {e:.3f}; CPU median {ec:.3f}")
    print(f"pipeline runs (s): {' '.join(f'{t:.3f}' for t in wall['pipeline'])}  median {p:.3f}; CPU median {pc:.3f}")
    print(f"ratio engine/diffusers (median wall): {e / p:.3f}; (median CPU): {ec / pc:.3f}; "
          f"max pixel difference {diff:.2e}")


if __name__ == "__main__":
    main()
