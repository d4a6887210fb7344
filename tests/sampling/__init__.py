"""Sampling tests: schedulers, samplers and model sampling against ComfyUI's numbers, on tiny models."""
