"""IP-Adapter: image prompts that steer a UNet through extra cross-attention on image tokens.

Files are diffusers' ``IPAdapterMixin.load_ip_adapter`` layout in one ``.safetensors``: ``image_proj.*``
(the image projection: IP-Adapter ``proj.weight``; Plus ``latents`` + resampler; Full ``proj.3.weight``)
and ``ip_adapter.<id>.to_k_ip.weight`` / ``.to_v_ip.weight`` for the UNet's cross-attention layers in
``unet.attn_processors`` order (ids 1, 3, 5 …). The projection is built by diffusers' own converter, the
attention by diffusers' ``IPAdapterAttnProcessor2_0``, so numerics are diffusers'.

The shared cached UNet is never changed for good: :class:`ImagePromptHook` (a sampling hook, see
:mod:`nodegraph_nodes.diffusion.sampler`) installs IP processors and the image projection for one sampling run,
under the UNet's lock, and puts the original processors, projection and config back on exit. Per step it
sets each adapter's scale to its weight inside its ``[start, end]`` range of the schedule and to 0 (no IP
attention at all: diffusers skips a zero scale) outside it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from nodegraph.models import ManagerOwned
from nodegraph_nodes.diffusion.files import ModelFileError, read_state_dict

KINDS = {"basic": "image_embeds", "plus": "penultimate_hidden_states", "full": "penultimate_hidden_states"}


class IPAdapterWeights(torch.nn.Module):
    """The adapter's modules: the image projection and one key/value pair per cross-attention layer."""

    def __init__(self, image_proj: torch.nn.Module, keys: list[torch.Tensor], values: list[torch.Tensor]):
        super().__init__()
        self.image_proj = image_proj
        self.to_k_ip = torch.nn.ModuleList(_linear(w) for w in keys)
        self.to_v_ip = torch.nn.ModuleList(_linear(w) for w in values)


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
    return layer


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter file holds, read from its shapes."""

    kind: str  # basic / plus / full
    embed_dim: int  # width of the CLIP vision features it takes
    cross_attention_dim: int  # width of the tokens it makes (= the UNet's cross-attention width)
    num_tokens: int  # image tokens per image
    layers: tuple[tuple[int, int], ...]  # (hidden, cross) of each to_k_ip, in layer order

    @property
    def feature(self) -> str:
        """The CLIP_VISION_OUTPUT field it takes."""
        return KINDS[self.kind]


def split_state_dict(sd: dict[str, torch.Tensor], name: str) -> tuple[dict, dict]:
    """``image_proj.*`` and ``ip_adapter.*`` parts, or a clear error."""
    proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    attn = {k[len("ip_adapter."):]: v for k, v in sd.items() if k.startswith("ip_adapter.")}
    if not proj or not attn:
        sample = ", ".join(sorted(sd)[:4]) or "no tensors"
        raise ModelFileError(f"{name} is not an IP-Adapter in diffusers' layout: it needs 'image_proj.*' and "
                             f"'ip_adapter.*' keys (found {sample}…). Convert a .bin adapter with diffusers' "
                             "load_ip_adapter and save its state dict as safetensors")
    return proj, attn


def describe(proj: dict, attn: dict, name: str) -> AdapterInfo:
    """The adapter's kind and dimensions, checking that its layers are complete and consistent."""
    if "proj.weight" in proj:
        kind, cross = "basic", proj["proj.weight"].shape[0] // 4
        embed, tokens = proj["proj.weight"].shape[1], 4
    elif "proj.3.weight" in proj:
        kind, cross, embed, tokens = "full", proj["proj.3.weight"].shape[0], proj["proj.0.weight"].shape[0], 257
    elif "latents" in proj and "proj_in.weight" in proj:
        kind, cross = "plus", proj["proj_out.weight"].shape[0]
        embed, tokens = proj["proj_in.weight"].shape[1], proj["latents"].shape[1]
    else:
        raise ModelFileError(f"{name}: unsupported IP-Adapter image projection (keys {sorted(proj)[:4]}…); "
                             "IP-Adapter, IP-Adapter Plus and Full Face are supported, FaceID is not")
    ids = sorted({int(k.split(".")[0]) for k in attn if k.split(".")[0].isdigit()})
    if not ids:
        raise ModelFileError(f"{name}: 'ip_adapter.*' holds no numbered layers ('ip_adapter.1.to_k_ip.weight' …)")
    layers = []
    for i in ids:
        k, v = attn.get(f"{i}.to_k_ip.weight"), attn.get(f"{i}.to_v_ip.weight")
        if k is None or v is None or k.shape != v.shape or k.ndim != 2:
            raise ModelFileError(f"{name}: layer {i} of 'ip_adapter' needs to_k_ip and to_v_ip weights of one shape")
        if k.shape[1] != cross:
            raise ModelFileError(f"{name}: layer {i} takes {k.shape[1]}-wide tokens but the image projection "
                                 f"makes {cross}-wide ones; the file is inconsistent")
        layers.append((int(k.shape[0]), int(k.shape[1])))
    return AdapterInfo(kind, int(embed), int(cross), int(tokens), tuple(layers))


