"""Each diffusion feature changes the result (tests that fail without the feature)."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import save_file

from nodegraph.builder import Graph
from nodegraph.events import NodeProgress
from nodegraph_nodes.diffusion.prompt_weights import parse_prompt_weights
from nodegraph_nodes.diffusion.text_encode import tokenize

from tests.diffusion.diffusion_helpers import txt2img_graph


def encode(engine, text, ckpt="tiny_sd15.safetensors", clip_layer=None):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name=ckpt)
    clip = ck.out(1)
    if clip_layer is not None:
        clip = g.node("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=clip_layer).out(0)
    enc = g.node("CLIPTextEncode", "enc", text=text, clip=clip)
    g.node("PreviewAny", source=enc)
    return engine.run(g).raise_for_status().value("enc")


def test_prompt_weight_parser():
    assert parse_prompt_weights("a (red:1.5) fox") == [("a ", 1.0), ("red", 1.5), (" fox", 1.0)]
    assert parse_prompt_weights("(a)")[0][1] == pytest.approx(1.1)
    assert parse_prompt_weights("((a))")[0][1] == pytest.approx(1.21)
    assert parse_prompt_weights("[a]")[0][1] == pytest.approx(1 / 1.1)
    assert parse_prompt_weights(r"\(a\) b") == [("(a) b", 1.0)]
    assert parse_prompt_weights("(a:0.5) (b:bad)")[0] == ("a", 0.5)


def test_emphasis_changes_only_weighted_tokens(sd_engine, tiny_sd):
    plain = encode(sd_engine, "a red fox")[0][0]
    weighted = encode(sd_engine, "a (red:1.5) fox")[0][0]
    assert plain.shape == weighted.shape == (1, 77, 32)
    tok = tiny_sd.tokenizer
    red = len(tok("a", add_special_tokens=False)["input_ids"]) + 1  # BOS + "a"
    diff = (plain - weighted).abs().amax(dim=-1)[0]
    assert diff[red] > 1e-3  # the emphasised token moved
    assert diff[:red].max() < 1e-6  # causal attention: tokens before it did not
    bracket = encode(sd_engine, "a [red] fox")[0][0]
    assert (bracket - plain).abs()[0, red].max() > 1e-4


def test_long_prompt_is_chunked_in_75_token_windows(sd_engine, tiny_sd):
    text = ", ".join(["a red fox in snow"] * 20)
    cond = encode(sd_engine, text)[0][0]
    n = len(tiny_sd.tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = -(-n // 75)
    assert windows >= 2 and cond.shape == (1, 77 * windows, 32)
    short = encode(sd_engine, "a red fox in snow")[0][0]
    assert short.shape == (1, 77, 32)
    rows = tokenize(text, tiny_sd.tokenizer, bos=1000, eos=1001, pad=1001, embed_lookup=lambda n: None)
    assert all(len(r) == 77 and r[0][0] == 1000 for r in rows)
    # the second window really encodes the rest of the prompt (not padding)
    assert (cond[0, 77:154] - short[0]).abs().max() > 1e-3


def test_textual_inversion_embedding(sd_engine, model_root):
    folder = model_root / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(3))}, str(folder / "tiny_style.safetensors"))
    with_emb = encode(sd_engine, "a fox, embedding:tiny_style")[0][0]
    without = encode(sd_engine, "a fox, ")[0][0]
    assert with_emb.shape == (1, 77, 32)
    assert (with_emb - without).abs().max() > 1e-3


def test_clip_set_last_layer(sd_engine):
    last = encode(sd_engine, "a red fox")[0][0]
    skip = encode(sd_engine, "a red fox", clip_layer=-2)[0][0]
    assert (last - skip).abs().max() > 1e-3


def _write_lora(path, unet, text_encoder, rank=2):
    g = torch.Generator().manual_seed(5)
    sd = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v", "attn1.to_q")):
            key = "lora_unet_" + name.replace(".", "_")
            w = module.weight
            sd[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g) * 0.5
            sd[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g) * 0.5
            sd[key + ".alpha"] = torch.tensor(float(rank))
    for name, module in text_encoder.named_modules():
        if name.endswith("self_attn.q_proj"):
            key = "lora_te_text_model_" + name.replace(".", "_")
            w = module.weight
            sd[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1], generator=g)
            sd[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


def _lora_graph(strength_model, strength_clip, loras=("tiny_lora.safetensors",)):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    model, clip = ck.out(0), ck.out(1)
    for name in loras:
        lora = g.node("LoraLoader", model=model, clip=clip, lora_name=name, strength_model=strength_model,
                      strength_clip=strength_clip)
        model, clip = lora.out(0), lora.out(1)
    pos = g.node("CLIPTextEncode", "pos", text="a red fox", clip=clip)
    neg = g.node("CLIPTextEncode", text="", clip=clip)
    lat = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", "ks", model=model, seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=ks)
    return g


def test_lora_strength_zero_vs_one(sd_engine, tiny_sd, model_root):
    _write_lora(model_root / "models" / "loras" / "tiny_lora.safetensors", tiny_sd.unet, tiny_sd.text_encoder)
    base = sd_engine.run(txt2img_graph(positive="a red fox", seed=1, steps=3, cfg=5.0)).raise_for_status()
    off = sd_engine.run(_lora_graph(0.0, 0.0)).raise_for_status()
    on = sd_engine.run(_lora_graph(1.0, 1.0)).raise_for_status()
    model_only = sd_engine.run(_lora_graph(1.0, 0.0)).raise_for_status()
    assert torch.equal(off.value("ks")["samples"], base.value("3")["samples"])
    assert (on.value("ks")["samples"] - off.value("ks")["samples"]).abs().max() > 1e-3
    assert (on.value("pos")[0][0] - off.value("pos")[0][0]).abs().max() > 1e-3  # strength_clip reached CLIP
    assert torch.equal(model_only.value("pos")[0][0], off.value("pos")[0][0])
    # patches are undone: the plain model still gives the plain result afterwards
    sd_engine.cache.clear()
    again = sd_engine.run(txt2img_graph(positive="a red fox", seed=1, steps=3, cfg=5.0)).raise_for_status()
    assert "3" in again.executed
    assert torch.equal(again.value("3")["samples"], base.value("3")["samples"])


def _cond_graph(extra):
    """txt2img whose positive conditioning passes through ``extra(g, pos, clip)``."""
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    pos = g.node("CLIPTextEncode", text="a red fox", clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=ck.out(1))
    pos = extra(g, pos, ck.out(1))
    lat = g.node("EmptyLatentImage", width=128, height=64, batch_size=1)
    ks = g.node("KSampler", "ks", model=ck.out(0), seed=3, steps=4, cfg=6.0, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=ks)
    return g


def test_area_conditioning_changes_only_where_it_applies(sd_engine):
    def combine(area_x):
        def extra(g, pos, clip):
            other = g.node("CLIPTextEncode", text="a blue house", clip=clip)
            area = g.node("ConditioningSetArea", conditioning=other, width=64, height=64, x=area_x, y=0, strength=1.0)
            return g.node("ConditioningCombine", conditioning_1=pos, conditioning_2=area)
        return extra

    base = sd_engine.run(_cond_graph(lambda g, pos, clip: pos)).raise_for_status().value("ks")["samples"]
    right = sd_engine.run(_cond_graph(combine(64))).raise_for_status().value("ks")["samples"]
    left = sd_engine.run(_cond_graph(combine(0))).raise_for_status().value("ks")["samples"]
    assert (right - base).abs().max() > 1e-3
    assert not torch.allclose(right, left)
    # the right-hand area cond leaves the far left columns close to the plain result (attention is global
    # inside the UNet, so allow a small change) and changes the right half much more
    d = (right - base).abs()
    assert d[..., 8:].mean() > d[..., :4].mean()


def test_timestep_range_limits_a_condition(sd_engine):
    def ranged(start, end):
        def extra(g, pos, clip):
            other = g.node("CLIPTextEncode", text="a blue house", clip=clip)
            r = g.node("ConditioningSetTimestepRange", conditioning=other, start=start, end=end)
            return g.node("ConditioningCombine", conditioning_1=pos, conditioning_2=r)
        return extra

    base = sd_engine.run(_cond_graph(lambda g, pos, clip: pos)).raise_for_status().value("ks")["samples"]
    full = sd_engine.run(_cond_graph(ranged(0.0, 1.0))).raise_for_status().value("ks")["samples"]
    never = sd_engine.run(_cond_graph(ranged(1.0, 1.0))).raise_for_status().value("ks")["samples"]
    early = sd_engine.run(_cond_graph(ranged(0.0, 0.5))).raise_for_status().value("ks")["samples"]
    assert (full - base).abs().max() > 1e-3
    # outside its range the condition is as if absent (tiny float noise: the general path is not batched)
    assert (never - base).abs().max() < 0.01 * (full - base).abs().max()
    assert not torch.allclose(early, full) and not torch.allclose(early, base)


def test_conditioning_nodes_shapes(sd_engine):
    def run(extra):
        g = Graph()
        ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
        a = g.node("CLIPTextEncode", text="a red fox", clip=ck.out(1))
        b = g.node("CLIPTextEncode", text=", ".join(["a blue house"] * 20), clip=ck.out(1))
        out = extra(g, a, b)
        g.node("PreviewAny", source=out)
        return sd_engine.run(g).raise_for_status().value(out.id)

    concat = run(lambda g, a, b: g.node("ConditioningConcat", conditioning_to=a, conditioning_from=b))
    assert concat[0][0].shape[1] > 77 * 2
    avg = run(lambda g, a, b: g.node("ConditioningAverage", conditioning_to=a, conditioning_from=b,
                                     conditioning_to_strength=0.5))
    assert avg[0][0].shape == (1, 77, 32)
    zero = run(lambda g, a, b: g.node("ConditioningZeroOut", conditioning=a))
    assert not zero[0][0].any()
    comb = run(lambda g, a, b: g.node("ConditioningCombine", conditioning_1=a, conditioning_2=b))
    assert len(comb) == 2


def test_progress_counts_steps_and_interrupt_lands_within_a_step(sd_engine):
    events = []
    sd_engine.run(txt2img_graph(steps=6), listeners=[events.append]).raise_for_status()
    progress = [e for e in events if isinstance(e, NodeProgress) and e.node_id == "3"]
    assert [e.value for e in progress] == list(range(1, 7)) and progress[-1].max == 6

    seen = []

    def listener(event):
        if isinstance(event, NodeProgress) and event.node_id == "3":
            seen.append(event.value)
            if event.value == 3:
                threading.Thread(target=sd_engine.interrupt).start()
                threading.Event().wait(0.2)  # the interrupt is set before step 4 starts

    result = sd_engine.run(txt2img_graph(steps=50, seed=9), listeners=[listener])
    assert result.status == "interrupted"
    assert max(seen) <= 4
    assert sd_engine.run(txt2img_graph(steps=2)).ok  # the engine keeps working


def test_previews_are_sent(sd_engine):
    from nodegraph.events import NodePreview

    events = []
    sd_engine.run(txt2img_graph(steps=4, seed=11), listeners=[events.append]).raise_for_status()
    previews = [e for e in events if isinstance(e, NodePreview)]
    assert previews and previews[0].image.shape == (8, 8, 3)


def test_second_run_with_new_seed_reuses_loader_and_text(sd_engine):
    first = sd_engine.run(txt2img_graph(seed=1, steps=2)).raise_for_status()
    second = sd_engine.run(txt2img_graph(seed=2, steps=2)).raise_for_status()
    assert {"4", "6", "7", "5"} <= set(second.cached)
    assert set(second.executed) == {"3", "8", "9"}
    manager = sd_engine.services["models"]
    assert all(m["loads"] == 1 for m in manager.loaded())


def test_img_to_img_inpaint_and_latent_nodes(sd_engine):
    import numpy as np
    from PIL import Image

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., :3] = 120
    rgba[..., 3] = 255
    rgba[16:48, 16:48, 3] = 0  # transparent = mask 1
    Image.fromarray(rgba).save(sd_engine.paths.input_dir / "inpaint.png")
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    img = g.node("LoadImage", image="inpaint.png")
    enc = g.node("VAEEncodeForInpaint", pixels=img.out(0), vae=ck.out(2), mask=img.out(1), grow_mask_by=6)
    pos = g.node("CLIPTextEncode", text="a cat", clip=ck.out(1))
    neg = g.node("CLIPTextEncode", text="", clip=ck.out(1))
    ks = g.node("KSampler", "ks", model=ck.out(0), seed=1, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal",
                positive=pos, negative=neg, latent_image=enc, denoise=1.0)
    up = g.node("LatentUpscaleBy", "up", samples=ks, upscale_method="bilinear", scale_by=1.5)
    rep = g.node("RepeatLatentBatch", "rep", samples=up, amount=3)
    one = g.node("LatentFromBatch", "one", samples=rep, batch_index=1, length=1)
    tiled = g.node("VAEDecodeTiled", "tiled", samples=ks, vae=ck.out(2), tile_size=64, overlap=32)
    dec = g.node("VAEDecode", "dec", samples=ks, vae=ck.out(2))
    g.node("PreviewAny", source=one)
    g.node("PreviewAny", source=tiled)
    g.node("PreviewAny", source=dec)
    r = sd_engine.run(g).raise_for_status()
    out, src = r.value("ks")["samples"], r.value(enc.id)["samples"]
    mask = r.value(enc.id)["noise_mask"]
    keep = mask[0, 0] < 0.5
    keep_latent = torch.nn.functional.interpolate(mask, size=out.shape[-2:], mode="bilinear")[0, 0] == 0
    assert torch.allclose(out[..., keep_latent], src[..., keep_latent], atol=1e-5)  # outside the mask: unchanged
    assert keep.any()
    assert r.value("up")["samples"].shape[-1] == 12
    assert r.value("rep")["samples"].shape[0] == 3
    assert r.value("one")["batch_index"] == [1]
    assert r.value("tiled").shape == r.value("dec").shape == (1, 64, 64, 3)
    assert (r.value("tiled") - r.value("dec")).abs().mean() < 0.05


def test_sdxl_checkpoint_loads_and_samples(sd_engine, tiny_sdxl):
    g = txt2img_graph("tiny_sdxl.safetensors", "a red fox", "blue sky", seed=5, steps=3, cfg=5.0)
    r = sd_engine.run(g).raise_for_status()
    cond = r.value("6")
    assert cond[0][0].shape == (1, 77, 64)  # clip_l (32) + clip_g (32)
    assert cond[0][1]["pooled_output"].shape == (1, 32)
    image = r.value("8")
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all() and image.std() > 0.01
    # the dual text encoding equals diffusers' SDXL recipe: penultimate hidden states of both encoders
    ids = tiny_sdxl.tokenizer("a red fox", padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = tiny_sdxl.tokenizer_2("a red fox", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        h1 = tiny_sdxl.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        out2 = tiny_sdxl.text_encoder_2(ids2, output_hidden_states=True)
    assert torch.allclose(cond[0][0], torch.cat([h1, out2.hidden_states[-2]], dim=-1), atol=1e-5)
    assert torch.allclose(cond[0][1]["pooled_output"], out2.text_embeds, atol=1e-5)
    sd_engine.cache.clear()
    again = sd_engine.run(txt2img_graph("tiny_sdxl.safetensors", "a red fox", "blue sky", seed=5, steps=3, cfg=5.0))
    assert torch.equal(again.value("8"), image)
