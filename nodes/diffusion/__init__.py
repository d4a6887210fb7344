"""Diffusion helpers behind the diffusion nodes (loaders, text, conditioning, latent, sampling).

No node classes live here (the registry imports this package's ``__init__`` only): checkpoint reading
and conversion, model-family detection, CLIP tokenizing/encoding with prompt weights, scheduler
mapping, the sampling loop and latent previews are in the submodules.
"""
