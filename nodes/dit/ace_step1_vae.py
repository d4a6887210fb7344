"""ACE-Step 1.0's VAE (the release's "music DCAE"): diffusers' ``AutoencoderDC`` on stereo log-mel images ``[2, 128,
frames]`` (latents ``[8, 16, frames / 8]``) and the ADaMoS HiFi-GAN vocoder (a ConvNeXt backbone and a HiFi-GAN
head) from mel frames to 44.1 kHz samples (512 a frame; the ConvNeXt widths and MLP sizes, the head's kernels
from the weights), written here after the release's description with its parameter names (ComfyUI's all-in-one
file: ``vae.dcae.*`` and ``vae.vocoder.*``).

Facts: latent = ``(dcae_latent + 1.9091) · 0.1786`` (decoding inverts it); the DCAE's mel image is the log-mel
mapped from ``[-11, 3]`` to ``[-1, 1]``; the vocoder decodes each stereo channel as a batch item; encoding pads
the waveform to a multiple of 4096 samples, takes the log-mel (2048-point STFT with a Hann window, hop 512,
reflect padding of 768 / 768 samples, magnitude ``sqrt(re² + im² + 1e-6)``, 128 Slaney mel bands 40 Hz–16 kHz,
``log(max(x, 1e-5))``). Weight-normed convs load from ``weight_g``/``weight_v`` or
``parametrizations.weight.original0/1``. The DCAE config (block types, widths, depths, attention kernel) comes
from the shapes; up- and down-sampling are the release's (``interpolate`` / ``Conv``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.files import ModelFileError

SAMPLE_RATE = 44100
HOP = 512
SCALE, SHIFT = 0.1786, -1.9091
MEL_MIN, MEL_MAX = -11.0, 3.0


# -- vocoder ----------------------------------------------------------------------------------------------

class ChannelsFirstNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel: int = 7):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x).transpose(1, 2)))))
        return x + (self.gamma * y).transpose(1, 2)


class Backbone(nn.Module):
    def __init__(self, cin: int, depths: list[int], dims: list[int], hidden: list[int] | None = None):
        super().__init__()
        self.channel_layers = nn.ModuleList([nn.Sequential(
            nn.Conv1d(cin, dims[0], 7, padding=3, padding_mode="replicate"), ChannelsFirstNorm(dims[0]))])
        for a, b in zip(dims, dims[1:]):
            self.channel_layers.append(nn.Sequential(ChannelsFirstNorm(a), nn.Conv1d(a, b, 1)))
        hidden = hidden or [4 * d for d in dims]  # the release's ratio 4; files say theirs
        self.stages = nn.ModuleList(nn.Sequential(*(ConvNeXtBlock(d, h) for _ in range(n)))
                                    for n, d, h in zip(depths, dims, hidden))
        self.norm = ChannelsFirstNorm(dims[-1])

    def forward(self, x):
        for layer, stage in zip(self.channel_layers, self.stages):
            x = stage(layer(x))
        return self.norm(x)


def _wn(conv: nn.Module) -> nn.Module:
    return torch.nn.utils.parametrizations.weight_norm(conv)


class ResBlock(nn.Module):
    def __init__(self, ch: int, kernel: int, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList(_wn(nn.Conv1d(ch, ch, kernel, dilation=d, padding=(kernel * d - d) // 2))
                                    for d in dilations)
        self.convs2 = nn.ModuleList(_wn(nn.Conv1d(ch, ch, kernel, padding=(kernel - 1) // 2)) for _ in dilations)

    def forward(self, x):
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.silu(c1(F.silu(x))))
        return x


@dataclass(frozen=True)
class HeadConfig:
    mels: int
    channels: int
    rates: tuple
    kernels: tuple
    res_kernels: tuple
    pre_kernel: int
    post_kernel: int
    dilations: tuple = (1, 3, 5)


class Head(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        c = cfg.channels
        self.conv_pre = _wn(nn.Conv1d(cfg.mels, c, cfg.pre_kernel, padding=(cfg.pre_kernel - 1) // 2))
        self.ups = nn.ModuleList(_wn(nn.ConvTranspose1d(c >> i, c >> (i + 1), k, u, padding=(k - u) // 2))
                                 for i, (u, k) in enumerate(zip(cfg.rates, cfg.kernels)))
        self.resblocks = nn.ModuleList(ResBlock(c >> (i + 1), k, cfg.dilations)
                                       for i in range(len(cfg.rates)) for k in cfg.res_kernels)
        self.conv_post = _wn(nn.Conv1d(c >> len(cfg.rates), 1, cfg.post_kernel, padding=(cfg.post_kernel - 1) // 2))
        self.n = len(cfg.res_kernels)

    def forward(self, x):
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.silu(x))
            x = sum(self.resblocks[i * self.n + j](x) for j in range(self.n)) / self.n
        return torch.tanh(self.conv_post(F.silu(x)))


class Vocoder(nn.Module):
    def __init__(self, cin: int, depths, dims, head: HeadConfig, hidden=None):
        super().__init__()
        self.backbone = Backbone(cin, list(depths), list(dims), None if hidden is None else list(hidden))
        self.head = Head(head)

    def forward(self, mel):
        return self.head(self.backbone(mel))


def _count(sd: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(found) + 1 if found else 0


def vocoder_from_weights(sd: dict, dtype: torch.dtype) -> Vocoder:
    """The vocoder of weights in the release's names (no prefix); weight-norm names normalised."""
    sd = {k.replace("weight_g", "parametrizations.weight.original0").replace(
        "weight_v", "parametrizations.weight.original1"): v for k, v in sd.items()}
    stages = _count(sd, r"backbone\.stages\.(\d+)\.")
    depths = [_count(sd, rf"backbone\.stages\.{i}\.(\d+)\.") for i in range(stages)]
    dims = [int(sd[f"backbone.stages.{i}.0.dwconv.weight"].shape[0]) for i in range(stages)]
    hidden = [int(sd[f"backbone.stages.{i}.0.pwconv1.weight"].shape[0]) for i in range(stages)]
    ups = _count(sd, r"head\.ups\.(\d+)\.")
    up_w = [sd[f"head.ups.{i}.parametrizations.weight.original1"] for i in range(ups)]
    kernels = tuple(int(w.shape[-1]) for w in up_w)
    n_res = _count(sd, r"head\.resblocks\.(\d+)\.") // max(ups, 1)
    res_kernels = tuple(int(sd[f"head.resblocks.{j}.convs1.0.parametrizations.weight.original1"].shape[-1])
                        for j in range(n_res))
    pre = sd["head.conv_pre.parametrizations.weight.original1"]
    # the release's strides are half the kernels of its upsampling convs (kernel = 2 · stride)
    head = HeadConfig(mels=int(pre.shape[1]), channels=int(pre.shape[0]), rates=tuple(k // 2 for k in kernels),
                      kernels=kernels, res_kernels=res_kernels, pre_kernel=int(pre.shape[-1]),
                      post_kernel=int(sd["head.conv_post.parametrizations.weight.original1"].shape[-1]))
    if math.prod(head.rates) != HOP:
        raise ModelFileError(f"this ACE-Step vocoder upsamples {math.prod(head.rates)}× (kernels {kernels}); the "
                             f"release's upsamples {HOP}×")
    voc = Vocoder(int(sd["backbone.channel_layers.0.0.weight"].shape[1]), depths, dims, head, hidden)
    missing, unexpected = voc.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelFileError(f"the ACE-Step vocoder weights do not fit: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}")
    return voc.to(dtype).eval().requires_grad_(False)


# -- DCAE -------------------------------------------------------------------------------------------------

def dcae_config(sd: dict) -> dict:
    """diffusers ``AutoencoderDC`` config of weights in its names (no prefix)."""
    out: dict = {"in_channels": int(sd["encoder.conv_in.weight"].shape[1]),
                 "latent_channels": int(sd["encoder.conv_out.weight"].shape[0]),
                 "upsample_block_type": "interpolate", "downsample_block_type": "Conv",
                 "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu"}
    head_dim = None
    for part, blocks in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
        n = _count(sd, rf"{part}\.{blocks}\.(\d+)\.")
        types, widths, depths, scales = [], [], [], []
        for i in range(n):
            inner = {k for k in sd if k.startswith(f"{part}.{blocks}.{i}.")}
            layers = sorted({int(k.split(".")[3]) for k in inner})
            attn = any(".attn." in k for k in inner)
            types.append("EfficientViTBlock" if attn else "ResBlock")
            # the encoder's last layer of a level (but the last level's) is the downsampling conv; the decoder's
            # first (but the last level's) the upsampling one
            sampling = i < n - 1
            blocks_at = [j for j in layers if f"{part}.{blocks}.{i}.{j}.conv.weight" not in sd] if sampling else layers
            depths.append(len(blocks_at))
            first = blocks_at[0]
            key = (f"{part}.{blocks}.{i}.{first}.attn.to_q.weight" if attn
                   else f"{part}.{blocks}.{i}.{first}.conv1.weight")
            widths.append(int(sd[key].shape[0]))
            ms = _count(sd, rf"{part}\.{blocks}\.{i}\.{first}\.attn\.to_qkv_multiscale\.(\d+)\.")
            scales.append(tuple(int(sd[f"{part}.{blocks}.{i}.{first}.attn.to_qkv_multiscale.{m}.proj_in.weight"]
                                    .shape[-1]) for m in range(ms)))
            if attn and head_dim is None:
                head_dim = int(sd[f"{part}.{blocks}.{i}.{first}.attn.to_qkv_multiscale.0.proj_out.weight"].shape[1])
        out.update({f"{part}_block_types": types, f"{part}_block_out_channels": tuple(widths),
                    f"{part}_layers_per_block": tuple(depths), f"{part}_qkv_multiscales": tuple(scales)})
    out["attention_head_dim"] = head_dim or 32
    return out


def build_dcae(sd: dict, dtype: torch.dtype):
    from diffusers import AutoencoderDC

    from nodegraph_nodes.diffusion.checkpoint import _instantiate

    return _instantiate(AutoencoderDC, dcae_config(sd), sd, dtype, "ACE-Step music DCAE")


class MusicDcae(nn.Module):
    def __init__(self, dcae, vocoder):
        super().__init__()
        self.dcae, self.vocoder = dcae, vocoder


def build_music_dcae(sd: dict, dtype: torch.dtype) -> MusicDcae:
    """``sd`` with ``dcae.`` and ``vocoder.`` keys."""
    parts = {p: {k[len(p):]: v for k, v in sd.items() if k.startswith(p)} for p in ("dcae.", "vocoder.")}
    if not parts["dcae."] or not parts["vocoder."]:
        raise ModelFileError("the ACE-Step 1.0 VAE weights need dcae.* and vocoder.* keys")
    return MusicDcae(build_dcae(parts["dcae."], dtype), vocoder_from_weights(parts["vocoder."], dtype)).eval()


def mel_filters(n_freqs: int, n_mels: int = 128, f_min: float = 40.0, f_max: float = 16000.0,
                rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters ``[n_freqs, n_mels]`` (torchaudio's ``MelScale``
    with ``norm="slaney", mel_scale="slaney"``)."""
    def hz_to_mel(f):
        f = torch.as_tensor(f, dtype=torch.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + torch.log(f / 1000.0) / (math.log(6.4) / 27.0)
        return torch.where(f >= 1000.0, log, lin)

    def mel_to_hz(m):
        lin = (200.0 / 3) * m
        log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (m - 15.0))
        return torch.where(m >= 15.0, log, lin)

    freqs = torch.linspace(0, rate // 2, n_freqs, dtype=torch.float64)
    pts = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    diff = pts[1:] - pts[:-1]
    slopes = pts[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0)
    return (fb * (2.0 / (pts[2:n_mels + 2] - pts[:n_mels]))[None]).float()


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """``[N, T]`` → ``[N, 128, T / 512]`` log-mel frames (see the module docstring)."""
    n_fft = 2048
    y = F.pad(wave[:, None].float(), ((n_fft - HOP) // 2, (n_fft - HOP + 1) // 2), mode="reflect")[:, 0]
    spec = torch.stft(y, n_fft, hop_length=HOP, win_length=n_fft, window=torch.hann_window(n_fft, device=y.device),
                      center=False, normalized=False, onesided=True, return_complex=True)
    mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-6)
    mel = (mag.transpose(1, 2) @ mel_filters(mag.shape[1]).to(mag.device)).transpose(1, 2)
    return torch.log(torch.clamp(mel, min=1e-5))


@dataclass(frozen=True, eq=False)
class AceStep1Vae(ManagerOwned):
    """VAE: ACE-Step 1.0's music DCAE and vocoder (``handle``: a :class:`MusicDcae`), 44.1 kHz stereo."""

    handle: Any
    sample_rate: int = SAMPLE_RATE
    family: str = "ace_step_1.0"
    source: str = ""
    latent_channels: int = 8
    scale_factor: int = 1

    def decode_audio(self, ctx, latent: torch.Tensor) -> torch.Tensor:
        """Waveforms ``[B, 2, frames · 4096]`` of latents ``[B, 8, 16, frames]`` (divided by ``5 · std`` where that
        is above 1, as ComfyUI's VAEDecodeAudio)."""
        if latent.ndim != 4:
            raise ValueError(f"VAEDecodeAudio.samples: ACE-Step 1.0's VAE decodes latents [B, 8, 16, T]; this latent "
                             f"is {list(latent.shape)}")
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as vae, torch.inference_mode():
            dtype = next(vae.parameters()).dtype
            waves = []
            for item in latent.to(ctx.device, dtype):
                mel = vae.dcae.decode(item[None] / SCALE + SHIFT).sample[0]  # [2, 128, frames · 8]
                mel = (mel * 0.5 + 0.5) * (MEL_MAX - MEL_MIN) + MEL_MIN
                waves.append(vae.vocoder(mel)[:, 0])
        audio = torch.stack(waves).float().cpu()
        std = torch.std(audio, dim=[1, 2], keepdim=True) * 5.0  # ComfyUI's VAEDecodeAudio loudness limit
        std[std < 1.0] = 1.0
        return audio / std

    def encode_audio(self, ctx, waveform: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 8, 16, T / 4096]`` of stereo 44.1 kHz waveforms ``[B, 2, T]`` (mono is doubled)."""
        if waveform.shape[1] == 1:
            waveform = waveform.repeat(1, 2, 1)
        if waveform.shape[1] != 2:
            raise ValueError(f"VAEEncodeAudio.audio: {waveform.shape[1]} channels; ACE-Step 1.0's VAE takes stereo")
        pad = -waveform.shape[-1] % (8 * HOP)
        waveform = F.pad(waveform.float(), (0, pad))
        manager = ctx.service("models")
        with manager.use(self.handle, ctx.device) as vae, torch.inference_mode():
            dtype = next(vae.parameters()).dtype
            out = []
            for item in waveform.to(ctx.device):
                mel = (log_mel(item) - MEL_MIN) / (MEL_MAX - MEL_MIN)
                mel = (mel - 0.5) / 0.5
                latent = vae.dcae.encode(mel[None].to(dtype)).latent
                out.append((latent - SHIFT) * SCALE)
            return torch.cat(out).float().cpu()
