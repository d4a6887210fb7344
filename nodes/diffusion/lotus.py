"""Lotus-D depth (and normal) estimation models: an SD 2.x UNet (UNETLoader) that predicts the depth map's
latent from the image's latent in one step, and LotusConditioning, the text conditioning it was trained
with.

What ComfyUI does, as facts: a Lotus-D UNet is an SD 2.x UNet whose class embedding takes a 4-wide task
embedding — ``sin`` then ``cos`` of the task label ``(1, 0)`` — added to the time embedding on every call;
its sampling is ``IMG_TO_IMG``: the discrete SD schedule, the latent passed to the network unscaled and
the network's output taken as the denoised latent. The templates then run one Euler step from a first
sigma above the schedule's (SetFirstSigma 999 or 10000: timestep 999) with the noise disabled, so the
output is the UNet's prediction for the image latent at t = 999.

LotusConditioning is SD2's text-encoder output for the empty prompt (Lotus keeps its text encoder
frozen with a null prompt). ComfyUI inlines that tensor in its source; nodegraph computes it from an SD2
text encoder the user has and caches it (:mod:`.sd2_empty_prompt`): the node fails, naming the folders
it searched, where there is none.
"""

from __future__ import annotations

import math
from typing import Any

from nodegraph.context import Paths
from nodegraph.node import Node, Output
from nodegraph.types import CONDITIONING

from nodegraph_nodes.diffusion import sd2_empty_prompt as empty
from nodegraph_nodes.diffusion.files import ModelFileError
from nodegraph_nodes.sampling.model_sampling import ModelSampling, discrete, discrete_settings

#: Lotus-D's depth task embedding: sin and cos of the task label (1, 0)
LOTUS_DEPTH_TASK = (math.sin(1.0), math.sin(0.0), math.cos(1.0), math.cos(0.0))


def lotus_sampling(scheduler_config: dict | None) -> ModelSampling:
    """ComfyUI's IMG_TO_IMG sampling on the model's discrete schedule."""
    return discrete("img_to_img", **discrete_settings(scheduler_config))


class LotusConditioning(Node):
    """The conditioning Lotus depth models expect: SD2's text-encoder output for the empty prompt. Computed
    (once, then cached by the encoder's content) from an SD 2.x text encoder found in text_encoders/,
    checkpoints/ or a diffusers folder, where ComfyUI inlines the tensor."""

    category = "conditioning/lotus"
    outputs = (Output(CONDITIONING, "conditioning"),)

    @classmethod
    def fingerprint(cls, paths: Paths, **_: Any) -> Any:
        source = empty.find_sd2_text_encoder(paths)
        return None if source is None else empty.source_identity(source)

    def execute(self) -> tuple:
        paths = self.ctx.paths
        source = empty.find_sd2_text_encoder(paths)
        if source is None:
            raise ModelFileError(empty.not_found_message("LotusConditioning", paths))
        allow_pickle = self.ctx.service("models").allow_pickle
        embeds = empty.empty_prompt_embedding(source, paths, self.ctx.device, allow_pickle)
        return ([[embeds, {}]],)
