"""Train the shapes-world text-to-image model from a seed:
``python -m training.shapes.train_generator --stage vae|decoder|unet|all --seed S --out DIR
[--vae-steps N --decoder-steps K --unet-steps M | --minutes N]``.

1. **VAE** (``--stage vae``): an ``AutoencoderKL`` on freshly rendered scenes every step, loss = MSE
   + L1 (flat colours and crisp edges) + 1e-6 · KL (SD's weight); then the latent scaling factor =
   1 / std of the latent means of 1024 fresh renders.
2. **Decoder** (``--stage decoder``): the VAE's decoder is fine-tuned for crisp edges with the encoder
   frozen (:func:`train_decoder`), so the latent space the UNet learns on does not move (the decoder
   and UNet stages are independent: either order gives the same weights).
3. **UNet** (``--stage unet``): first a pool of ``--pool`` (scene, paraphrase) pairs is rendered
   (``--pair-share`` 0.6 of the scenes with two objects, ``--canonical-share`` 0.3 of the captions
   canonical), VAE-encoded (scaled latent means) and text-encoded with MiniLM (the encoder is far too slow on two
   cores to run every step; the pool is cached in the work folder). Then training
   on DDPM's linear schedule (1000 steps, see :mod:`.generator`), uniform timesteps, 10 % of captions replaced by
   the empty prompt (classifier-free guidance), v-prediction with "Min-SNR-5 + 1" loss weights
   (:func:`timestep_loss_weights`: the plain v loss at high noise, where the layout — which colour goes
   where — is decided, and the many nearly clean timesteps clipped as in Min-SNR, which starves the
   noisy steps), AdamW with warm-up (cosine decay when the
   step count is given), an EMA of the weights (saved).

``--stage all`` runs vae, decoder, unet; the finished model is written to ``--out`` in the diffusers folder layout
(:func:`.generator.save_pipeline_folder`). Training state goes to ``--work`` (default ``<out>.train``)
every ``--checkpoint-minutes``; running the same command again resumes from it. Step counts
make a run reproducible from its seed; ``--minutes`` instead stops on wall-clock time (total over
resumptions; with ``--stage all``, ``--vae-fraction`` / ``--decoder-fraction`` of it go to those
stages), which is handy for smoke runs but depends on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nodegraph_nodes.shapes import generator as gen
from nodegraph_nodes.shapes.captions import paraphrase
from nodegraph_nodes.shapes.render import IMAGE_SIZE, render_batch
from nodegraph_nodes.shapes.text_encoder import encode, load_text_encoder
from nodegraph_nodes.shapes.world import CANVAS, PALETTE, sample_scene

#: The UNet recipe's data mix and loss (``--pair-share``, ``--canonical-share``, ``--loss-weighting``).
PAIR_SHARE, CANONICAL_SHARE, LOSS_WEIGHTING = 0.6, 0.3, "min-snr-plus-one"

#: Training scenes come from ``random.Random(seed + offset)``; evaluation uses seeds ≥ 10**9.
VAE_DATA_OFFSET, SCALE_DATA_OFFSET, POOL_DATA_OFFSET, DECODER_DATA_OFFSET, VAE8X_DATA_OFFSET = 1, 2, 3, 4, 5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def images_tensor(scenes, size: int = CANVAS) -> torch.Tensor:
    """``[B, 3, size, size]`` in -1..1 (64 px: the first VAE's and the pool's; 128 px: the shipped VAE's)."""
    return torch.from_numpy(render_batch(scenes, size)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class Budget:
    """When a stage stops: after ``steps`` steps, or after ``minutes`` of (accumulated) training time."""

    steps: int | None
    minutes: float | None

    def done(self, step: int, elapsed: float) -> bool:
        if self.steps is not None:
            return step >= self.steps
        return elapsed >= (self.minutes or 0) * 60

    def lr_factor(self, step: int, warmup: int) -> float:
        warm = min(1.0, (step + 1) / warmup)
        if self.steps is None:
            return warm
        progress = min(1.0, step / max(1, self.steps))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Checkpointer:
    def __init__(self, path: Path, every_minutes: float) -> None:
        self.path = path
        self.every = every_minutes * 60
        self.last = time.time()

    def due(self) -> bool:
        return time.time() - self.last >= self.every

    def save(self, state: dict) -> None:
        _save_atomic(state, self.path)
        self.last = time.time()
        log(f"checkpoint {self.path.name} at step {state['step']}")


def _rng_state(rng: random.Random, gen_: torch.Generator) -> dict:
    return {"py": rng.getstate(), "torch": gen_.get_state(), "global": torch.get_rng_state()}


def _set_rng_state(state: dict, rng: random.Random, gen_: torch.Generator) -> None:
    rng.setstate(state["py"])
    gen_.set_state(state["torch"])
    torch.set_rng_state(state["global"])


def _resume(state_path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: random.Random,
            gen_: torch.Generator, stage: str) -> tuple[int, float]:
    """Load a stage's checkpoint (model, optimiser, random states) when there is one: ``(step, elapsed)``,
    ``(0, 0.0)`` for a fresh start."""
    if not state_path.is_file():
        return 0, 0.0
    state = torch.load(state_path, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    _set_rng_state(state["rng"], rng, gen_)
    step, elapsed = state["step"], state["elapsed"]
    log(f"{stage}: resumed at step {step} ({elapsed / 60:.1f} min)")
    return step, elapsed


# -- VAE -----------------------------------------------------------------------------------------

def train_vae(work: Path, seed: int, budget: Budget, batch_size: int = 16, lr: float = 1e-3,
              kl_weight: float = 1e-6, checkpoint_minutes: float = 5.0) -> Path:
    """Trains (or resumes) the 64-px VAE (4×, :data:`.generator.VAE64_CONFIG`) whose latent space the UNet
    learns; writes ``work/vae`` (diffusers, fp32) and returns it."""
    state_path = work / "vae_state.pt"
    torch.manual_seed(seed)
    vae = gen.build_vae(gen.VAE64_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng, noise_gen = random.Random(seed + VAE_DATA_OFFSET), torch.Generator().manual_seed(seed)
    step, elapsed = _resume(state_path, vae, opt, rng, noise_gen, "vae")
    ckpt = Checkpointer(state_path, checkpoint_minutes)
    vae.train()
    start, losses = time.time() - elapsed, []
    while not budget.done(step, time.time() - start):
        for group in opt.param_groups:
            group["lr"] = lr * budget.lr_factor(step, 100)
        x = images_tensor([sample_scene(rng) for _ in range(batch_size)])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=noise_gen)
        recon = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        kl = posterior.kl().mean()  # summed over the latent's elements, averaged over the batch
        loss = mse + torch.nn.functional.l1_loss(recon, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(mse.item())
        if step % 50 == 0:
            log(f"vae step {step} mse {np.mean(losses):.5f} kl/elem {kl.item() / z[0].numel():.3f} "
                f"({(time.time() - start) / step:.2f} s/step, {(time.time() - start) / 60:.1f} min)")
            losses = []
        if ckpt.due():
            ckpt.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                       "elapsed": time.time() - start, "rng": _rng_state(rng, noise_gen)})
    vae.eval()
    scale = latent_scaling_factor(vae, seed)
    vae.register_to_config(scaling_factor=scale)
    out = work / "vae"
    vae.save_pretrained(str(out), safe_serialization=True)
    ckpt.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
               "elapsed": time.time() - start, "rng": _rng_state(rng, noise_gen)})
    mse = reconstruction_mse(vae, seed)
    with open(work / "vae_report.json", "w", encoding="utf-8") as fh:
        json.dump({"steps": step, "minutes": (time.time() - start) / 60, "scaling_factor": scale,
                   "holdout_mse": mse}, fh, indent=2)
    log(f"vae done: {step} steps, scaling factor {scale:.4f}, held-out MSE {mse:.5f}")
    return out


