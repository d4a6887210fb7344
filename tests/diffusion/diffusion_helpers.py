"""Graph builders and diffusers references shared by the diffusion tests."""

from __future__ import annotations

from nodegraph.builder import Graph


def txt2img_graph(ckpt="tiny_sd15.safetensors", positive="a red fox in snow", negative="", seed=42, steps=4,
                  cfg=7.0, sampler="euler", scheduler="normal", width=64, height=64, batch=1, save=False) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", "4", ckpt_name=ckpt)
    pos = g.node("CLIPTextEncode", "6", text=positive, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", "7", text=negative, clip=ck.out(1))
    lat = g.node("EmptyLatentImage", "5", width=width, height=height, batch_size=batch)
    ks = g.node("KSampler", "3", model=ck.out(0), seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                scheduler=scheduler, positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "8", samples=ks, vae=ck.out(2))
    if save:
        g.node("SaveImage", "9", images=dec, filename_prefix="test")
    else:
        g.node("PreviewAny", "9", source=dec)
    return g


def diffusers_pipeline(tiny, scheduler_cls=None, img2img=False, scheduler_from_folder=False):
    """A diffusers pipeline on the test's own modules. The base scheduler config is the in-memory one
    (like a real SD 1.x ``scheduler_config.json``, which does not name its timestep spacing) or, with
    ``scheduler_from_folder``, the one saved in the diffusers folder (which does)."""
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = cls(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
               scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
               requires_safety_checker=False)
    if scheduler_from_folder:
        pipe.scheduler = PNDMScheduler.from_pretrained(str(tiny.diffusers_dir / "scheduler"))
    if scheduler_cls is not None:
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
