"""ModelPatchLoader + QwenImageDiffsynthControlnet / ZImageFunControlnet with a Z-Image Fun ControlNet (v1 union
layout: ``control_all_x_embedder.2-1``, ``control_noise_refiner.{0,1}``, six ``control_layers``).

The tiny patch is a diffusers ``ZImageControlNetModel`` with random weights saved under its own names (the
VideoX-Fun names the released file uses). The reference is diffusers' ZImagePipeline on an 11-layer tiny
Z-Image whose main layers get hooks written here after ComfyUI's math: the control latent (VAE mode, Flux
shift/scale) patchified channels last and embedded, refined by the two control noise-refiner blocks on the
image tokens, control layer 0 fed ``before_proj(c) + x`` (x = the main layers' input image tokens), hint ``k``
(``after_proj``) added times strength after main layer ``5k`` (``div = round(30 / 6)``) — layers 0, 5 and 10
here. A patch with zero ``after_proj`` leaves the output exactly unchanged. A Union 2.x patch (15 control layers,
control blocks in the noise refiner, 33 channels with the mask and inpaint latent) through ZImageFunControlnet with
image, inpaint image and mask matches its own written-out reference on a 6-layer tiny Z-Image with two noise-refiner
layers.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nodegraph.builder import Graph

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.dit.template_runs import last_saved_image, set_inputs, template_api
from tests.dit.test_model_patch_qwen import control_image, save_inputs, write_patch
from tests.dit.tiny_flow import _random_transformer
from tests.dit.tiny_qwen import QWEN3_WIDTH, copy_as, z_comfy_layout
from tests.helpers.noise import engine_noise
from tests.helpers.tiny_sd import _randomize

PROMPT, SEED, STEPS, SHIFT = "a photo of a cat", 5, 4, 3.0


def tiny_z(root, layers: int, refiner_layers: int, seed: int):
    """A tiny random Z-Image of ``layers`` layers and ``refiner_layers`` noise-refiner layers, saved in ComfyUI's
    layout as ``tiny_z_image_<layers>.safetensors``."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    net = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=64, n_layers=layers,
                                   n_refiner_layers=refiner_layers, n_heads=2, n_kv_heads=2, cap_feat_dim=QWEN3_WIDTH,
                                   axes_dims=[8, 12, 12])
    net = _random_transformer(net, seed)
    save_file(z_comfy_layout(net.state_dict()), str(root / "models" / "diffusion_models" / f"tiny_z_image_{layers}.safetensors"))
    return net


@pytest.fixture(scope="module")
def z11(qwen_root, tiny_z_image):
    """An 11-layer tiny Z-Image (so that hints 0, 1 and 2 land on layers 0, 5 and 10), saved in ComfyUI's layout."""
    return tiny_z(qwen_root, layers=11, refiner_layers=1, seed=43)


def control_net(zero: bool = False, seed: int = 9):
    from diffusers import ZImageControlNetModel

    torch.manual_seed(seed)
    net = ZImageControlNetModel(control_layers_places=[0, 5, 10, 15, 20, 25], control_in_dim=16, dim=64,
                                n_refiner_layers=2, n_heads=2, n_kv_heads=2).eval()
    _randomize(net, 0.2)
    if zero:
        with torch.no_grad():
            for layer in net.control_layers:
                layer.after_proj.weight.zero_()
                layer.after_proj.bias.zero_()
    return net


def graph(patch: str | None, node: str = "QwenImageDiffsynthControlnet", strength: float = 0.8,
          unet: str = "tiny_z_image_11.safetensors") -> Graph:
    g = Graph()
    model, clip, vae = loaders(g, unet)
    if patch is not None:
        mp = g.node("ModelPatchLoader", name=patch).out(0)
        img = g.node("LoadImage", image="control_128.png").out(0)
        model = g.node(node, model=model, model_patch=mp, vae=vae, image=img, strength=strength).out(0)
    sample(g, model, clip, vae)
    return g


def loaders(g: Graph, unet: str) -> tuple:
    """The tiny Z-Image ``unet`` (with ModelSamplingAuraFlow), its Qwen3 CLIP and VAE."""
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default").out(0)
    clip = g.node("CLIPLoader", clip_name="tiny_qwen_3.safetensors", type="lumina2").out(0)
    vae = g.node("VAELoader", vae_name="tiny_z_image_ae.safetensors").out(0)
    return g.node("ModelSamplingAuraFlow", model=model, shift=SHIFT).out(0), clip, vae