def read_adapter(path: Path) -> tuple[dict, dict, AdapterInfo]:
    if path.suffix.lower() not in (".safetensors", ".sft"):
        raise ModelFileError(f"{path.name}: IP-Adapters are read from .safetensors files only")
    proj, attn = split_state_dict(read_state_dict(path), path.name)
    return proj, attn, describe(proj, attn, path.name)


def build_weights(proj: dict, attn: dict, info: AdapterInfo, dtype: torch.dtype, name: str) -> IPAdapterWeights:
    """The adapter as modules, its projection built by diffusers' converter."""
    from diffusers import UNet2DConditionModel

    try:
        # the converter only reads the state dict (``self`` is used for low_cpu_mem_usage alone)
        image_proj = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(
            None, proj, low_cpu_mem_usage=False)
    except Exception as exc:  # noqa: BLE001 - shape/key errors of a malformed file
        raise ModelFileError(f"{name}: the image projection cannot be built: {type(exc).__name__}: {exc}") from None
    ids = sorted({int(k.split(".")[0]) for k in attn if k.split(".")[0].isdigit()})
    weights = IPAdapterWeights(image_proj, [attn[f"{i}.to_k_ip.weight"] for i in ids],
                               [attn[f"{i}.to_v_ip.weight"] for i in ids])
    return weights.to(dtype).eval().requires_grad_(False)


@dataclass(frozen=True, eq=False)
class IPAdapterModel(ManagerOwned):
    """IPADAPTER: an adapter's weights (in the model manager) and what it expects."""

    handle: Any  # ManagedModel of IPAdapterWeights
    info: AdapterInfo
    name: str


def cross_attention_layers(unet) -> list[str]:
    """Names of the UNet's cross-attention processors, in ``attn_processors`` order."""
    return [n for n in unet.attn_processors if not n.endswith("attn1.processor") and "motion_modules" not in n]


def _attention_module(unet, processor_name: str):
    return unet.get_submodule(processor_name[: -len(".processor")])


def check_compatible(info: AdapterInfo, unet, adapter_name: str) -> None:
    """Raise a clear error when the adapter was made for another UNet."""
    names = cross_attention_layers(unet)
    cross = int(unet.config.cross_attention_dim if not isinstance(unet.config.cross_attention_dim, (list, tuple))
                else unet.config.cross_attention_dim[0])
    if info.cross_attention_dim != cross:
        raise ValueError(f"input 'ipadapter': {adapter_name} makes {info.cross_attention_dim}-wide image tokens but "
                         f"this model's cross-attention takes {cross}-wide ones; it was made for another model "
                         "family (SD 1.x: 768, SD 2.x: 1024, SDXL: 2048). Pick the adapter made for this checkpoint")
    if len(info.layers) != len(names):
        raise ValueError(f"input 'ipadapter': {adapter_name} has {len(info.layers)} attention layers but this model "
                         f"has {len(names)} cross-attention layers; pick the adapter made for this checkpoint")
    for (hidden, _), name in zip(info.layers, names):
        want = tuple(_attention_module(unet, name).to_k.weight.shape)
        if (hidden, cross) != want:
            raise ValueError(f"input 'ipadapter': {adapter_name} layer for {name[:-10]} is {hidden}×{cross} but "
                             f"the model's is {want[0]}×{want[1]}; pick the adapter made for this checkpoint")
    if unet.encoder_hid_proj is not None:
        raise ValueError("input 'model': this model already projects its encoder states (encoder_hid_proj); "
                         "IP-Adapter is supported on SD 1.x / 2.x / SDXL UNets")


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """One adapter applied with its image features (cond, and uncond for the negative rows)."""

    adapter: IPAdapterModel
    cond: torch.Tensor  # [num_images, …features]
    uncond: torch.Tensor  # same shape
    weight: float
    start: float
    end: float


