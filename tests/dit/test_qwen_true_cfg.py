"""Qwen-Image at cfg > 1: what ComfyUI's KSampler (plain CFG, optionally CFGNorm) computes, and why it cannot
equal diffusers' QwenImagePipeline at ``true_cfg_scale`` > 1.

With velocity predictions ``v_c`` (positive), ``v_u`` (negative), latent ``x`` at noise level ``σ`` and scale
``s``, both start from the same combination ``c = v_u + s·(v_c − v_u)`` (ComfyUI combines the denoised
predictions ``D = x − σ·v``, which is linear: ``D_cfg = x − σ·c``). Then:

* diffusers (pipeline_qwenimage.py, the Edit pipelines alike) rescales the *velocity*, per 2×2 patch over the
  64 packed values (16 channels × 2 × 2), without a clamp: ``v̂ = c · ‖v_c‖ / ‖c‖`` and steps
  ``x' = x + (σ' − σ)·v̂``;
* ComfyUI's CFGNorm (comfy_extras/nodes_cfg.py, a post-CFG function) rescales the *denoised* prediction, per
  latent pixel over the 16 channels (dim 1), clamped to at most 1, times ``strength`` k:
  ``D̂ = D_cfg · k · min(1, ‖D_c‖ / ‖D_cfg‖)`` with ``D_c = x − σ·v_c``; Euler then steps with the
  velocity ``(x − D̂)/σ = c·k·r + x·(1 − k·r)/σ`` (r the clamped ratio).

For the two steps to agree for every ``x`` the ``x`` term must vanish (``k·r = 1``) and then ``c·1 = c·ρ``
(``ρ = ‖v_c‖/‖c‖`` = 1), i.e. only where guidance does not change the prediction's norm — not in general, for
no ``strength``; the norms are also taken over different groups (pixel vs 2×2 patch). So the engine's Qwen-Image
parity with diffusers is at cfg 1 (test_qwen_image.py), and here each formula is checked on its own, on the
same tiny model, by running diffusers' pipeline at ``true_cfg_scale`` 1 with the transformer wrapped so that
each call returns the guided velocity computed by one formula:

* the wrapper with diffusers' formula equals the pipeline's own ``true_cfg_scale`` 4 output (the harness);
* the wrapper with plain CFG equals the engine's KSampler at cfg 4;
* the wrapper with ComfyUI's CFGNorm formula equals the engine's KSampler cfg 4 + CFGNorm (strength 1, 0.9);
* diffusers' result differs from both;
* the same for Qwen-Image-Edit (QwenImageEditPipeline vs the template's TextEncodeQwenImageEdit + CFGNorm).

nodegraph's own model patch ``CFGVelocityNormRescale`` (nodes/sampling/model_patches.py) implements diffusers'
formula as the sampling core's CFG function; with it before KSampler (cfg 4) the engine equals the pipeline's
``true_cfg_scale`` 4 output at 1e-4, for text-to-image and for Qwen-Image-Edit.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

from tests.dit.qwen_fixtures import qwen_engine, qwen_registry, qwen_root, tiny_qwen_image, tiny_z_image  # noqa: F401
from tests.helpers.noise import engine_noise

CFG, NEGATIVE = 4.0, "blue sky, blurry"
STEPS_ = 4  # test_qwen_image.STEPS and test_qwen_edit.STEPS


def _unpack(v: torch.Tensor, h: int = 8, w: int = 8) -> torch.Tensor:
    """Packed (B, h/2·w/2, C·4) → latent (B, C, h, w) (the inverse of QwenImagePipeline._pack_latents)."""
    b, _, d = v.shape
    return v.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def _pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def diffusers_true_cfg(x, sigma, v_c, v_u, s):
    """pipeline_qwenimage.py: velocity CFG rescaled to the positive's norm per packed patch (no clamp)."""
    c = v_u + s * (v_c - v_u)
    return c * (torch.norm(v_c, dim=-1, keepdim=True) / torch.norm(c, dim=-1, keepdim=True))


def plain_cfg(x, sigma, v_c, v_u, s):
    return v_u + s * (v_c - v_u)


