"""HiDream-O1-Image: a pixel-space "unified transformer" built on Qwen3-VL (no VAE, no separate text
encoder), its MODEL value and its runner.

The network (official code: github.com/HiDream-ai/HiDream-O1-Image, MIT, ``models/qwen3_vl_transformers.py``)
is transformers' Qwen3-VL — the vision tower (``Qwen3VLVisionModel``, for reference images, with its
DeepStack features added to the first decoder layers at the vision tokens) and the language model
(``Qwen3VLTextModel``, run layer by layer here) — plus three small heads:

* ``x_embedder``: 32×32 RGB patches (3072 values) → ``hidden/4`` (no bias) → ``hidden``;
* ``t_embedder1``: the sinusoidal embedding (256, cos then sin) of ``(1 - sigma)·1000`` through
  Linear–SiLU–Linear; it replaces the embedding of the ``<|tms_token|>`` in the prompt;
* ``final_layer2``: ``hidden`` → 3072 per token: the predicted clean patches (x0) of the target image.

One call: the token sequence of :mod:`.hidream_o1_sequence` (prompt, tms, then the target's noisy
patches and the reference patches embedded by ``x_embedder``), attention causal over the text before
the tms token and full for the rest. Sampling is flow matching in pixel space: ``x = (1-σ)·x0 +
σ·s·ε`` with the training noise scale ``s`` (8.0; the dev model 7.5; ``ModelNoiseScale`` sets it), shift 3
(ComfyUI's model sampling; the official dev recipe uses shift 1 with a fixed 28-step list and its
"flash" sampler = SamplerLCM with per-step noise). The runner returns ``(x - x0)/max(σ, 0.001)`` in fp32,
so the flow parameterization's ``x - σ·out`` gives back x0.

``HiDreamO1PatchSeamSmoothing`` (a setting of the MODEL, :class:`SeamSmoothing`): between two sampling
percentages the runner also runs the network on copies of the input rolled by sub-patch offsets, rolls
the outputs back and blends them (mean, Hann-window weights or median), keeping the plain output near
the borders (32 pixels, 4-pixel feather) where the roll wraps around.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from nodegraph_nodes.dit import hidream_o1_sequence as seq
from nodegraph_nodes.dit.formats import LatentFormat
from nodegraph_nodes.dit.model import FlowModel
from nodegraph_nodes.dit.runner_common import NetRunner, open_runner
from nodegraph_nodes.sampling import model_sampling as msl
from nodegraph_nodes.sampling.model import CondPart

#: the training noise scale of the base model (ModelNoiseScale's documented values: base 8.0, dev 7.5)
BASE_NOISE_SCALE = 8.0
SHIFT = 3.0
T_EPS = 1e-3
#: pixel space: the LATENT is the image in [-1, 1], channels first
PIXELS = LatentFormat(3, 1.0, 0.0, ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (0.0, 0.0, 0.0))


# -- the network ------------------------------------------------------------------------------------

class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, frequencies: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequencies = frequencies

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t * 1000).float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class BottleneckPatchEmbed(nn.Module):
    def __init__(self, patch_dim: int, bottleneck: int, hidden: int):
        super().__init__()
        self.proj1 = nn.Linear(patch_dim, bottleneck, bias=False)
        self.proj2 = nn.Linear(bottleneck, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(self.proj1(x))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch_dim: int):
        super().__init__()
        self.linear = nn.Linear(hidden, patch_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class HiDreamO1Core(nn.Module):
    """The file's ``model.`` part: ``visual``, ``language_model`` and the three heads."""

    def __init__(self, config):
        super().__init__()
        from transformers import Qwen3VLTextModel, Qwen3VLVisionModel

        hidden = config.text_config.hidden_size
        patch_dim = 3 * seq.PATCH * seq.PATCH
        self.visual = Qwen3VLVisionModel._from_config(config.vision_config)
        self.language_model = Qwen3VLTextModel._from_config(config.text_config)
        self.t_embedder1 = TimestepEmbedder(hidden)
        self.x_embedder = BottleneckPatchEmbed(patch_dim, hidden // 4, hidden)
        self.final_layer2 = FinalLayer(hidden, patch_dim)


class HiDreamO1Net(nn.Module):
    """The whole model as the file holds it (``model.…``); ``forward`` is one denoising call."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = HiDreamO1Core(config)

    def vision(self, s: seq.Sequence, dtype: torch.dtype, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The vision tower's merged tokens and DeepStack features of ``s``'s reference images."""
        out = self.model.visual(s.pixel_values.to(device, dtype), grid_thw=s.image_grid_thw.to(device),
                                return_dict=True)
        return out.pooler_output, list(out.deepstack_features)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, s: seq.Sequence,
                vision: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> torch.Tensor:
        """x0 patches ``[B, target_len, 3072]`` for the noisy target patches ``x`` ``[B, target_len, 3072]``
        at ``sigma`` ``[B]``."""
        lm = self.model.language_model
        device, dtype = x.device, lm.embed_tokens.weight.dtype
        ids = s.input_ids.to(device)
        b = x.shape[0]
        emb = lm.embed_tokens(ids).expand(b, -1, -1).clone()
        deepstack: list[torch.Tensor] = []
        if vision is not None:
            tokens, deepstack = vision
            emb[:, ids[0] == seq.IMAGE_PAD] = tokens.to(dtype)
        t_emb = self.model.t_embedder1(1.0 - sigma.to(device).float()).to(dtype)
        emb[:, ids[0] == seq.TMS] = t_emb[:, None, :]
        vin = x.to(dtype)
        if s.ref_patches is not None:
            vin = torch.cat([vin, s.ref_patches.to(device, dtype).expand(b, -1, -1)], dim=1)
        h = torch.cat([emb, self.model.x_embedder(vin).to(dtype)], dim=1)
        total = h.shape[1]
        visual = torch.zeros(total, dtype=torch.bool, device=device)
        visual[:ids.shape[1]] = ids[0] == seq.IMAGE_PAD
        allowed = torch.ones(total, total, dtype=torch.bool, device=device)
        c = s.causal_len
        allowed[:c] = torch.tril(allowed[:c])
        mask = allowed[None, None]
        positions = s.positions.to(device).expand(3, b, total)
        rope = lm.rotary_emb(h, positions)
        for i, layer in enumerate(lm.layers):
            h = layer(h, position_embeddings=rope, attention_mask=mask, position_ids=None)
            if i < len(deepstack):  # DeepStack: vision features added at the vision tokens
                h[:, visual] = h[:, visual] + deepstack[i].to(dtype)
        h = lm.norm(h)
        start = ids.shape[1]
        return self.model.final_layer2(h[:, start:start + s.target_len])


# -- MODEL ------------------------------------------------------------------------------------------

SHIFT_PATTERNS = {
    ("single_shift", 2): [(0, 0), (16, 16)],
    ("single_shift", 4): [(0, 0), (16, 0), (0, 16), (16, 16)],
    ("single_shift", 8): [(0, 0), (16, 0), (0, 16), (16, 16), (8, 8), (24, 8), (8, 24), (24, 24)],
    ("symmetric", 2): [(-8, -8), (8, 8)],
    ("symmetric", 4): [(-8, -8), (8, -8), (-8, 8), (8, 8)],
    ("symmetric", 8): [(-12, -12), (4, -12), (-12, 4), (4, 4), (-4, -4), (12, -4), (-4, 12), (12, 12)],
}
PASS_LEVELS = {"2": [2], "4": [4], "ramp_2_4": [2, 4], "ramp_2_4_8": [2, 4, 8]}
EDGE_FEATHER = 4


@dataclass(frozen=True)
class SeamSmoothing:
    """HiDreamO1PatchSeamSmoothing's settings (see the module docstring)."""

    start_percent: float
    end_percent: float
    pattern: str = "single_shift"
    passes: str = "2"
    blend: str = "average"
    strength: float = 1.0


def _hann_tile(cy: int, cx: int, size: int = seq.PATCH) -> torch.Tensor:
    """A ``size``×``size`` Hann window peaking at (cy, cx), wrapping within the patch."""
    half = size // 2
    dy = ((torch.arange(size).view(size, 1) - cy + half) % size) - half
    dx = ((torch.arange(size).view(1, size) - cx + half) % size) - half
    return 0.25 * (1 + torch.cos(torch.pi * dy / half)) * (1 + torch.cos(torch.pi * dx / half))


def _edge_ramp(h: int, w: int, device, dtype) -> torch.Tensor:
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    ys, xs = torch.minimum(ys, (h - 1) - ys), torch.minimum(xs, (w - 1) - xs)
    ramp_y = ((ys - seq.PATCH) / EDGE_FEATHER).clamp(0, 1)
    ramp_x = ((xs - seq.PATCH) / EDGE_FEATHER).clamp(0, 1)
    return (ramp_y[:, None] * ramp_x[None, :]).to(dtype)


@dataclass(frozen=True, eq=False)
class HiDreamO1Model(FlowModel):
    """MODEL of HiDream-O1-Image (pixel space, 3 channels)."""

    family: str = "hidream_o1"
    seam: SeamSmoothing | None = None

    @property
    def format(self) -> LatentFormat:
        return PIXELS

    @property
    def model_sampling(self) -> msl.ModelSampling:
        if self.sampling is not None:
            return self.sampling
        return dataclasses.replace(msl.sd3_flow(SHIFT), noise_scale=BASE_NOISE_SCALE)

    def lora_patch(self, sd: dict, strength: float, name: str):
        raise ValueError(f"LoraLoader: LoRAs for HiDream-O1 are not supported yet ({name})")

    def with_seam_smoothing(self, seam: SeamSmoothing | None) -> "HiDreamO1Model":
        return dataclasses.replace(self, seam=seam)

    def open_runner(self, ctx, latent_shape: tuple):
        return open_runner(self, ctx, latent_shape, HiDreamO1Runner, self)


class HiDreamO1Runner(NetRunner):
    """One run's calls: each conditioning part is its own sequence (built once per image size)."""

    def __init__(self, net, device: str, model: HiDreamO1Model):
        super().__init__(net, device)
        self.model = model
        self.sequences: dict = {}

    @staticmethod
    def can_batch(a, b) -> bool:
        """Each entry is its own sequence: only an entry batches with itself."""
        return a.extras is b.extras

    def _sequence(self, part: CondPart, width: int, height: int):
        key = (id(part.extras), width, height)
        if key not in self.sequences:
            ids = part.extras.get("text_input_ids")
            if ids is None:
                raise ValueError("HiDream-O1: this conditioning has no prompt tokens; encode the prompt with "
                                 "the HiDream-O1 checkpoint's CLIP (CheckpointLoaderSimple → CLIPTextEncode)")
            refs = []
            for image in part.extras.get("reference_latents") or ():
                if image.ndim != 4 or image.shape[-1] not in (3, 4):
                    raise ValueError("HiDream-O1: reference images must be IMAGEs (HiDreamO1ReferenceImages)")
                refs += list(image)
            s = seq.build([int(i) for i in ids.reshape(-1).tolist()], width, height, refs)
            vision = self.net.vision(s, self.dtype, self.device) if s.pixel_values is not None else None
            self.sequences[key] = (s, vision, part.extras)  # the extras kept alive: their id stays theirs
        return self.sequences[key][:2]

    def _predict(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        b, _, h, w = x_in.shape
        if h % seq.PATCH or w % seq.PATCH:
            raise ValueError(f"HiDream-O1: the image must be a multiple of 32 pixels on each side; got {w}×{h} "
                             "(EmptyHiDreamO1LatentImage steps by 32)")
        sigma = (timestep.to(self.device).float().reshape(-1) / 1000.0).expand(b)
        x = x_in.to(self.device, torch.float32)
        patches = seq.patchify(x)
        outs, row = [], 0
        for p in parts:
            s, vision = self._sequence(p, w, h)
            x0 = self.net(patches[row:row + p.rows], sigma[row:row + p.rows], s, vision)
            outs.append(seq.unpatchify(x0.float(), h, w))
            row += p.rows
        x_pred = torch.cat(outs)
        return (x - x_pred) / sigma.clamp_min(T_EPS).view(-1, 1, 1, 1)

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        pred = self._predict(x_in, timestep, parts)
        smooth = self.model.seam
        if smooth is None or smooth.strength <= 0.0 or smooth.end_percent <= smooth.start_percent:
            return pred
        ms = self.model.model_sampling
        start_t = ms.percent_to_sigma(smooth.start_percent) * 1000.0
        end_t = ms.percent_to_sigma(smooth.end_percent) * 1000.0
        t = float(timestep.reshape(-1)[0])
        if not end_t <= t <= start_t:
            return pred
        levels = PASS_LEVELS[smooth.passes]
        level = 0 if len(levels) == 1 else min(int((start_t - t) / max(start_t - end_t, 1e-8) * len(levels)),
                                               len(levels) - 1)
        shifts = SHIFT_PATTERNS[(smooth.pattern, levels[level])]
        preds = []
        for sy, sx in shifts:
            if sy == 0 and sx == 0:
                preds.append(pred)
                continue
            rolled = self._predict(torch.roll(x_in, shifts=(sy, sx), dims=(-2, -1)), timestep, parts)
            preds.append(torch.roll(rolled, shifts=(-sy, -sx), dims=(-2, -1)))
        stacked = torch.stack(preds)
        n, _, _, h, w = stacked.shape
        if smooth.blend == "window":
            half = seq.PATCH // 2
            tiles = torch.stack([_hann_tile((half - sy) % seq.PATCH, (half - sx) % seq.PATCH) for sy, sx in shifts])
            weights = tiles.to(stacked.device, stacked.dtype).repeat(1, h // seq.PATCH, w // seq.PATCH)[:, :h, :w]
            total = weights.sum(dim=0, keepdim=True)
            weights = torch.where(total < 1e-3, torch.full_like(weights, 1.0 / n), weights / total.clamp(min=1e-8))
            blended = (stacked * weights[:, None, None]).sum(dim=0)
        elif smooth.blend == "median":
            blended = torch.median(stacked, dim=0).values
        else:
            blended = stacked.mean(dim=0)
        edge = _edge_ramp(h, w, pred.device, pred.dtype) * smooth.strength
        return pred * (1.0 - edge) + blended * edge