@torch.no_grad()
def latent_scaling_factor(vae, seed: int, count: int = 1024) -> float:
    rng = random.Random(seed + SCALE_DATA_OFFSET)
    means = [vae.encode(images_tensor([sample_scene(rng) for _ in range(128)])).latent_dist.mean
             for _ in range(count // 128)]
    return float(1.0 / torch.cat(means).std())


@torch.no_grad()
def reconstruction_mse(vae, seed: int, count: int = 256) -> float:
    rng = random.Random(10**9 + seed)
    x = images_tensor([sample_scene(rng) for _ in range(count)], int(vae.config.sample_size))
    return float(torch.nn.functional.mse_loss(vae.decode(vae.encode(x).latent_dist.mean).sample, x))


# -- decoder sharpening -------------------------------------------------------------------------

PALETTE_UNIT = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 127.5 - 1.0  # [8, 3] in -1..1


def edge_weights(x: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """``[B, 1, H, W]``: 1 on flat areas, ``1 + edge_weight`` where a pixel differs from a neighbour."""
    diff = torch.zeros_like(x[:, :1])
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().amax(1, keepdim=True) > 0.02
    dy = (x[:, :, 1:] - x[:, :, :-1]).abs().amax(1, keepdim=True) > 0.02
    diff[:, :, :, 1:] += dx
    diff[:, :, :, :-1] += dx
    diff[:, :, 1:] += dy
    diff[:, :, :-1] += dy
    return 1.0 + edge_weight * (diff > 0).float()


def palette_distance(y: torch.Tensor) -> torch.Tensor:
    """Per pixel, the squared distance to the nearest palette colour (``y`` in -1..1)."""
    d = (y.permute(0, 2, 3, 1)[..., None, :] - PALETTE_UNIT).pow(2).sum(-1)
    return d.min(-1).values


def train_decoder(work: Path, seed: int, budget: Budget, batch_size: int = 16, lr: float = 5e-4,
                  edge_weight: float = 4.0, palette_weight: float = 0.05, latent_noise: float = 0.05,
                  checkpoint_minutes: float = 5.0, out: Path | None = None) -> Path:
    """Fine-tunes the VAE's decoder (and post-quant conv) with the encoder frozen, so the latent space —
    and hence the UNet's pool and training — stays exactly as the VAE stage left it. MSE + L1 trained
    decoders blur edges (a small star comes out as a pentagon); here the loss weighs pixels on edges
    ``1 + edge_weight`` times and pulls every pixel towards its nearest palette colour, and the latents
    get a little noise (``latent_noise`` × their std) so slightly-off latents from the sampler still
    decode crisply. Rewrites ``work/vae`` (and ``out/vae`` when that folder already holds a model)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(work / "vae"), local_files_only=True)
    vae.requires_grad_(False)
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in trainable:
        p.requires_grad_(True)
    state_path = work / "decoder_state.pt"
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    rng, noise_gen = random.Random(seed + DECODER_DATA_OFFSET), torch.Generator().manual_seed(seed + 29)
    step, elapsed = _resume(state_path, vae, opt, rng, noise_gen, "decoder")
    ckpt = Checkpointer(state_path, checkpoint_minutes)
    vae.encoder.eval()
    vae.decoder.train()
    scale = float(vae.config.scaling_factor)
    start, losses = time.time() - elapsed, []

    def snapshot() -> dict:
        return {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - start, "rng": _rng_state(rng, noise_gen)}

    while not budget.done(step, time.time() - start):
        for group in opt.param_groups:
            group["lr"] = lr * budget.lr_factor(step, 50)
        x = images_tensor([sample_scene(rng) for _ in range(batch_size)])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            z = z + (latent_noise / scale) * torch.randn(z.shape, generator=noise_gen)
        recon = vae.decode(z).sample
        weights = edge_weights(x, edge_weight)
        err = (recon - x)
        rec = (weights * (err.pow(2) + err.abs())).mean() / weights.mean()
        loss = rec + palette_weight * palette_distance(recon).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(rec.item())
        if step % 50 == 0:
            log(f"decoder step {step} weighted rec {np.mean(losses):.5f} "
                f"({(time.time() - start) / max(1, step):.2f} s/step, {(time.time() - start) / 60:.1f} min)")
            losses = []
        if ckpt.due():
            ckpt.save(snapshot())
    ckpt.save(snapshot())
    vae.eval()
    vae.save_pretrained(str(work / "vae"), safe_serialization=True)
    if out is not None and (out / "model_index.json").is_file():
        gen.save_vae(out, vae)
    report = {"steps": step, "minutes": (time.time() - start) / 60, "holdout_mse": reconstruction_mse(vae, seed),
              "holdout_reconstructions_passing_geometric_check": reconstruction_check_rate(vae)}
    with open(work / "decoder_report.json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    log(f"decoder done: {report}")
    return work / "vae"


@torch.no_grad()
def reconstruction_check_rate(vae, encoder=None, count: int = 100) -> float:
    """Share of the evaluation's held-out scenes whose VAE round trip passes its geometric check: the
    ceiling of what any UNet can score through this decoder. ``encoder``: another VAE (the 64-px
    teacher) whose latents are decoded instead of ``vae``'s own."""
    from nodegraph_nodes.shapes.evaluate import geometric_check, heldout_scenes

    items = heldout_scenes(count)
    enc = encoder or vae
    x = images_tensor([s for _, s in items], int(enc.config.sample_size))
    y = vae.decode(enc.encode(x).latent_dist.mean).sample
    images = ((y + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return sum(geometric_check(img, s).ok for img, (_, s) in zip(images, items)) / count


# -- the 8× VAE, distilled onto the 64-px VAE's latents ----------------------------------------

def train_vae8x(work: Path, out: Path, seed: int, budget: Budget, teacher: Path | None = None,
                batch_size: int = 8, lr: float = 5e-4, edge_weight: float = 4.0, palette_weight: float = 0.05,
                latent_noise: float = 0.05, checkpoint_minutes: float = 5.0, init: Path | None = None,
                decoder_only: bool = False, outline_weight: float = 0.0, smooth_noise: float = 0.0) -> Path:
    """The shipped VAE: 128×128×3 ↔ 16×16×4 (8×, ComfyUI's convention, :data:`.generator.VAE_CONFIG`),
    trained so that its latents *are* the 64-px VAE's: the UNet, trained on those, runs unchanged.

    Each step renders fresh scenes at 64 and 128 px. The encoder regresses the 64-px VAE's scaled
    latent means of the 64-px render from the 128-px render (MSE); the decoder maps those teacher
    latents, jittered by ``latent_noise`` × their std (sampler latents are slightly off), to the 128-px
    render with the decoder stage's loss (MSE + L1 weighted ``1 + edge_weight`` on edge pixels, plus
    ``palette_weight`` × squared distance to the nearest palette colour). Encoder and decoder train
    together but independently (the decoder never sees the student encoder's output). The teacher is
    ``work/vae`` (stage ``vae``) or the ``vae/`` of ``teacher`` (a 64-px model folder). Writes
    ``work/vae8x`` and, when ``work/unet_final`` or ``out`` holds a UNet, the finished model to ``out``.

    Fine-tuning (``init``: a model folder or its ``vae/``, e.g. the shipped 8× model): the VAE starts
    from those weights instead of the teacher's inner levels; with ``decoder_only`` the encoder (and
    quant conv) stay frozen, so the latent match, and hence the UNet and ``VAEEncode``, are untouched.
    ``outline_weight`` adds :func:`outline_loss` (the geometric check's colour tolerance on the 64-px
    area average, as a hinge) and ``smooth_noise`` makes that share of the latent jitter spatially
    smooth (:func:`jitter_latents`): the sampler's latents differ from the teacher's mostly at low
    spatial frequencies. Targets stay the renders of the scenes whose teacher latents are jittered.
    The report keeps ``init``'s own stage-vae8x report (``init_report``) and the steps of both
    (``total_steps``), so a fine-tuned model folder says how its VAE was made.
    """
    from diffusers import AutoencoderKL

    teacher_dir = (teacher / "vae") if teacher is not None else work / "vae"
    if not (teacher_dir / "config.json").is_file():
        raise SystemExit(f"no 64-px VAE in {teacher_dir}: run --stage vae first (or give --teacher)")
    t_vae = AutoencoderKL.from_pretrained(str(teacher_dir), torch_dtype=torch.float32, local_files_only=True).eval()
    t_vae.requires_grad_(False)
    if int(t_vae.config.sample_size) != CANVAS or len(t_vae.config.block_out_channels) != 3:
        raise SystemExit(f"{teacher_dir} is not a 64-px (4×) VAE")
    scale = float(t_vae.config.scaling_factor)
    state_path = work / "vae8x_state.pt"
    torch.manual_seed(seed + 5)
    init_report: dict = {}
    if init is not None:
        init_dir = init / "vae" if (init / "vae" / "config.json").is_file() else init
        vae = AutoencoderKL.from_pretrained(str(init_dir), torch_dtype=torch.float32, local_files_only=True)
        if int(vae.config.sample_size) != IMAGE_SIZE or abs(float(vae.config.scaling_factor) - scale) > 1e-6:
            raise SystemExit(f"{init_dir} is not an 8x VAE on {teacher_dir}'s latents (scaling factor {scale})")
        log(f"vae8x: fine-tuning from {init_dir}" + (" (decoder only)" if decoder_only else ""))
        init_report = _init_vae8x_report(init)  # read now: ``out`` may be ``init`` and is rewritten at the end
    else:
        vae = gen.build_vae(gen.VAE_CONFIG, scaling_factor=scale)
        copied = init_from_teacher(vae, t_vae)
        log(f"vae8x: {copied} of {sum(1 for _ in vae.state_dict())} tensors initialised from the 64-px VAE")
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng, noise_gen = random.Random(seed + VAE8X_DATA_OFFSET), torch.Generator().manual_seed(seed + 31)
    step, elapsed = _resume(state_path, vae, opt, rng, noise_gen, "vae8x")
    ckpt = Checkpointer(state_path, checkpoint_minutes)
    vae.train()
    if decoder_only:
        vae.encoder.eval()
    start, rec_losses, enc_losses, outline_losses = time.time() - elapsed, [], [], []

    def snapshot() -> dict:
        return {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - start, "rng": _rng_state(rng, noise_gen)}

    while not budget.done(step, time.time() - start):
        for group in opt.param_groups:
            group["lr"] = lr * budget.lr_factor(step, 100)
        scenes = [sample_scene(rng) for _ in range(batch_size)]
        x, x64 = images_tensor(scenes, IMAGE_SIZE), images_tensor(scenes)
        with torch.no_grad():
            target = t_vae.encode(x64).latent_dist.mean
            z = jitter_latents(target, latent_noise / scale, smooth_noise, noise_gen)
        enc = (torch.zeros(()) if decoder_only
               else torch.nn.functional.mse_loss(vae.encode(x).latent_dist.mean * scale, target * scale))
        recon = vae.decode(z).sample
        weights = edge_weights(x, edge_weight)
        err = recon - x
        rec = (weights * (err.pow(2) + err.abs())).mean() / weights.mean()
        outline = outline_loss(recon, x) if outline_weight else torch.zeros(())
        loss = rec + palette_weight * palette_distance(recon).mean() + enc + outline_weight * outline
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        rec_losses.append(rec.item())
        enc_losses.append(enc.item())
        outline_losses.append(outline.item())
        if step % 50 == 0:
            log(f"vae8x step {step} weighted rec {np.mean(rec_losses):.5f} latent mse {np.mean(enc_losses):.5f} "
                f"outline {np.mean(outline_losses):.5f} "
                f"({(time.time() - start) / max(1, step):.2f} s/step, {(time.time() - start) / 60:.1f} min)")
            rec_losses, enc_losses, outline_losses = [], [], []
        if ckpt.due():
            ckpt.save(snapshot())
    ckpt.save(snapshot())
    vae.eval()
    vae.save_pretrained(str(work / "vae8x"), safe_serialization=True)
    report = {"steps": step, "minutes": (time.time() - start) / 60, "scaling_factor": scale,
              **({"init": str(init), "decoder_only": decoder_only} if init is not None else {}),
              **({"init_report": init_report,
                  "total_steps": int(init_report.get("total_steps", init_report["steps"])) + step}
                 if init_report else {}),
              **({"latent_noise": latent_noise, "smooth_noise": smooth_noise, "outline_weight": outline_weight,
                  "lr": lr} if init is not None or outline_weight or smooth_noise else {}),
              "holdout_latent_mse": latent_match_mse(vae, t_vae),
              "holdout_mse": reconstruction_mse(vae, seed),
              "holdout_reconstructions_passing_geometric_check": reconstruction_check_rate(vae),
              "holdout_teacher_latents_decoded_passing_geometric_check": reconstruction_check_rate(vae, t_vae)}
    with open(work / "vae8x_report.json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    log(f"vae8x done: {report}")
    finish_folder(work, out, vae, teacher)
    return work / "vae8x"


def _init_vae8x_report(init: Path) -> dict:
    """The stage-vae8x report recorded in ``init``'s ``model_index.json`` (a model folder that
    :func:`finish_folder` wrote), or ``{}``: a fine-tune's report carries its start's history and the
    total step count (e.g. 1600 distillation steps + 600 decoder-only steps)."""
    index = init / "model_index.json"
    if not index.is_file():
        return {}
    report = json.loads(index.read_text(encoding="utf-8")).get("_shapes_world", {}).get("vae8x", {})
    return report if "steps" in report else {}


def jitter_latents(z: torch.Tensor, std: float, smooth_share: float, generator: torch.Generator) -> torch.Tensor:
    """``z`` plus noise of ``std`` per element: ``1 - smooth_share`` of its variance white, the rest
    spatially smooth (white noise at half the latent's resolution, bilinearly upsampled, rescaled to
    unit std)."""
    white = torch.randn(z.shape, generator=generator)
    if smooth_share <= 0:
        return z + std * white
    b, c, h, w = z.shape
    coarse = torch.randn((b, c, max(1, h // 2), max(1, w // 2)), generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    smooth = smooth / smooth.std().clamp_min(1e-6)
    return z + std * (math.sqrt(1 - smooth_share) * white + math.sqrt(smooth_share) * smooth)


#: The geometric check's colour tolerance (L1, 0..255) and the margin the outline loss asks for where
#: the render itself is clearly inside or outside a colour.
OUTLINE_TOLERANCE, OUTLINE_MARGIN = 90.0, 20.0


def outline_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The geometric check's outline test as a hinge, on both images area-averaged to the world's
    64-px grid (as the check reads them): for every palette colour, a pixel within the check's
    tolerance of it in the render must be at least as close to it in ``recon`` (and within
    tolerance − margin where the render is), and a pixel outside must stay at least as far (beyond
    tolerance + margin where the render is). Mean over pixels, summed over colours, in 0..1 units."""
    y = torch.nn.functional.avg_pool2d(recon, 2) * 127.5 + 127.5
    t = torch.nn.functional.avg_pool2d(x, 2) * 127.5 + 127.5
    colours = PALETTE_UNIT.to(recon.dtype) * 127.5 + 127.5  # [8, 3]
    d_y = (y[:, None] - colours[None, :, :, None, None]).abs().sum(2)  # [B, 8, 64, 64]
    d_t = (t[:, None] - colours[None, :, :, None, None]).abs().sum(2)
    inside = d_t < OUTLINE_TOLERANCE
    upper = torch.clamp(d_t, min=OUTLINE_TOLERANCE - OUTLINE_MARGIN)  # inside: be at most this far
    lower = torch.clamp(d_t, max=OUTLINE_TOLERANCE + OUTLINE_MARGIN)  # outside: be at least this far
    hinge = torch.where(inside, torch.relu(d_y - upper), torch.relu(lower - d_y))
    return hinge.sum(1).mean() / 255.0


@torch.no_grad()
def init_from_teacher(vae, teacher) -> int:
    """Starts the 8× VAE from the 64-px one: its three inner levels have the teacher's shapes, so the
    decoder's 64-px features (and the encoder's from 32 px down) begin as the teacher's. Student
    encoder block ``i + 1`` ← teacher block ``i``; decoder up blocks 0–2, the middle blocks and the
    latent convolutions keep their names; every tensor whose shape matches is copied (the 128-px
    level, the encoder's first block's input convolution and the decoder's output layers are new).
    The new 64→128 upsampling convolution starts as the identity (nearest-neighbour upsampling of the
    teacher's features). Returns how many tensors were copied."""
    src = teacher.state_dict()
    copied = 0
    for name, tensor in vae.state_dict().items():
        origin = name
        if name.startswith("encoder.down_blocks."):
            index = int(name.split(".")[2])
            if index == 0:
                continue
            origin = name.replace(f"encoder.down_blocks.{index}.", f"encoder.down_blocks.{index - 1}.", 1)
        if origin in src and src[origin].shape == tensor.shape:
            tensor.copy_(src[origin])
            copied += 1
    up = vae.decoder.up_blocks[len(vae.decoder.up_blocks) - 2].upsamplers[0].conv
    up.weight.zero_()
    up.bias.zero_()
    centre = up.weight.shape[-1] // 2
    up.weight[:, :, centre, centre] = torch.eye(up.weight.shape[0])
    return copied


@torch.no_grad()
def latent_match_mse(vae, teacher, count: int = 128) -> float:
    """Held-out MSE (scaled units) between the 8× VAE's latents and the 64-px teacher's."""
    from nodegraph_nodes.shapes.evaluate import heldout_scenes

    scenes = [s for _, s in heldout_scenes(count)]
    scale = float(teacher.config.scaling_factor)
    a = vae.encode(images_tensor(scenes, IMAGE_SIZE)).latent_dist.mean * scale
    b = teacher.encode(images_tensor(scenes)).latent_dist.mean * scale
    return float(torch.nn.functional.mse_loss(a, b))


def finish_folder(work: Path, out: Path, vae, teacher: Path | None = None) -> None:
    """Writes ``out`` = the UNet (``work/unet_final``, else the ``teacher`` folder's, else the one already
    in ``out``) + the 8× ``vae``."""
    from diffusers import UNet2DConditionModel

    folders = [work / "unet_final"] + ([teacher / "unet"] if teacher is not None else []) + [out / "unet"]
    meta_from = [teacher, out] if teacher is not None else [out]
    for unet_dir in folders:
        if (unet_dir / "config.json").is_file():
            break
    else:
        log(f"no UNet yet (run --stage unet): the 8× VAE stays in {work / 'vae8x'}")
        return
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir), torch_dtype=torch.float32, local_files_only=True)
    meta = {}
    for name in ("unet_meta.json",):
        if (work / name).is_file():
            meta = json.loads((work / name).read_text())
    for folder in meta_from:
        if not meta and (folder / "model_index.json").is_file():
            meta = json.loads((folder / "model_index.json").read_text()).get("_shapes_world", {})
    for name in ("vae_report", "vae8x_report"):
        if (work / f"{name}.json").is_file():
            meta[name.replace("_report", "")] = json.loads((work / f"{name}.json").read_text())
    gen.save_pipeline_folder(out, unet.eval(), vae, metadata=meta)
    log(f"model written to {out} (UNet from {unet_dir}, 8x VAE)")


# -- data pool for the UNet ----------------------------------------------------------------------

@torch.no_grad()
def build_pool(work: Path, vae, seed: int, size: int, pair_share: float = PAIR_SHARE,
               canonical_share: float = CANONICAL_SHARE) -> dict:
    """Scaled latents ``[N, 4, 16, 16]`` and text embeddings ``[N, 32, 384]`` (fp16) of ``size`` scenes,
    ``pair_share`` of them with two objects, ``canonical_share`` of the captions canonical."""
    path = work / f"pool_{seed}_{size}_{pair_share:g}_{canonical_share:g}.pt"
    if path.is_file():
        log(f"pool: loaded {path.name}")
        return torch.load(path, weights_only=False)
    rng = random.Random(seed + POOL_DATA_OFFSET)
    scenes = [sample_scene(rng, pair_share=pair_share) for _ in range(size)]
    captions = [paraphrase(s, rng, canonical_share) for s in scenes]
    t0 = time.time()
    scale = float(vae.config.scaling_factor)
    latents = torch.cat([vae.encode(images_tensor(scenes[i:i + 256])).latent_dist.mean * scale
                         for i in range(0, size, 256)])
    log(f"pool: {size} latents in {time.time() - t0:.0f}s")
    model, tokenizer = load_text_encoder()
    order = sorted(range(size), key=lambda i: len(captions[i]))  # similar lengths batch together
    embeds = torch.zeros(size, 32, 384, dtype=torch.float16)
    t0 = time.time()
    for i in range(0, size, 256):
        idx = order[i:i + 256]
        embeds[idx] = encode([captions[j] for j in idx], model=model, tokenizer=tokenizer).half()
        if (i // 256) % 10 == 0:
            log(f"pool: encoded {i + len(idx)}/{size} captions ({time.time() - t0:.0f}s)")
    pool = {"latents": latents.half(), "embeds": embeds, "captions": captions,
            "uncond": encode([""], model=model, tokenizer=tokenizer)[0].half()}
    _save_atomic(pool, path)
    return pool


# -- UNet ----------------------------------------------------------------------------------------

#: How the v-prediction loss of each timestep is weighted (``--loss-weighting``).
LOSS_WEIGHTINGS = ("min-snr", "min-snr-plus-one")


def timestep_loss_weights(snr: torch.Tensor, gamma: float, kind: str) -> torch.Tensor:
    """Per-timestep weights of the v-prediction loss.

    - ``min-snr``: Min-SNR-γ (Hang et al. 2023) in its v-prediction form ``min(SNR, γ) / (SNR + 1)``:
      the x0 error weighted by ``min(SNR, γ)``. At high noise the weight tends to the SNR itself, i.e.
      to 0 — the steps where the layout (which colour goes where) is decided barely train.
    - ``min-snr-plus-one``: ``(min(SNR, γ) + 1) / (SNR + 1)``: the plain v loss (weight 1, as SD 2 was
      trained) at high noise, and the easy nearly clean steps clipped as in Min-SNR.
    """
    if kind == "min-snr":
        return snr.clamp(max=gamma) / (snr + 1)
    if kind == "min-snr-plus-one":
        return (snr.clamp(max=gamma) + 1) / (snr + 1)
    raise ValueError(f"unknown loss weighting {kind!r}; choose from {', '.join(LOSS_WEIGHTINGS)}")


def train_unet(work: Path, out: Path, seed: int, budget: Budget, pool_size: int = 12288,
               batch_size: int = 64, lr: float = 8e-4, dropout: float = 0.1, ema_decay: float = 0.999,
               min_snr_gamma: float = 5.0, loss_weighting: str = LOSS_WEIGHTING,
               pair_share: float = PAIR_SHARE, canonical_share: float = CANONICAL_SHARE,
               checkpoint_minutes: float = 5.0) -> Path:
    from diffusers import AutoencoderKL

    if not (work / "vae" / "config.json").is_file():
        raise SystemExit(f"no trained VAE in {work / 'vae'}: run --stage vae first")
    vae = AutoencoderKL.from_pretrained(str(work / "vae"), local_files_only=True).eval()
    state_path = work / "unet_state.pt"
    state = torch.load(state_path, weights_only=False) if state_path.is_file() else None
    start = time.time()
    pool = build_pool(work, vae, seed, pool_size, pair_share, canonical_share)
    latents, embeds, uncond = pool["latents"].float(), pool["embeds"], pool["uncond"].float()
    n = latents.shape[0]
    torch.manual_seed(seed)
    unet = gen.build_unet()
    ema = gen.build_unet().requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = gen.build_train_scheduler()
    alphas = sched.alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    loss_weights = timestep_loss_weights(snr, min_snr_gamma, loss_weighting)
    rng, noise_gen = random.Random(seed), torch.Generator().manual_seed(seed + 17)
    step, elapsed = 0, time.time() - start  # the pool's time counts towards a minutes budget
    if state is not None:
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        _set_rng_state(state["rng"], rng, noise_gen)
        step, elapsed = state["step"], state["elapsed"]
        log(f"unet: resumed at step {step} ({elapsed / 60:.1f} min)")
    ckpt = Checkpointer(state_path, checkpoint_minutes)
    unet.train()
    t_start, losses = time.time() - elapsed, []
    t_run, step_run = time.time(), step

    def snapshot() -> dict:
        return {"model": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                "elapsed": time.time() - t_start, "rng": _rng_state(rng, noise_gen)}

    while not budget.done(step, time.time() - t_start):
        for group in opt.param_groups:
            group["lr"] = lr * budget.lr_factor(step, 200)
        idx = torch.randint(0, n, (batch_size,), generator=noise_gen)
        x0 = latents[idx]
        cond = embeds[idx].float()
        drop = torch.rand(batch_size, generator=noise_gen) < dropout
        cond[drop] = uncond
        noise = torch.randn(x0.shape, generator=noise_gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=noise_gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, encoder_hidden_states=cond, return_dict=False)[0]
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        per_item = (pred - target).pow(2).mean(dim=(1, 2, 3))
        loss = (per_item * loss_weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            log(f"unet step {step} loss {np.mean(losses):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({(time.time() - t_run) / (step - step_run):.2f} s/step, {(time.time() - t_start) / 60:.1f} min)")
            losses = []
        if ckpt.due():
            ckpt.save(snapshot())
    ckpt.save(snapshot())
    for buf_e, buf in zip(ema.buffers(), unet.buffers()):
        buf_e.copy_(buf)
    meta = {"seed": seed, "unet_steps": step, "pool": n, "batch_size": batch_size, "pair_share": pair_share,
            "loss_weighting": loss_weighting, "canonical_share": canonical_share,
            "minutes": round((time.time() - t_start) / 60, 2)}
    ema.eval().save_pretrained(str(work / "unet_final"), safe_serialization=True)
    (work / "unet_meta.json").write_text(json.dumps(meta, indent=2))
    log(f"unet done: {step} steps; UNet written to {work / 'unet_final'}")
    if (work / "vae8x" / "config.json").is_file():
        from diffusers import AutoencoderKL

        finish_folder(work, out, AutoencoderKL.from_pretrained(str(work / "vae8x"), local_files_only=True))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("vae", "decoder", "unet", "vae8x", "all"), default="all")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="vae8x: a 64-px model folder whose vae/ (and unet/) to use instead of the work folder's")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=gen.DEFAULT_FOLDER)
    parser.add_argument("--work", type=Path, default=None, help="training state (default: <out>.train)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (if no step counts)")
    parser.add_argument("--vae-fraction", type=float, default=0.2)
    parser.add_argument("--decoder-fraction", type=float, default=0.15)
    parser.add_argument("--vae-steps", type=int, default=None)
    parser.add_argument("--decoder-steps", type=int, default=None)
    parser.add_argument("--unet-steps", type=int, default=None)
    parser.add_argument("--vae8x-steps", type=int, default=None)
    parser.add_argument("--vae8x-init", type=Path, default=None,
                        help="vae8x: fine-tune the 8x VAE of this model folder (or vae folder) instead of "
                             "starting from the 64-px VAE")
    parser.add_argument("--vae8x-decoder-only", action="store_true",
                        help="vae8x: freeze the encoder (the latent match stays as it is)")
    parser.add_argument("--vae8x-lr", type=float, default=5e-4)
    parser.add_argument("--vae8x-latent-noise", type=float, default=0.05,
                        help="vae8x: std of the decoder's latent jitter (scaled units)")
    parser.add_argument("--vae8x-smooth-noise", type=float, default=0.0,
                        help="vae8x: share of the jitter's variance that is spatially smooth")
    parser.add_argument("--vae8x-outline-weight", type=float, default=0.0,
                        help="vae8x: weight of the outline hinge loss (see outline_loss)")
    parser.add_argument("--pool", type=int, default=12288, help="scenes (with one paraphrase each) for the UNet")
    parser.add_argument("--pair-share", type=float, default=PAIR_SHARE, help="two-object scenes in the pool")
    parser.add_argument("--canonical-share", type=float, default=CANONICAL_SHARE,
                        help="canonical captions in the pool")
    parser.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=LOSS_WEIGHTING)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vae-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or args.out.with_name(args.out.name + ".train")
    work.mkdir(parents=True, exist_ok=True)
    stages = ("vae", "unet", "vae8x") if args.stage == "all" else (args.stage,)
    steps = {"vae": args.vae_steps, "decoder": args.decoder_steps, "unet": args.unet_steps,
             "vae8x": args.vae8x_steps}
    if args.minutes is None and any(steps[s] is None for s in stages):
        parser.error("give --minutes or the step counts of the stages run")
    fractions = {"vae": args.vae_fraction, "decoder": args.decoder_fraction, "vae8x": args.decoder_fraction}
    log(f"train_generator: stages {', '.join(stages)}, seed {args.seed}, threads {torch.get_num_threads()}, work {work}")
    t0 = time.time()
    for stage in stages:
        minutes = None
        if args.minutes:
            spent = (time.time() - t0) / 60
            minutes = args.minutes * fractions[stage] if stage in fractions and len(stages) > 1 else args.minutes - spent
        budget = Budget(steps[stage], minutes)
        if stage == "vae":
            train_vae(work, args.seed, budget, batch_size=args.vae_batch_size,
                      checkpoint_minutes=args.checkpoint_minutes)
        elif stage == "vae8x":
            train_vae8x(work, args.out, args.seed, budget, teacher=args.teacher, batch_size=args.vae_batch_size,
                        lr=args.vae8x_lr, latent_noise=args.vae8x_latent_noise, checkpoint_minutes=args.checkpoint_minutes,
                        init=args.vae8x_init, decoder_only=args.vae8x_decoder_only,
                        outline_weight=args.vae8x_outline_weight, smooth_noise=args.vae8x_smooth_noise)
        elif stage == "decoder":
            train_decoder(work, args.seed, budget, batch_size=args.vae_batch_size,
                          checkpoint_minutes=args.checkpoint_minutes, out=args.out)
        else:
            train_unet(work, args.out, args.seed, budget, pool_size=args.pool, batch_size=args.batch_size,
                       lr=args.lr, loss_weighting=args.loss_weighting, pair_share=args.pair_share,
                       canonical_share=args.canonical_share,
                       checkpoint_minutes=args.checkpoint_minutes)
    log(f"finished in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