def comfy_cfg_norm(strength):
    """ComfyUI's KSampler CFG then CFGNorm on the denoised predictions (per latent pixel over channels, ratio
    clamped to [0, 1], times strength), returned as the velocity Euler steps with."""
    def combine(x, sigma, v_c, v_u, s):
        xs, vc, vu, sigma = _unpack(x), _unpack(v_c), _unpack(v_u), sigma.reshape(-1, 1, 1, 1)
        d_c, d_u = xs - sigma * vc, xs - sigma * vu
        d = d_u + s * (d_c - d_u)
        ratio = (torch.norm(d_c, dim=1, keepdim=True) / (torch.norm(d, dim=1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
        return _pack((xs - d * ratio * strength) / sigma)
    return combine


def _pipeline(tiny, net):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from tests.dit.test_qwen_image import SHIFT

    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=tiny.vae,
                             text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, transformer=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(seed: int | None = None):
    from tests.dit.test_qwen_image import SEED

    noise, _ = engine_noise((1, 16, 8, 8), SEED if seed is None else seed)
    return _pack(noise)


def pipeline_true_cfg(tiny) -> torch.Tensor:
    from tests.dit.test_qwen_image import PROMPT

    pipe = _pipeline(tiny, tiny.transformer)
    with torch.no_grad():
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS_, true_cfg_scale=CFG,
                     latents=_latents(), height=64, width=64, output_type="pt").images
    return image.permute(0, 2, 3, 1)


def _run_wrapped(pipe, combine, negative: tuple, **call) -> torch.Tensor:
    """``pipe`` at true_cfg_scale 1 with its transformer returning ``combine(x, σ, v_c, v_u, CFG)``: each call
    also runs the ``negative`` (states, mask: the pipeline's own encoding) on the same input. ``x`` and the
    predictions are the generated latent's tokens (the Edit pipelines append the reference image's after)."""
    net = pipe.transformer
    forward = net.forward
    tokens = call["latents"].shape[1]

    def guided(self, hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_mask, **kw):
        v_c = forward(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                      encoder_hidden_states_mask=encoder_hidden_states_mask, **kw)[0][:, :tokens]
        v_u = forward(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=negative[0],
                      encoder_hidden_states_mask=negative[1], **kw)[0][:, :tokens]
        # the pipeline passes t / 1000 = σ
        return (combine(hidden_states[:, :tokens], timestep.float(), v_c, v_u, CFG),)

    net.forward = types.MethodType(guided, net)
    with torch.no_grad():
        image = pipe(num_inference_steps=STEPS_, true_cfg_scale=1.0, height=64, width=64, output_type="pt",
                     **call).images
    return image.permute(0, 2, 3, 1)


def wrapped(tiny, combine) -> torch.Tensor:
    """Text-to-image: QwenImagePipeline with the wrapped transformer (:func:`_run_wrapped`)."""
    from tests.dit.test_qwen_image import PROMPT

    pipe = _pipeline(tiny, copy.deepcopy(tiny.transformer))
    with torch.no_grad():
        negative = pipe.encode_prompt(NEGATIVE, device="cpu")
    return _run_wrapped(pipe, combine, negative, prompt=PROMPT, latents=_latents())


def _engine_prompt(cfg_norm: float | None, velocity_rescale: bool = False) -> dict:
    """test_qwen_image's graph at cfg 4 with the negative prompt, with a CFGNorm before KSampler if given,
    or nodegraph's CFGVelocityNormRescale (``velocity_rescale``)."""
    from tests.dit.test_qwen_image import qwen_graph

    prompt = qwen_graph("files").to_api()
    ks_id, ks = next((k, n) for k, n in prompt.items() if n["class_type"] == "KSampler")
    ks["inputs"]["cfg"] = CFG
    prompt[ks["inputs"]["negative"][0]]["inputs"]["text"] = NEGATIVE
    return _with_norms(prompt, ks, cfg_norm, velocity_rescale)


def _with_norms(prompt: dict, ks: dict, cfg_norm: float | None, velocity_rescale: bool) -> dict:
    """``prompt`` with a CFGNorm of strength ``cfg_norm`` (if given) and nodegraph's CFGVelocityNormRescale (if
    ``velocity_rescale``) before its KSampler ``ks``."""
    if cfg_norm is not None:
        prompt["cfgnorm"] = {"class_type": "CFGNorm", "inputs": {"model": ks["inputs"]["model"], "strength": cfg_norm}}
        ks["inputs"]["model"] = ["cfgnorm", 0]
    if velocity_rescale:
        _add_velocity_rescale(prompt, ks)
    return prompt


def _add_velocity_rescale(prompt: dict, ks: dict) -> None:
    prompt["vrescale"] = {"class_type": "CFGVelocityNormRescale", "inputs": {"model": ks["inputs"]["model"]}}
    ks["inputs"]["model"] = ["vrescale", 0]


@pytest.fixture(scope="module")
def diffusers_image(tiny_qwen_image):
    return pipeline_true_cfg(tiny_qwen_image)


def test_wrapper_with_diffusers_formula_is_the_pipeline(tiny_qwen_image, diffusers_image):
    ref = wrapped(tiny_qwen_image, diffusers_true_cfg)
    assert torch.allclose(ref, diffusers_image, atol=1e-5), (ref - diffusers_image).abs().max()


def test_ksampler_cfg_matches_plain_cfg(qwen_engine, tiny_qwen_image, diffusers_image):
    image = qwen_engine.run(_engine_prompt(None)).raise_for_status().value("out")
    ref = wrapped(tiny_qwen_image, plain_cfg)
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    assert (image - diffusers_image).abs().max() > 1e-2


@pytest.mark.parametrize("strength", [1.0, 0.9])
def test_ksampler_cfg_norm_matches_comfy_formula_not_diffusers(qwen_engine, tiny_qwen_image, diffusers_image,
                                                               strength):
    image = qwen_engine.run(_engine_prompt(strength)).raise_for_status().value("out")
    ref = wrapped(tiny_qwen_image, comfy_cfg_norm(strength))
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    plain = qwen_engine.run(_engine_prompt(None)).raise_for_status().value("out")
    assert not torch.allclose(image, plain, atol=1e-3)  # CFGNorm acts on this run
    assert (image - diffusers_image).abs().max() > 1e-2  # and still is not diffusers' true CFG


# -- Qwen-Image-Edit: the same combination in QwenImageEditPipeline; ComfyUI's template (image_qwen_image_edit)
# encodes both prompts with TextEncodeQwenImageEdit and puts CFGNorm before KSampler. The negative gets the
# image too (the pipeline encodes its negative prompt with the image, and both passes see the reference latent).

def _edit_pipeline(tiny, net):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline

    from tests.dit.test_qwen_edit import SHIFT, Processor

    pipe = QwenImageEditPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), vae=tiny.vae,
                                 text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer,
                                 processor=Processor(tiny.tokenizer, tiny.text_encoder), transformer=net)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _edit_engine_prompt(cfg_norm: float | None, velocity_rescale: bool = False) -> dict:
    from tests.dit.test_qwen_edit import edit_graph

    prompt = edit_graph().to_api()
    ks = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    pos = prompt[ks["inputs"]["positive"][0]]
    ks["inputs"]["cfg"] = CFG
    prompt[ks["inputs"]["negative"][0]]["inputs"] = {**pos["inputs"], "prompt": NEGATIVE}
    return _with_norms(prompt, ks, cfg_norm, velocity_rescale)