@dataclass(frozen=True, eq=False)
class ImagePromptHook:
    """The sampling hook of a MODEL with image prompts (one or more adapters)."""

    prompts: tuple[ImagePrompt, ...]

    def adding(self, prompt: ImagePrompt) -> "ImagePromptHook":
        return ImagePromptHook(self.prompts + (prompt,))

    @contextmanager
    def attach(self, manager, unet, device) -> Iterator["_ImagePromptRun"]:
        from contextlib import ExitStack

        from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
        from diffusers.models.embeddings import MultiIPAdapterImageProjection

        with ExitStack() as stack:
            adapters = [stack.enter_context(manager.use(p.adapter.handle, device)) for p in self.prompts]
            for p in self.prompts:
                check_compatible(p.adapter.info, unet, p.adapter.name)
            dtype = unet.dtype
            originals = dict(unet.attn_processors)
            old_proj, old_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
            tokens = [p.adapter.info.num_tokens for p in self.prompts]
            processors = dict(originals)
            installed = []
            for index, name in enumerate(cross_attention_layers(unet)):
                hidden, cross = self.prompts[0].adapter.info.layers[index]
                with torch.device("meta"):
                    proc = IPAdapterAttnProcessor2_0(hidden_size=hidden, cross_attention_dim=cross,
                                                     num_tokens=tokens, scale=[0.0] * len(tokens))
                proc.to_k_ip = torch.nn.ModuleList(a.to_k_ip[index] for a in adapters)
                proc.to_v_ip = torch.nn.ModuleList(a.to_v_ip[index] for a in adapters)
                processors[name] = proc
                installed.append(proc)
            try:
                unet.set_attn_processor(dict(processors))
                # after the processors: a Plus projection has attention layers of its own
                unet.encoder_hid_proj = MultiIPAdapterImageProjection([a.image_proj for a in adapters])
                unet.config.encoder_hid_dim_type = "ip_image_proj"
                yield _ImagePromptRun(self.prompts, installed, device, dtype)
            finally:
                # projection first, so that attn_processors lists the UNet's own layers again
                unet.encoder_hid_proj = old_proj
                unet.config.encoder_hid_dim_type = old_type
                unet.set_attn_processor(dict(originals))


class _ImagePromptRun:
    """Per-run state: the installed processors and the image features on the device."""

    def __init__(self, prompts: tuple[ImagePrompt, ...], processors: list, device, dtype) -> None:
        self.prompts = prompts
        self.processors = processors
        self.cond = [p.cond.to(device, dtype).unsqueeze(0) for p in prompts]
        self.uncond = [p.uncond.to(device, dtype).unsqueeze(0) for p in prompts]

    def begin_step(self, in_range: Callable[[float, float], bool]) -> None:
        scales = [float(p.weight) if in_range(p.start, p.end) else 0.0 for p in self.prompts]
        for proc in self.processors:
            proc.scale = list(scales)

    def added_cond(self, negative: list[bool]) -> dict:
        embeds = []
        for cond, uncond in zip(self.cond, self.uncond):
            rows = [uncond if neg else cond for neg in negative]
            embeds.append(torch.cat(rows))
        return {"image_embeds": embeds}
