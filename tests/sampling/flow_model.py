"""A tiny flow-matching model for the sampling tests: diffusers' ``SD3Transformer2DModel`` with a
1-layer config and random weights, wrapped in a MODEL value that implements the sampling core's model
protocol (:mod:`nodegraph_nodes.sampling.model`) the way a transformer family does: flow sampling
(SD3 shift 3), the network timestep is ``sigma * 1000``, CONDITIONING entries are
``(states [1, tokens, 32], {"pooled_output": [1, 16]})``.

Two test nodes put it into graphs: ``TinyFlowModelLoader`` (MODEL) and ``TinyFlowConditioning``
(CONDITIONING from a seed).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from nodegraph.node import INT, Input, Node, Output
from nodegraph.types import CONDITIONING, MODEL

from nodegraph_nodes.sampling.model import CondPart, SamplingPatches
from nodegraph_nodes.sampling.model_sampling import ModelSampling, sd3_flow

JOINT_DIM, POOLED_DIM, CHANNELS = 32, 16, 4


def build_transformer():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=CHANNELS, num_layers=1, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=JOINT_DIM, caption_projection_dim=16,
                                pooled_projection_dim=POOLED_DIM, out_channels=CHANNELS, pos_embed_max_size=16).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # diffusers zero-inits the output layers; random weights make the test meaningful
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.15 if p.ndim > 1 else 0.05))
    return net


class FlowRunner:
    def __init__(self, net, device: str):
        self.net = net
        self.device = device
        self.dtype = next(net.parameters()).dtype
        self.timesteps: list[float] = []

    def begin_step(self, sigma, in_range) -> None:
        pass

    def __call__(self, x_in: torch.Tensor, timestep: torch.Tensor, parts: list[CondPart]) -> torch.Tensor:
        states = torch.cat([p.cond.expand(p.rows, -1, -1) for p in parts]).to(self.device, self.dtype)
        pooled = torch.cat([p.extras["pooled_output"].expand(p.rows, -1) for p in parts]).to(self.device, self.dtype)
        self.timesteps.append(float(timestep.reshape(-1)[0]))
        return self.net(hidden_states=x_in, encoder_hidden_states=states, pooled_projections=pooled,
                        timestep=timestep.to(self.device), return_dict=False)[0]


@dataclass(frozen=True, eq=False)
class TinyFlowModel:
    net: object
    model_sampling: ModelSampling = field(default_factory=lambda: sd3_flow(3.0))
    sampling_patches: SamplingPatches = SamplingPatches()
    latent_channels: int = CHANNELS
    runs: list = field(default_factory=list)

    def with_model_sampling(self, ms: ModelSampling) -> "TinyFlowModel":
        return dataclasses.replace(self, model_sampling=ms)

    def with_sampling_patches(self, patches: SamplingPatches) -> "TinyFlowModel":
        return dataclasses.replace(self, sampling_patches=patches)

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent

    def latent_preview(self, latent: torch.Tensor) -> torch.Tensor:
        return latent[0, :3].permute(1, 2, 0).clamp(0, 1).cpu()

    @contextmanager
    def open_runner(self, ctx, latent_shape: tuple):
        from nodegraph.cpu_threads import small_work_threads

        runner = FlowRunner(self.net.to(ctx.device), ctx.device)
        self.runs.append(runner)
        with torch.inference_mode(), small_work_threads(ctx.device, 1):
            yield runner


_NET: dict = {}


def tiny_flow_model() -> TinyFlowModel:
    if "net" not in _NET:
        _NET["net"] = build_transformer()
    return TinyFlowModel(_NET["net"])


def flow_conditioning(seed: int, tokens: int = 5) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, tokens, JOINT_DIM, generator=g), {"pooled_output": torch.randn(1, POOLED_DIM, generator=g)})]


class TinyFlowModelLoader(Node):
    """The tiny SD3-style flow transformer (test only)."""

    category = "_test"
    outputs = (Output(MODEL),)

    def execute(self) -> tuple:
        return (tiny_flow_model(),)


class TinyFlowConditioning(Node):
    """Random conditioning shaped for the tiny flow transformer (test only)."""

    category = "_test"
    seed = Input(INT, default=0, min=0, max=2 ** 31)
    outputs = (Output(CONDITIONING),)

    def execute(self, seed: int) -> tuple:
        return (flow_conditioning(seed),)


TEST_NODES = (TinyFlowModelLoader, TinyFlowConditioning)
