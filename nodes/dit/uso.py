"""USO style reference for Flux.1 (ComfyUI's USOStyleReference): ByteDance's SigLIP projector as a MODEL_PATCH
(``uso-flux1-projector-v1.safetensors`` in ``models/model_patches``) turns a SigLIP CLIP_VISION_OUTPUT into style
tokens that are put in front of the Flux text tokens.

File layout (under ``feature_embedder.``): for each of ``high`` / ``mid`` / ``low``: ``{x}_embedding_linear.0``
(a Linear over the token axis: SigLIP tokens → style tokens, then SiLU), ``{x}_layer_norm`` (LayerNorm over the
SigLIP width, eps 1e-5; absent: identity) and ``{x}_projection`` (SigLIP width → Flux width). Sizes from the
shapes (released: 729 → 64 tokens, 1152 → 3072).

Math (ComfyUI's, facts only): the inputs are SigLIP's layer outputs ``all_hidden_states[:, -20]`` (low),
``[:, -11]`` (mid) and the penultimate states (high); each ``h`` gives
``projection(norm(silu(linear(hᵀ))ᵀ))``; the tokens are ``[high, mid, low]`` (3 × style tokens). During sampling
they are prepended to the text tokens after Flux's ``context_embedder`` (``txt_in``), with position ids zero.
The CLIP vision output must come from a SigLIP model (CLIPVisionLoader with a SigLIP file): it needs every
layer's states.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch

from nodegraph.node import Input, Node, Output
from nodegraph.types import MODEL

from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.dit.model_patch import MODEL_PATCH, ModelPatchValue
from nodegraph_nodes.langvision.vision import CLIP_VISION_OUTPUT
from nodegraph_nodes.sampling.run_patches import ModelPatch, PatchRun

PREFIX = "feature_embedder."
BRANCHES = ("high", "mid", "low")


class _Branch(torch.nn.Module):
    def __init__(self, tokens: int, style: int, width: int, hidden: int, norm: bool):
        super().__init__()
        self.linear = torch.nn.Linear(tokens, style)
        self.norm = torch.nn.LayerNorm(width) if norm else torch.nn.Identity()
        self.projection = torch.nn.Linear(width, hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.silu(self.linear(h.transpose(1, 2))).transpose(1, 2)
        return self.projection(self.norm(e))


class UsoProjector(torch.nn.Module):
    """USO's SigLIP multi-layer projector (see the module docstring)."""

    def __init__(self, tokens: int, style: int, width: int, hidden: int, norm: bool):
        super().__init__()
        self.branches = torch.nn.ModuleDict({b: _Branch(tokens, style, width, hidden, norm) for b in BRANCHES})

    @property
    def tokens(self) -> int:
        return self.branches["high"].linear.in_features

    @property
    def width(self) -> int:
        return self.branches["high"].projection.in_features

    def forward(self, low: torch.Tensor, mid: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branches["high"](high), self.branches["mid"](mid), self.branches["low"](low)], dim=1)


def build_uso_projector(sd: dict) -> tuple[UsoProjector, dict]:
    """The projector and the file's weights renamed to its modules."""
    sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    try:
        style, tokens = sd["high_embedding_linear.0.weight"].shape
        hidden, width = sd["high_projection.weight"].shape
    except KeyError as exc:
        raise ModelFileError(f"a USO projector needs feature_embedder.{exc.args[0]}") from None
    norm = "high_layer_norm.weight" in sd
    net = UsoProjector(int(tokens), int(style), int(width), int(hidden), norm)
    names = {"_embedding_linear.0.": ".linear.", "_layer_norm.": ".norm.", "_projection.": ".projection."}
    out = {}
    for k, v in sd.items():
        branch, _, rest = k.partition("_")
        new = None
        for a, b in names.items():
            if ("_" + rest).startswith(a):
                new = f"branches.{branch}{b}{('_' + rest)[len(a):]}"
        if new is None or branch not in BRANCHES:
            raise ModelFileError(f"unexpected USO projector weight feature_embedder.{k}")
        out[new] = v
    return net, out


