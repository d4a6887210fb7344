"""LoRAs on Qwen-Image and Z-Image through LoraLoaderModelOnly equal the same transformer with the LoRA
merged into its weights (in the file's own layout) to 1e-4: Qwen-Image in ComfyUI / lightx2v names
(``diffusion_model.transformer_blocks.N.….lora_down/up`` + alpha), Z-Image in ComfyUI's NextDiT names
with a fused ``attention.qkv`` delta (split by rows onto to_q / to_k / to_v)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401

STRENGTH = 0.8


def _lora(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (out_dim, in_dim) in shapes.items():
        sd[key + ".lora_down.weight"] = torch.randn(2, in_dim, generator=g) * 0.3
        sd[key + ".lora_up.weight"] = torch.randn(out_dim, 2, generator=g) * 0.3
        sd[key + ".alpha"] = torch.tensor(1.0)
    return sd


def _merge(weights: dict, lora: dict, prefix: str) -> dict:
    out = dict(weights)
    for key in [k[:-len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")]:
        target = key[len(prefix):] + ".weight"
        target = next(k for k in out if k.endswith(target))
        delta = lora[key + ".lora_up.weight"] @ lora[key + ".lora_down.weight"]
        out[target] = (out[target].float() + STRENGTH * 0.5 * delta).contiguous()  # alpha 1 / rank 2
    return out


def graph(unet: str, clip: str, clip_type: str, vae: str, lora: str | None, shift: float) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    if lora:
        model = g.node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=STRENGTH).out(0)
    model = g.node("ModelSamplingAuraFlow", model=model, shift=shift).out(0)
    c = g.node("CLIPLoader", clip_name=clip, type=clip_type).out(0)
    pos = g.node("CLIPTextEncode", text="a red fox in snow", clip=c)
    neg = g.node("CLIPTextEncode", text="", clip=c)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "out", samples=ks, vae=g.node("VAELoader", vae_name=vae).out(0))
    g.node("PreviewAny", source=dec)
    return g


def _check(engine, root, family: dict) -> None:
    models = root / "models"
    weights = load_file(str(models / "diffusion_models" / family["unet"]))
    lora = _lora(family["shapes"], family["seed"])
    (models / "loras").mkdir(exist_ok=True)
    save_file(lora, str(models / "loras" / family["lora"]))
    save_file(_merge(weights, lora, "diffusion_model."), str(models / "diffusion_models" / family["merged"]))
    args = (family["clip"], family["clip_type"], family["vae"])
    with_lora = engine.run(graph(family["unet"], *args, family["lora"], family["shift"])).raise_for_status().value("out")
    merged = engine.run(graph(family["merged"], *args, None, family["shift"])).raise_for_status().value("out")
    plain = engine.run(graph(family["unet"], *args, None, family["shift"])).raise_for_status().value("out")
    assert torch.allclose(with_lora, merged, atol=1e-4), (with_lora - merged).abs().max()
    assert not torch.allclose(with_lora, plain, atol=1e-3)


def test_qwen_image_lora_equals_merged_weights(qwen_engine, qwen_root, tiny_qwen_image):
    _check(qwen_engine, qwen_root, {
        "unet": "tiny_qwen_image.safetensors", "merged": "tiny_qwen_image_lora_merged.safetensors",
        "lora": "tiny_qwen_lightning.safetensors", "clip": "tiny_qwen_2.5_vl.safetensors", "clip_type": "qwen_image",
        "vae": "tiny_qwen_image_vae.safetensors", "shift": 3.1, "seed": 1,
        "shapes": {"diffusion_model.transformer_blocks.0.attn.to_q": (64, 64),
                   "diffusion_model.transformer_blocks.1.img_mlp.net.0.proj": (256, 64),
                   "diffusion_model.transformer_blocks.0.attn.add_v_proj": (64, 64)}})


def test_z_image_lora_equals_merged_weights(qwen_engine, qwen_root, tiny_z_image):
    _check(qwen_engine, qwen_root, {
        "unet": "tiny_z_image.safetensors", "merged": "tiny_z_image_lora_merged.safetensors",
        "lora": "tiny_z_style.safetensors", "clip": "tiny_qwen_3.safetensors", "clip_type": "lumina2",
        "vae": "tiny_z_image_ae.safetensors", "shift": 3.0, "seed": 2,
        "shapes": {"diffusion_model.layers.0.attention.qkv": (192, 64),
                   "diffusion_model.layers.1.attention.out": (64, 64),
                   "diffusion_model.layers.1.feed_forward.w1": (170, 64)}})
