"""The socket types of the sampling core (ComfyUI's names): ``NOISE`` (initial noise source),
``GUIDER`` (model + conditioning + guidance), ``SAMPLER`` (an algorithm and its options) and ``SIGMAS``
(a 1-D float tensor of noise levels, highest first)."""

NOISE = "NOISE"
GUIDER = "GUIDER"
SAMPLER = "SAMPLER"
SIGMAS = "SIGMAS"