@pytest.fixture
def edit_engine(qwen_engine):
    from tests.dit.test_qwen_edit import _image

    qwen_engine.paths.input_dir.mkdir(parents=True, exist_ok=True)
    _image().save(qwen_engine.paths.input_dir / "edit_input.png")
    return qwen_engine


@pytest.mark.slow  # four runs with the 1024² reference image's 4096 latent tokens: ~4 minutes on 2 CPU cores
def test_qwen_edit_cfg_norm_matches_comfy_formula_and_wrapper_is_the_pipeline(edit_engine, tiny_qwen_image):
    from tests.dit.test_qwen_edit import PROMPT, SEED, _image

    t = tiny_qwen_image
    with torch.no_grad():
        pipe = _edit_pipeline(t, t.transformer)
        own = pipe(image=_image(), prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS_,
                   true_cfg_scale=CFG, latents=_latents(SEED), height=64, width=64,
                   output_type="pt").images.permute(0, 2, 3, 1)

    def wrapped_edit(combine):
        pipe = _edit_pipeline(t, copy.deepcopy(t.transformer))
        with torch.no_grad():
            negative = pipe.encode_prompt(NEGATIVE, image=_image(), device="cpu")
        return _run_wrapped(pipe, combine, negative, image=_image(), prompt=PROMPT, latents=_latents(SEED))

    harness = wrapped_edit(diffusers_true_cfg)
    assert torch.allclose(harness, own, atol=1e-5), (harness - own).abs().max()
    image = edit_engine.run(_edit_engine_prompt(1.0)).raise_for_status().value("out")
    ref = wrapped_edit(comfy_cfg_norm(1.0))
    assert torch.allclose(image, ref, atol=1e-4), (image - ref).abs().max()
    # outside the parity tolerance (8e-4 here: with the image in both prompts, the tiny model's positive and
    # negative predictions are close, so the two rescalings differ less than in text-to-image)
    assert (image - own).abs().max() > 2e-4


