"""Lumina Image 2.0 text-to-image through ComfyUI's nodes (UNETLoader with ComfyUI's repackaged NextDiT
file, CLIPLoader type lumina2 with a Gemma 2 file, VAELoader with Flux's VAE, CLIPTextEncodeLumina2; and
CheckpointLoaderSimple with the Lumina2Pipeline folder) equals diffusers' Lumina2Pipeline on the same tiny
weights, seed, steps, CFG and shift (the pipeline's own tokenization and Gemma encoding, padded to 256
with its mask; ``cfg_normalization`` off: ComfyUI's plain CFG)."""

from __future__ import annotations

import pytest
import torch

from nodegraph.builder import Graph
from nodegraph.registry import default_registry

from nodegraph_nodes.dit import lumina2, z_image
from tests.dit.template_runs import last_saved_image, sample_and_preview, small_template
from tests.dit.tiny_lumina2 import build_lumina2, lumina2_to_comfy
from tests.helpers.engines import make_engine
from tests.helpers.noise import engine_noise

PROMPT, NEGATIVE = "a photo of a red fox in snow", "blue sky"
SEED, STEPS, CFG = 5, 4, 4.0


@pytest.fixture(scope="module")
def lumina_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lumina2_models")
    return root, build_lumina2(root)


@pytest.fixture
def engine(lumina_root, tmp_path):
    eng = make_engine(lumina_root[0], tmp_path, default_registry(packs=False))
    yield eng
    eng.close()