def sample(g: Graph, model, clip, vae) -> None:
    """PROMPT at cfg 1 (zeroed negative) on a 64×64 latent, decoded into PreviewAny ``out``."""
    pos = g.node("CLIPTextEncode", text=PROMPT, clip=clip)
    lat = g.node("EmptySD3LatentImage", width=64, height=64, batch_size=1)
    ks = g.node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=pos, negative=g.node("ConditioningZeroOut", conditioning=pos), latent_image=lat, denoise=1.0)
    g.node("PreviewAny", source=g.node("VAEDecode", "out", samples=ks, vae=vae))


@contextmanager
def reference_control(transformer, cnet, vae, strength: float):
    pixels = torch.nn.functional.avg_pool2d(control_image(128).permute(0, 3, 1, 2), 2)
    pixels = torch.round(pixels * 255) / 255 * 2 - 1
    with torch.no_grad():
        lat = vae.encode(pixels).latent_dist.mode()
    lat = (lat - vae.config.shift_factor) * vae.config.scaling_factor
    tokens = patch_tokens(lat)
    state = {}

    def before(module, args):
        unified, _, freqs, adaln = args[:4]
        c = cnet.control_all_x_embedder["2-1"](tokens)
        n = c.shape[1]
        x, f = unified[:, :n], freqs[:, :n]
        for blk in cnet.control_noise_refiner:
            c = blk(c, None, f, adaln)
        hints = []
        for k, layer in enumerate(cnet.control_layers):
            h0 = layer.before_proj(c) + x if k == 0 else c
            h1 = original_block(layer, h0, f, adaln)
            hints.append(layer.after_proj(h1))
            c = h1
        state["hints"] = hints

    def after(i, out):
        if i % 5:
            return out
        return add_hint(out, state["hints"][i // 5], strength)

    handles = [transformer.layers[0].register_forward_pre_hook(before)]
    handles += [layer.register_forward_hook(lambda m, a, o, i=i: after(i, o)) for i, layer in enumerate(transformer.layers)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


def patch_tokens(lat: torch.Tensor) -> torch.Tensor:
    """A latent ``[B, C, H, W]`` as Z-Image's 2×2 patch tokens ``[B, H·W/4, 4·C]``."""
    b, ch, h, w = lat.shape
    return lat.reshape(b, ch, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w // 4, 4 * ch)


def add_hint(out: torch.Tensor, hint: torch.Tensor, strength: float) -> torch.Tensor:
    """A layer's output with ``strength`` × a control ``hint`` added to its first (image) tokens."""
    n = hint.shape[1]
    return torch.cat([out[:, :n] + strength * hint, out[:, n:]], dim=1)


def original_block(layer, c, freqs, adaln):
    """A control layer's transformer part alone (adaLN-modulated attention and feed-forward, Z-Image's)."""
    scale_msa, gate_msa, scale_mlp, gate_mlp = layer.adaLN_modulation(adaln).unsqueeze(1).chunk(4, dim=2)
    attn = layer.attention(layer.attention_norm1(c) * (1 + scale_msa), attention_mask=None, freqs_cis=freqs)
    c = c + gate_msa.tanh() * layer.attention_norm2(attn)
    return c + gate_mlp.tanh() * layer.ffn_norm2(layer.feed_forward(layer.ffn_norm1(c) * (1 + scale_mlp)))


def reference(tiny, transformer) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=tiny.vae,
                          text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    noise, _ = engine_noise((1, 16, 8, 8), SEED)
    with torch.no_grad():
        image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=0.0, latents=noise, height=64, width=64,
                     output_type="pt").images
    return image.permute(0, 2, 3, 1)


@pytest.mark.parametrize("node", ["QwenImageDiffsynthControlnet", "ZImageFunControlnet"])
def test_fun_controlnet_matches_reference(qwen_engine, qwen_root, tiny_z_image, z11, node):
    cnet = control_net()
    write_patch(qwen_root, "tiny_z_fun_cnet.safetensors", cnet.state_dict())
    save_inputs(qwen_engine)
    plain = qwen_engine.run(graph(None)).raise_for_status().value("out")
    assert torch.allclose(plain, reference(tiny_z_image, z11), atol=1e-4)
    image = qwen_engine.run(graph("tiny_z_fun_cnet.safetensors", node)).raise_for_status().value("out")
    with torch.no_grad(), reference_control(z11, cnet, tiny_z_image.vae, 0.8):
        ref = reference(tiny_z_image, z11)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - plain).abs().max() > 1e-2


def test_zero_fun_controlnet_leaves_output_unchanged(qwen_engine, qwen_root, tiny_z_image, z11):
    write_patch(qwen_root, "tiny_z_fun_cnet_zero.safetensors", control_net(zero=True).state_dict())
    save_inputs(qwen_engine)
    plain = qwen_engine.run(graph(None)).raise_for_status().value("out")
    zero = qwen_engine.run(graph("tiny_z_fun_cnet_zero.safetensors")).raise_for_status().value("out")
    assert torch.equal(plain, zero)


def test_fun_controlnet_refusals(qwen_engine, qwen_root, tiny_qwen_image, tiny_z_image, z11, z6):
    write_patch(qwen_root, "tiny_z_fun_cnet.safetensors", control_net().state_dict())
    save_inputs(qwen_engine)
    save_2x_inputs(qwen_engine)
    on_qwen = qwen_engine.run(graph("tiny_z_fun_cnet.safetensors", unet="tiny_qwen_image.safetensors"))
    assert on_qwen.failure is not None and "patches Z-Image models" in on_qwen.failure.exception_message
    sd = control_net_2x().state_dict()
    sd["control_noise_refiner.0.after_proj.weight"] = torch.zeros(64, 64)
    sd["control_noise_refiner.0.after_proj.bias"] = torch.zeros(64)
    write_patch(qwen_root, "tiny_z_fun_union2_broken.safetensors", sd)
    bad = qwen_engine.run(graph("tiny_z_fun_union2_broken.safetensors"))
    assert bad.failure is not None and "all-zero" in bad.failure.exception_message
    v1 = qwen_engine.run(graph_2x("tiny_z_fun_cnet.safetensors"))
    assert v1.failure is not None and "needs a Z-Image Fun ControlNet 2.x" in v1.failure.exception_message


def test_z_image_fun_union_template_runs(qwen_engine, qwen_registry, qwen_root, tiny_z_image, z11):
    """ComfyUI's image_z_image_turbo_fun_union_controlnet (Canny → Fun ControlNet, inside a subgraph) on the tiny
    files (the 2-layer Z-Image as z_image_turbo_bf16), a 128×128 input image and 2 steps instead of 8."""
    copy_as(qwen_root, {"diffusion_models/tiny_z_image.safetensors": "diffusion_models/z_image_turbo_bf16.safetensors",
                        "text_encoders/tiny_qwen_3.safetensors": "text_encoders/qwen_3_4b.safetensors",
                        "vae/tiny_z_image_ae.safetensors": "vae/ae.safetensors"})
    write_patch(qwen_root, "Z-Image-Turbo-Fun-Controlnet-Union.safetensors", control_net().state_dict())
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    pixels = (control_image(128)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(qwen_engine.paths.input_dir / "image_z_image_turbo_fun_union_controlnet_input_image.png")
    api = template_api("image_z_image_turbo_fun_union_controlnet", qwen_registry)
    set_inputs(api, {"KSampler": {"steps": 2}})
    result = qwen_engine.run(api).raise_for_status()
    kinds = {api[n]["class_type"] for n in result.executed}
    assert {"ModelPatchLoader", "QwenImageDiffsynthControlnet", "Canny", "GetImageSize", "KSampler"} <= kinds
    image = last_saved_image(qwen_engine.paths.output_dir)
    assert image.shape == (128, 128, 3) and image.std() > 0.01


# -- Union 2.x: control blocks in the noise refiner, inpaint channels ------------------------------------------


@pytest.fixture(scope="module")
def z6(qwen_root, tiny_z_image):
    """A 6-layer tiny Z-Image with Z-Image's two noise-refiner layers (2.x hints land on layers 0, 2 and 4)."""
    return tiny_z(qwen_root, layers=6, refiner_layers=2, seed=47)


def control_net_2x(seed: int = 12):
    from diffusers import ZImageControlNetModel

    torch.manual_seed(seed)
    net = ZImageControlNetModel(control_layers_places=list(range(0, 30, 2)), control_refiner_layers_places=[0, 1],
                                control_in_dim=33, add_control_noise_refiner="control_noise_refiner", dim=64,
                                n_refiner_layers=2, n_heads=2, n_kv_heads=2).eval()
    _randomize(net, 0.2)
    return net


def save_2x_inputs(engine) -> None:
    rng = np.random.default_rng(7)
    inpaint = np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    Image.fromarray(inpaint).save(engine.paths.input_dir / "inpaint_64.png")
    mask = np.kron(rng.integers(0, 2, (8, 8), dtype=np.uint8) * 255, np.ones((8, 8), np.uint8))
    Image.fromarray(np.stack([mask] * 3, -1)).save(engine.paths.input_dir / "mask_64.png")
    control = (control_image(64)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(control).save(engine.paths.input_dir / "control_64.png")


def graph_2x(patch: str, strength: float = 0.8) -> Graph:
    g = Graph()
    model, clip, vae = loaders(g, "tiny_z_image_6.safetensors")
    mp = g.node("ModelPatchLoader", name=patch).out(0)
    img = g.node("LoadImage", image="control_64.png").out(0)
    inpaint = g.node("LoadImage", image="inpaint_64.png").out(0)
    mask = g.node("ImageToMask", image=g.node("LoadImage", image="mask_64.png").out(0), channel="red").out(0)
    model = g.node("ZImageFunControlnet", model=model, model_patch=mp, vae=vae, strength=strength, image=img,
                   inpaint_image=inpaint, mask=mask).out(0)
    sample(g, model, clip, vae)
    return g


def _png(engine, name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(engine.paths.input_dir / name))).float().div(255).permute(2, 0, 1)[None]


@contextmanager
def reference_control_2x(engine, transformer, cnet, vae, strength: float):
    """ComfyUI's 2.x math written out: 33 control channels (control latent, ``1 − mask`` at the latent size
    (nearest), the inpaint image's latent with the masked-out part set to grey), control noise-refiner blocks
    on the model's two noise-refiner layers (hints added there), control layer ``k`` after main layer ``2k``."""
    def latent(pixels):
        with torch.no_grad():
            z = vae.encode(pixels * 2 - 1).latent_dist.mode()
        return (z - vae.config.shift_factor) * vae.config.scaling_factor

    keep = 1 - _png(engine, "mask_64.png")[:, :1]  # the node's mask is the red channel; ComfyUI inverts it
    inpaint = (_png(engine, "inpaint_64.png") - 0.5) * keep.round() + 0.5
    lat = torch.cat([latent(_png(engine, "control_64.png")), keep[:, :, ::8, ::8], latent(inpaint)], dim=1)
    tokens = patch_tokens(lat)
    state = {}

    def step(layer, c, x, f, adaln, first):
        h0 = layer.before_proj(c) + x if first else c
        h1 = original_block(layer, h0, f, adaln)
        return layer.after_proj(h1), h1

    def refiner_in(module, args):
        x, _, freqs, adaln = args[:4]
        state["c"] = cnet.control_all_x_embedder["2-1"](tokens)
        n = state["c"].shape[1]
        state.update(x=x[:, :n], f=freqs[:, :n], adaln=adaln)

    def refiner_out(i, out):
        hint, state["c"] = step(cnet.control_noise_refiner[i], state["c"], state["x"], state["f"], state["adaln"], i == 0)
        return add_hint(out, hint, strength)

    def main_in(module, args):
        unified, _, freqs, adaln = args[:4]
        c = state["c"]
        n = c.shape[1]
        hints = []
        for k, layer in enumerate(cnet.control_layers[:3]):
            hint, c = step(layer, c, unified[:, :n], freqs[:, :n], adaln, k == 0)
            hints.append(hint)
        state["hints"] = hints

    def main_out(i, out):
        if i % 2:
            return out
        return add_hint(out, state["hints"][i // 2], strength)

    handles = [transformer.noise_refiner[0].register_forward_pre_hook(refiner_in),
               transformer.layers[0].register_forward_pre_hook(main_in)]
    handles += [layer.register_forward_hook(lambda m, a, o, i=i: refiner_out(i, o))
                for i, layer in enumerate(transformer.noise_refiner)]
    handles += [layer.register_forward_hook(lambda m, a, o, i=i: main_out(i, o)) for i, layer in enumerate(transformer.layers)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()


def test_fun_controlnet_2x_inpaint_matches_reference(qwen_engine, qwen_root, tiny_z_image, z6):
    cnet = control_net_2x()
    write_patch(qwen_root, "tiny_z_fun_cnet_2x.safetensors", cnet.state_dict())
    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    save_2x_inputs(qwen_engine)
    image = qwen_engine.run(graph_2x("tiny_z_fun_cnet_2x.safetensors")).raise_for_status().value("out")
    with torch.no_grad(), reference_control_2x(qwen_engine, z6, cnet, tiny_z_image.vae, 0.8):
        ref = reference(tiny_z_image, z6)
    plain = reference(tiny_z_image, z6)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - plain).abs().max() > 1e-2
