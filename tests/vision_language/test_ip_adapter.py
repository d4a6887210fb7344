"""Image prompts through IP-Adapter: IPAdapterLoader + ImagePromptApply against diffusers' own pipeline.

A tiny IP-Adapter in diffusers' file layout (``image_proj.*`` + ``ip_adapter.<id>.to_k_ip/to_v_ip``, random
weights) is built for the tiny SD 1.x UNet (cross-attention width 32) and the tiny single-file CLIP vision
model (projection width 32), saved as safetensors in ``models/ipadapter/`` and loaded by the node.
"""

from __future__ import annotations

import copy
import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.helpers.noise import engine_noise
from tests.helpers.tiny_sd import build_sdxl
from tests.vision_language.vl_helpers import failure_of, fresh_engine, run_ok, shrink

CKPT = "tiny_sd15.safetensors"
CLIP_VISION = "tiny_clip_vision.safetensors"
ADAPTER = "tiny_ip_adapter_sd15.safetensors"
PLUS = "tiny_ip_adapter_plus_sd15.safetensors"
SEED, STEPS, CFG = 1234, 4, 7.5
WORKFLOWS = pathlib.Path(__file__).resolve().parents[2] / "workflows"


def make_ip_adapter(unet, embed_dim: int, cross: int | None = None, seed: int = 11, kind: str = "basic") -> dict:
    """An IP-Adapter state dict in diffusers' layout for ``unet`` (``cross`` overrides its width)."""
    g = torch.Generator().manual_seed(seed)
    cross = cross or unet.config.cross_attention_dim
    rnd = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    sd = {}
    if kind == "basic":
        sd.update({"image_proj.proj.weight": rnd(4 * cross, embed_dim), "image_proj.proj.bias": rnd(4 * cross),
                   "image_proj.norm.weight": 1 + rnd(cross, s=0.05), "image_proj.norm.bias": rnd(cross, s=0.05)})
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name[: -len(".processor")]).to_k.weight.shape[0]
        sd[f"ip_adapter.{key_id}.to_k_ip.weight"] = rnd(hidden, cross, s=0.5)
        sd[f"ip_adapter.{key_id}.to_v_ip.weight"] = rnd(hidden, cross, s=0.5)
        key_id += 2
    return sd


def make_ip_adapter_plus(unet, clip_hidden: int, queries: int = 8, width: int = 64, seed: int = 21) -> dict:
    """An IP-Adapter Plus (perceiver resampler, original key names) in diffusers' file layout.

    diffusers' converter builds a depth-4 resampler with 64-wide heads, so ``width`` is 64.
    """
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    rnd = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    proj = {"latents": rnd(1, queries, width, s=1.0), "proj_in.weight": rnd(width, clip_hidden),
            "proj_in.bias": rnd(width), "proj_out.weight": rnd(cross, width), "proj_out.bias": rnd(cross),
            "norm_out.weight": 1 + rnd(cross, s=0.05), "norm_out.bias": rnd(cross, s=0.05)}
    for i in range(4):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = 1 + rnd(width, s=0.05)
            proj[f"layers.{i}.0.{norm}.bias"] = rnd(width, s=0.05)
        proj.update({f"layers.{i}.0.to_q.weight": rnd(width, width), f"layers.{i}.0.to_kv.weight": rnd(2 * width, width),
                     f"layers.{i}.0.to_out.weight": rnd(width, width), f"layers.{i}.1.0.weight": 1 + rnd(width, s=0.05),
                     f"layers.{i}.1.0.bias": rnd(width, s=0.05), f"layers.{i}.1.1.weight": rnd(4 * width, width),
                     f"layers.{i}.1.3.weight": rnd(width, 4 * width)})
    sd = {"image_proj." + k: v for k, v in proj.items()}
    sd.update({k: v for k, v in make_ip_adapter(unet, 1, seed=seed).items() if k.startswith("ip_adapter.")})
    return sd


@pytest.fixture(scope="session")
def ip_files(models_root, tiny_sd):
    folder = models_root / "models" / "ipadapter"
    folder.mkdir(parents=True, exist_ok=True)
    sd = make_ip_adapter(tiny_sd.unet, embed_dim=32)
    save_file(sd, str(folder / ADAPTER))
    save_file(make_ip_adapter(tiny_sd.unet, embed_dim=32, cross=48), str(folder / "wrong_width.safetensors"))
    save_file(make_ip_adapter(tiny_sd.unet, embed_dim=16, seed=3), str(folder / "wrong_embed.safetensors"))
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(folder / "not_an_adapter.safetensors"))
    save_file(make_ip_adapter_plus(tiny_sd.unet, clip_hidden=64), str(folder / PLUS))
    return sd