def lumina_graph(how: str, system: str = "superior", shift: float | None = None) -> Graph:
    g = Graph()
    if how in ("folder", "checkpoint"):
        name = "tiny_lumina_2" if how == "folder" else "tiny_lumina_2_all_in_one.safetensors"
        ck = g.node("CheckpointLoaderSimple", ckpt_name=name)
        model, clip, vae = ck.out(0), ck.out(1), ck.out(2)
    else:
        model = g.node("UNETLoader", unet_name="tiny_lumina_2.safetensors", weight_dtype="default").out(0)
        clip = g.node("CLIPLoader", clip_name="tiny_gemma_2_2b.safetensors", type="lumina2").out(0)
        vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
    if shift is not None:
        model = g.node("ModelSamplingAuraFlow", model=model, shift=shift).out(0)
    pos = g.node("CLIPTextEncodeLumina2", system_prompt=system, user_prompt=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    sample_and_preview(g, model, pos, neg, vae, SEED, STEPS, CFG)
    return g


def reference(tiny, system: str = "superior", shift: float = 6.0) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    pipe = Lumina2Pipeline(transformer=tiny.transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                           vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, system_prompt=lumina2.SYSTEM_PROMPTS[system],
                     num_inference_steps=STEPS, guidance_scale=CFG, cfg_normalization=False, cfg_trunc_ratio=1.0,
                     latents=noise, height=64, width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("how", ["files", "folder", "checkpoint"])
def test_lumina2_txt2img_matches_pipeline(engine, lumina_root, how):
    tiny = lumina_root[1]
    image = engine.run(lumina_graph(how)).raise_for_status().value("out")
    ref = reference(tiny)
    assert image.shape == ref.shape == (1, 64, 64, 3)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert image.std() > 0.01


def test_lumina2_system_prompt_and_shift_reach_the_model(engine, lumina_root):
    tiny = lumina_root[1]
    image = engine.run(lumina_graph("files", system="alignment", shift=3.0)).raise_for_status().value("out")
    ref = reference(tiny, system="alignment", shift=3.0)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert not torch.allclose(image, reference(tiny), atol=1e-3)


def test_lumina2_single_file_is_detected_and_converts_exactly(lumina_root):
    tiny = lumina_root[1]
    sd = {"model.diffusion_model." + k: v for k, v in lumina2_to_comfy(tiny.transformer).items()}
    assert lumina2.detect_prefix(sd) == "model.diffusion_model."
    assert z_image.detect_prefix(sd) is None
    back = lumina2.to_diffusers({k[len("model.diffusion_model."):]: v for k, v in sd.items()})
    own = tiny.transformer.state_dict()
    assert set(back) == set(own)
    assert all(torch.equal(back[k], own[k]) for k in own)
    cfg = lumina2.transformer_config(back)
    assert cfg["axes_dim_rope"] == list(tiny.transformer.config.axes_dim_rope)
    assert lumina2.detect_prefix({"cap_pad_token": 0, **{k[len("model.diffusion_model."):]: v
                                                         for k, v in sd.items()}}) is None  # Z-Image


def test_netayume_lumina_template_runs(engine, lumina_root):
    """ComfyUI's image_netayume_lumina_t2i template (copied, MIT: CheckpointLoaderSimple with the all-in-one
    file, PrimitiveStringMultiline + StringConcatenate prompts with their own system prefixes, CLIPTextEncode,
    ModelSamplingAuraFlow 4, KSampler res_multistep, SaveImage; inside a subgraph) runs end to end on the
    tiny all-in-one file under its name; only the empty latent is made 64x64 and the 30 steps 4."""
    from tests.dit.tiny_qwen import copy_as

    copy_as(lumina_root[0], {"checkpoints/tiny_lumina_2_all_in_one.safetensors":
                             "checkpoints/NetaYumev35_pretrained_all_in_one.safetensors"})
    api = small_template("image_netayume_lumina_t2i", default_registry(packs=False), "KSampler")
    result = engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"CheckpointLoaderSimple", "CLIPTextEncode", "ModelSamplingAuraFlow", "KSampler", "SaveImage"} <= kinds
    image = last_saved_image(engine.paths.output_dir)
    assert image.shape == (64, 64, 3) and image.std() > 0.01


@pytest.mark.parametrize("names", ["comfy", "kohya"])
def test_lumina2_lora_equals_merged_weights(engine, lumina_root, names):
    """LoraLoaderModelOnly with a LoRA in the NextDiT names (fused qkv split by rows, feed_forward.w1,
    a refiner's out) equals the single file with the LoRA merged into those weights."""
    from safetensors.torch import load_file, save_file

    models = lumina_root[0] / "models"
    base = load_file(str(models / "diffusion_models" / "tiny_lumina_2.safetensors"))
    g = torch.Generator().manual_seed(4)
    lora, merged = {}, dict(base)
    for layer in ("layers.0.attention.qkv", "layers.1.feed_forward.w1", "noise_refiner.0.attention.out"):
        w = base["model.diffusion_model." + layer + ".weight"]
        down = torch.randn(2, w.shape[1], generator=g) * 0.05
        up = torch.randn(w.shape[0], 2, generator=g) * 0.05
        key = ("diffusion_model." + layer) if names == "comfy" else "lora_unet_" + layer.replace(".", "_")
        lora.update({key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(1.0)})
        merged["model.diffusion_model." + layer + ".weight"] = w + 0.7 * (up @ down) * 0.5
    (models / "loras").mkdir(exist_ok=True)
    save_file(lora, str(models / "loras" / f"tiny_lumina_lora_{names}.safetensors"))
    save_file({k: v.contiguous() for k, v in merged.items()},
              str(models / "diffusion_models" / f"tiny_lumina_merged_{names}.safetensors"))

    def run(unet: str, with_lora: bool) -> torch.Tensor:
        g2 = Graph()
        model = g2.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
        if with_lora:
            model = g2.node("LoraLoaderModelOnly", model=model, lora_name=f"tiny_lumina_lora_{names}.safetensors",
                            strength_model=0.7).out(0)
        clip = g2.node("CLIPLoader", clip_name="tiny_gemma_2_2b.safetensors", type="lumina2").out(0)
        pos = g2.node("CLIPTextEncode", text=PROMPT, clip=clip)
        neg = g2.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
        vae = g2.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
        sample_and_preview(g2, model, pos, neg, vae, SEED, STEPS, CFG)
        return engine.run(g2).raise_for_status().value("out")

    with_lora = run("tiny_lumina_2.safetensors", True)
    merged_out = run(f"tiny_lumina_merged_{names}.safetensors", False)
    assert torch.allclose(with_lora, merged_out, atol=1e-4), (with_lora - merged_out).abs().max()
    assert not torch.allclose(with_lora, run("tiny_lumina_2.safetensors", False), atol=1e-3)


def _renorm_graph(cfg: float, renorm: tuple[float, float] | None) -> Graph:
    g = Graph()
    model = g.node("UNETLoader", unet_name="tiny_lumina_2.safetensors", weight_dtype="default").out(0)
    if renorm is not None:
        model = g.node("RenormCFG", model=model, cfg_trunc=renorm[0], renorm_cfg=renorm[1]).out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_gemma_2_2b.safetensors", type="lumina2").out(0)
    pos = g.node("CLIPTextEncodeLumina2", system_prompt="superior", user_prompt=PROMPT, clip=clip)
    neg = g.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    vae = g.node("VAELoader", vae_name="tiny_flux_ae.safetensors").out(0)
    sample_and_preview(g, model, pos, neg, vae, SEED, STEPS, cfg)
    return g


def test_renorm_cfg(engine, lumina_root):
    """RenormCFG: renorm 0 is plain CFG; cfg_trunc 0 guides nowhere (the positive alone, as cfg 1); the
    default cap changes a strongly guided result; the cap formula on tensors."""
    from nodegraph_nodes.dit.lumina2_nodes import _RenormCfg

    run = lambda cfg, renorm: engine.run(_renorm_graph(cfg, renorm)).raise_for_status().value("out")  # noqa: E731
    plain = run(CFG, None)
    assert torch.allclose(run(CFG, (100.0, 0.0)), plain, atol=1e-5)
    assert torch.allclose(run(CFG, (0.0, 1.0)), run(1.0, None), atol=1e-5)
    assert not torch.allclose(run(CFG, (100.0, 1.0)), plain, atol=1e-3)

    g = torch.Generator().manual_seed(0)
    cond, uncond, x = (torch.randn(2, 16, 4, 4, generator=g) for _ in range(3))
    out = x - _RenormCfg(100.0, 1.0, 16)({"cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": 4.0,
                                         "input": x, "timestep": torch.tensor([0.5, 0.5])})
    guided = uncond + 4.0 * (cond - uncond)
    for i in range(2):
        cap, norm = cond[i].norm(), guided[i].norm()
        want = guided[i] * (cap / norm) if norm >= cap else guided[i]
        assert torch.allclose(out[i], want, atol=1e-6)
