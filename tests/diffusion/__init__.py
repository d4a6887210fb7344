"""Diffusion tests: tiny random-weight SD models through the nodes, against diffusers."""