@pytest.fixture
def ref_image(vl_engine):
    from PIL import Image

    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(vl_engine.paths.input_dir / "ref.png")
    return "ref.png"


def graph(weight=None, start=0.0, end=1.0, adapter=ADAPTER, sampler="euler", encode_in_apply=False) -> Graph:
    """txt2img with the tiny checkpoint; with ``weight`` the model goes through ImagePromptApply."""
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", "ckpt", ckpt_name=CKPT)
    model = ck.out(0)
    if weight is not None:
        cv = g.node("CLIPVisionLoader", "cv", clip_name=CLIP_VISION)
        img = g.node("LoadImage", "img", image="ref.png")
        ip = g.node("IPAdapterLoader", "ipl", ipadapter_file=adapter)
        if encode_in_apply:
            apply = g.node("ImagePromptApply", "apply", model=model, ipadapter=ip, image=img.out(0), clip_vision=cv,
                           weight=weight, start_at=start, end_at=end)
        else:
            enc = g.node("CLIPVisionEncode", "enc", clip_vision=cv, image=img.out(0), crop="center")
            apply = g.node("ImagePromptApply", "apply", model=model, ipadapter=ip, clip_vision_output=enc,
                           weight=weight, start_at=start, end_at=end)
        model = apply.out(0)
    pos = g.node("CLIPTextEncode", "pos", text="a red fox in snow", clip=ck.out(1))
    neg = g.node("CLIPTextEncode", "neg", text="blue sky", clip=ck.out(1))
    lat = g.node("EmptyLatentImage", "lat", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", "ks", model=model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name=sampler,
                scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "dec", samples=ks, vae=ck.out(2))
    g.node("PreviewAny", "show", source=dec)
    return g


def image_of(engine, g) -> torch.Tensor:
    return run_ok(engine, g).value("dec")