# -- nodegraph's CFGVelocityNormRescale: diffusers' true CFG in the engine ------------------------------------

def test_velocity_norm_rescale_node_equals_pipeline_true_cfg(qwen_engine, diffusers_image):
    image = qwen_engine.run(_engine_prompt(None, velocity_rescale=True)).raise_for_status().value("out")
    assert torch.allclose(image, diffusers_image, atol=1e-4), (image - diffusers_image).abs().max()
    plain = qwen_engine.run(_engine_prompt(None)).raise_for_status().value("out")
    assert (plain - diffusers_image).abs().max() > 1e-2  # the node is what makes the difference


@pytest.mark.parametrize("shape", [(2, 16, 8, 6), (1, 16, 2, 4, 4)])
def test_patch_norm_is_the_packed_token_norm(shape):
    from nodegraph_nodes.sampling.model_patches import _patch_norm

    t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    frames = t.movedim(2, 1).reshape(-1, 16, *shape[-2:]) if t.ndim == 5 else t
    tokens = torch.norm(_pack(frames), dim=-1, keepdim=True)  # (B, tokens, 1), as diffusers' norm
    ours = _pack(_patch_norm(frames, 2).expand(-1, 16, -1, -1))[..., :1]
    assert torch.allclose(ours, tokens, atol=1e-5)
    if t.ndim == 5:  # per frame
        assert torch.allclose(_patch_norm(t, 2).movedim(2, 1).reshape(-1, 1, *shape[-2:]), _patch_norm(frames, 2))


def test_patch_norm_odd_sides_use_the_values_there_are():
    from nodegraph_nodes.sampling.model_patches import _patch_norm

    t = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    n = _patch_norm(t, 2)
    assert torch.isclose(n[0, 0, 0, 0], torch.tensor([1.0, 2, 4, 5]).norm())
    assert torch.isclose(n[0, 0, 2, 2], torch.tensor(9.0))
    assert torch.isclose(n[0, 0, 2, 0], torch.tensor([7.0, 8]).norm())


def test_velocity_norm_rescale_refuses_a_non_flow_model():
    from nodegraph_nodes.sampling import model_sampling as msl
    from nodegraph_nodes.sampling.model_patches import _VelocityNormRescale

    x = torch.randn(1, 4, 4, 4)
    args = {"cond": x, "uncond": x * 0.5, "cond_scale": 4.0, "model_sampling": msl.discrete("eps")}
    with pytest.raises(ValueError, match="CFGVelocityNormRescale.model.*flow"):
        _VelocityNormRescale(2)(args)
    args["model_sampling"] = msl.sd3_flow(3.0, 1.0)
    out = _VelocityNormRescale(2)(args)
    ref = _unpack(diffusers_true_cfg(None, None, _pack(x), _pack(x * 0.5), 4.0), 4, 4)
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.slow  # two runs with the 1024² reference image's 4096 latent tokens: ~2 minutes on 2 CPU cores
def test_velocity_norm_rescale_node_equals_edit_pipeline_true_cfg(edit_engine, tiny_qwen_image):
    from tests.dit.test_qwen_edit import PROMPT, SEED, _image

    t = tiny_qwen_image
    with torch.no_grad():
        own = _edit_pipeline(t, t.transformer)(
            image=_image(), prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS_, true_cfg_scale=CFG,
            latents=_latents(SEED), height=64, width=64, output_type="pt").images.permute(0, 2, 3, 1)
    image = edit_engine.run(_edit_engine_prompt(None, velocity_rescale=True)).raise_for_status().value("out")
    assert torch.allclose(image, own, atol=1e-4), (image - own).abs().max()