@dataclass(eq=False)
class UsoStylePatch(ModelPatch):
    """Prepends the USO style tokens to a Flux transformer's text tokens for one run."""

    key: ClassVar[str] = "uso_style"
    patch: ModelPatchValue
    layers: tuple  # (low, mid, high) SigLIP states [B, tokens, width]
    manager: Any
    where: str = "USOStyleReference"
    _tokens: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.key = f"uso_style:{id(self)}"  # several style references stack, as ComfyUI's post-input patches

    def tokens(self, net, device: str, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._tokens:
            p = next(net.parameters())
            with torch.inference_mode():
                out = net(*(h.to(p.device, p.dtype) for h in self.layers))
            self._tokens.clear()
            self._tokens[key] = out.to(device, dtype)
        return self._tokens[key]

    @contextmanager
    def attach(self, run: PatchRun) -> Iterator[None]:
        network = run.network
        embedder = getattr(network, "context_embedder", None)
        if embedder is None or not hasattr(network, "single_transformer_blocks") or not hasattr(network, "x_embedder"):
            raise TypeError(f"{self.where}: USO style references patch Flux.1 models; this model's network is "
                            f"{type(network).__name__}")
        device, dtype = run.runner.device, run.runner.dtype
        with ExitStack() as stack:
            net = stack.enter_context(self.manager.use(self.patch.handle, device))
            style = self.tokens(net, device, dtype)
            if style.shape[-1] != embedder.out_features:
                raise ValueError(f"{self.where}: {self.patch.name!r} gives {style.shape[-1]}-wide tokens but the "
                                 f"model's text tokens are {embedder.out_features} wide")

            def ids(module, args, kwargs):
                txt_ids = kwargs.get("txt_ids")
                if txt_ids is None:
                    raise ValueError(f"{self.where}: the Flux call has no txt_ids")
                zeros = torch.zeros(*txt_ids.shape[:-2], style.shape[1], txt_ids.shape[-1], dtype=txt_ids.dtype,
                                    device=txt_ids.device)
                return args, {**kwargs, "txt_ids": torch.cat([zeros, txt_ids], dim=-2)}

            def prepend(module, args, output):
                s = style
                if s.shape[0] != output.shape[0]:
                    if s.shape[0] != 1:
                        raise ValueError(f"{self.where}: {s.shape[0]} style images for {output.shape[0]} rows")
                    s = s.expand(output.shape[0], -1, -1)
                return torch.cat([s.to(output.dtype), output], dim=1)

            for handle in (network.register_forward_pre_hook(ids, with_kwargs=True),
                           embedder.register_forward_hook(prepend)):
                stack.callback(handle.remove)
            yield


class USOStyleReference(Node):
    """Add a USO style reference (ModelPatchLoader's USO projector, a SigLIP CLIPVisionEncode output) to a Flux.1
    model: its style tokens go in front of the text tokens."""

    category = "advanced/model_patches/flux"
    model = Input(MODEL)
    model_patch = Input(MODEL_PATCH)
    clip_vision_output = Input(CLIP_VISION_OUTPUT)
    outputs = (Output(MODEL),)

    def execute(self, model, model_patch, clip_vision_output) -> tuple:
        from nodegraph_nodes.sampling.model import require_sampling_model

        model = require_sampling_model(model, "USOStyleReference.model")
        if not isinstance(model_patch, ModelPatchValue) or model_patch.kind != "uso_siglip_projector":
            raise TypeError("input 'model_patch' of USOStyleReference must be a USO projector from ModelPatchLoader")
        states = getattr(clip_vision_output, "all_hidden_states", None)
        if states is None:
            raise ValueError("input 'clip_vision_output' of USOStyleReference has no per-layer states; encode the "
                             "image with a SigLIP model (CLIPVisionLoader with sigclip_vision_patch14_384)")
        if states.shape[1] < 20:
            raise ValueError(f"input 'clip_vision_output': USO reads SigLIP layer -20 but the model has "
                             f"{states.shape[1]} layers")
        net = model_patch.network()
        if states.shape[2] != net.tokens or states.shape[3] != net.width:
            raise ValueError(f"input 'clip_vision_output': SigLIP states are {tuple(states.shape[2:])} (tokens, width) "
                             f"but {model_patch.name!r} takes ({net.tokens}, {net.width})")
        layers = (states[:, -20], states[:, -11], clip_vision_output.penultimate_hidden_states)
        patch = UsoStylePatch(model_patch, layers, self.ctx.service("models"))
        return (model.with_sampling_patches(model.sampling_patches.with_model_patch(patch)),)