def diffusers_reference(tiny_sd, ip_sd: dict, embeds: torch.Tensor, weight: float, end_step: int | None = None,
                        negative: torch.Tensor | None = None):
    """diffusers' StableDiffusionPipeline with the same adapter weights loaded the way load_ip_adapter does."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    unet = copy.deepcopy(tiny_sd.unet)  # the session's module stays without an adapter
    state = {"image_proj": {k[len("image_proj."):]: v for k, v in ip_sd.items() if k.startswith("image_proj.")},
             "ip_adapter": {k[len("ip_adapter."):]: v for k, v in ip_sd.items() if k.startswith("ip_adapter.")}}
    unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    pipe = StableDiffusionPipeline(vae=tiny_sd.vae, text_encoder=tiny_sd.text_encoder, tokenizer=tiny_sd.tokenizer,
                                   unet=unet, scheduler=EulerDiscreteScheduler.from_config(tiny_sd.scheduler.config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.set_ip_adapter_scale(weight)
    noise, generator = engine_noise((1, 4, 8, 8), SEED)
    negative = torch.zeros_like(embeds) if negative is None else negative
    image_embeds = torch.cat([negative, embeds])[:, None]  # [uncond, cond] × 1 image

    def stop_after(p, i, t, kwargs):
        if end_step is not None and i + 1 == end_step:
            p.set_ip_adapter_scale(0.0)
        return kwargs

    out = pipe("a red fox in snow", negative_prompt="blue sky", num_inference_steps=STEPS, guidance_scale=CFG,
               latents=noise, generator=generator, height=64, width=64, output_type="pt",
               ip_adapter_image_embeds=[image_embeds], callback_on_step_end=stop_after)
    return out.images.permute(0, 2, 3, 1)


def test_ip_adapter_matches_diffusers_pipeline(vl_engine, tiny_sd, ip_files, ref_image):
    result = run_ok(vl_engine, graph(weight=0.8))
    image = result.value("dec")
    embeds = result.value("enc").image_embeds
    ref = diffusers_reference(tiny_sd, ip_files, embeds, 0.8)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    plain = image_of(vl_engine, graph())
    assert (image - plain).abs().max() > 1e-2  # the adapter does steer the result


def test_ip_adapter_plus_matches_diffusers_pipeline(vl_engine, models_root, tiny_sd, ip_files, ref_image):
    """Plus: penultimate CLIP hidden states through the resampler; the negative is the CLIP vision model's
    output for all-zero pixel values (diffusers' encode_image), so ``clip_vision`` must be connected."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    failure = failure_of(vl_engine, graph(weight=1.0, adapter=PLUS))
    assert failure.node_id == "apply" and "clip_vision" in failure.exception_message
    g = graph(weight=0.9, adapter=PLUS)
    g.lookup("apply").set(clip_vision=g.lookup("cv"))
    result = run_ok(vl_engine, g)
    cfg = CLIPVisionConfig(hidden_size=64, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1,
                           image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu")
    encoder = CLIPVisionModelWithProjection(cfg).eval()
    encoder.load_state_dict(load_file(str(models_root / "models" / "clip_vision" / CLIP_VISION)), strict=False)
    with torch.no_grad():
        negative = encoder(pixel_values=torch.zeros(1, 3, 32, 32), output_hidden_states=True).hidden_states[-2]
    cond = result.value("enc").penultimate_hidden_states
    plus_sd = load_file(str(models_root / "models" / "ipadapter" / PLUS))
    ref = diffusers_reference(tiny_sd, plus_sd, cond, 0.9, negative=negative)
    image = result.value("dec")
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - image_of(vl_engine, graph())).abs().max() > 1e-2


def test_end_at_matches_diffusers_turning_the_scale_off(vl_engine, tiny_sd, ip_files, ref_image):
    """end_at=0.5 applies the adapter on the steps whose timestep lies in the first half of the schedule."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(tiny_sd.scheduler.config)
    sched.set_timesteps(STEPS)
    active = sum(1 for t in sched.timesteps if float(t) >= 0.5 * 999)
    assert 0 < active < STEPS
    result = run_ok(vl_engine, graph(weight=1.0, end=0.5))
    ref = diffusers_reference(tiny_sd, ip_files, result.value("enc").image_embeds, 1.0, end_step=active)
    assert torch.allclose(result.value("dec"), ref, atol=1e-4), (result.value("dec") - ref).abs().max()
    full = image_of(vl_engine, graph(weight=1.0))
    assert (full - result.value("dec")).abs().max() > 1e-3


def test_weight_zero_and_empty_ranges_give_the_plain_image_exactly(vl_engine, ip_files, ref_image):
    plain = image_of(vl_engine, graph())
    assert torch.equal(image_of(vl_engine, graph(weight=0.0)), plain)
    assert torch.equal(image_of(vl_engine, graph(weight=1.0, start=0.5, end=0.5)), plain)
    # adapter installed for the run, but no step's timestep falls in [0.001, 0.002] of the schedule
    assert torch.equal(image_of(vl_engine, graph(weight=1.0, start=0.001, end=0.002)), plain)


def test_weight_and_range_change_the_image(vl_engine, ip_files, ref_image):
    plain = image_of(vl_engine, graph())
    images = {key: image_of(vl_engine, graph(weight=w, start=s, end=e))
              for key, (w, s, e) in {"w1": (1.0, 0, 1), "w05": (0.5, 0, 1), "neg": (-1.0, 0, 1),
                                     "late": (1.0, 0.5, 1.0)}.items()}
    images["plain"] = plain
    names = sorted(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (images[a] - images[b]).abs().max() > 1e-3, (a, b)
    # the same run again is the same image (deterministic, and cached by its inputs)
    assert torch.equal(image_of(fresh_engine(vl_engine), graph(weight=0.5)), images["w05"])


def test_image_and_clip_vision_inputs_equal_clip_vision_output(vl_engine, ip_files, ref_image):
    a = image_of(vl_engine, graph(weight=1.0))
    b = image_of(vl_engine, graph(weight=1.0, encode_in_apply=True))
    assert torch.equal(a, b)


def loaded_unet(engine):
    for entry in engine.services["models"]._models.values():
        if entry.key[-2:] == ("unet", str(torch.float32)) and CKPT in str(entry.key[0]):
            return entry.get()
    raise AssertionError("the tiny checkpoint's UNet is not loaded")


def assert_unpatched(unet, processor_types):
    assert {k: type(v) for k, v in unet.attn_processors.items()} == processor_types
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert not any("to_k_ip" in n for n, _ in unet.named_parameters())


def test_plain_run_after_ip_adapter_run_is_unchanged(vl_engine, ip_files, ref_image):
    plain = image_of(vl_engine, graph())
    unet = loaded_unet(vl_engine)
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    image_of(vl_engine, graph(weight=1.0))
    plus = graph(weight=1.0, adapter=PLUS)
    plus.lookup("apply").set(clip_vision=plus.lookup("cv"))
    image_of(vl_engine, plus)  # a projection with attention layers of its own
    assert_unpatched(unet, before)
    again = image_of(fresh_engine(vl_engine), graph())  # re-sampled, not served from the cache
    assert torch.equal(again, plain)


def test_interrupted_ip_adapter_run_restores_the_unet(vl_engine, ip_files, ref_image):
    import threading

    from nodegraph.events import NodeProgress

    plain = image_of(vl_engine, graph())
    unet = loaded_unet(vl_engine)
    before = {k: type(v) for k, v in unet.attn_processors.items()}

    def listener(event):
        if isinstance(event, NodeProgress) and event.node_id == "ks" and event.value == 2:
            threading.Thread(target=vl_engine.interrupt).start()
            threading.Event().wait(0.2)

    g = graph(weight=1.0)
    g.lookup("ks").set(steps=30)
    assert vl_engine.run(g, listeners=[listener]).status == "interrupted"
    assert_unpatched(unet, before)
    assert torch.equal(image_of(fresh_engine(vl_engine), graph()), plain)


def test_two_adapters_stack(vl_engine, ip_files, ref_image):
    one = image_of(vl_engine, graph(weight=1.0))
    g = graph(weight=1.0)
    second = g.node("ImagePromptApply", "apply2", model=g.lookup("apply"), ipadapter=g.lookup("ipl"),
                    clip_vision_output=g.lookup("enc"), weight=0.5)
    g.lookup("ks").set(model=second)
    two = run_ok(vl_engine, g).value("dec")
    assert (one - two).abs().max() > 1e-3


@pytest.mark.parametrize("adapter,words", [("wrong_width.safetensors", ["48", "32", "cross-attention"]),
                                           ("wrong_embed.safetensors", ["clip_vision_output", "16", "32"]),
                                           ("not_an_adapter.safetensors", ["image_proj", "ip_adapter"])])
def test_mismatched_adapter_is_a_clear_node_error(vl_engine, ip_files, ref_image, adapter, words):
    failure = failure_of(vl_engine, graph(weight=1.0, adapter=adapter))
    node = "ipl" if adapter.startswith("not_") else "apply"
    assert failure.node_id == node, failure
    for word in words:
        assert word in failure.exception_message, failure.exception_message


def test_ip_adapter_choices_are_safetensors_files(vl_engine, ip_files):
    spec = vl_engine.registry["IPAdapterLoader"].INPUTS["ipadapter_file"]
    choices = spec.current_choices(vl_engine.paths)
    assert ADAPTER in choices and all(c.endswith(".safetensors") for c in choices)


def test_image_prompt_workflow(vl_engine, tiny_sd, ip_files, ref_image):
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 80, 20)).save(vl_engine.paths.input_dir / "example.png")
    names = {"v1-5-pruned-emaonly.safetensors": CKPT, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": CLIP_VISION,
             "ip-adapter_sd15.safetensors": ADAPTER}
    api = shrink(json.loads((WORKFLOWS / "image_prompt.json").read_text()), names)
    classes = {n["class_type"] for n in api.values()}
    assert {"IPAdapterLoader", "ImagePromptApply", "CLIPVisionEncode", "SaveImage"} <= classes
    r = run_ok(vl_engine, api)
    saved = [v for v in r.outputs.values() if "images" in v]
    assert saved and saved[0]["images"][0]["filename"].startswith("image_prompt")


def test_sdxl_image_prompt_adds_to_its_added_cond(vl_engine, models_root, ip_files, ref_image):
    """SDXL's UNet gets text_embeds / time_ids and image_embeds together."""
    sdxl = build_sdxl(models_root)
    save_file(make_ip_adapter(sdxl.unet, embed_dim=32, seed=5),
              str(models_root / "models" / "ipadapter" / "tiny_ip_adapter_sdxl.safetensors"))

    def sdxl_graph(weight):
        g = graph(weight=weight, adapter="tiny_ip_adapter_sdxl.safetensors")
        g.lookup("ckpt").set(ckpt_name="tiny_sdxl.safetensors")
        return g

    plain = image_of(vl_engine, graph().lookup("ckpt").set(ckpt_name="tiny_sdxl.safetensors").graph)
    assert torch.equal(image_of(vl_engine, sdxl_graph(0.0)), plain)
    assert (image_of(vl_engine, sdxl_graph(1.0)) - plain).abs().max() > 1e-3
    # the SD 1.x adapter does not fit the SDXL UNet
    failure = failure_of(vl_engine, graph(weight=1.0).lookup("ckpt").set(ckpt_name="tiny_sdxl.safetensors").graph)
    assert failure.node_id == "apply" and "cross-attention" in failure.exception_message
