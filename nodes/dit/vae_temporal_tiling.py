"""Temporal tiling for decoding video latents (VAEDecodeTiled on a 5-D latent: Wan 2.1 / 2.2, HunyuanVideo 1.5
VAEs).

A long clip's latent ``[B, C, T, h, w]`` is decoded ``temporal_size`` pixel frames (``tile_t`` latent frames) at
a time and each chunk's frames are written straight into the output IMAGE batch on the host, so the device holds
one chunk's activations at a time and the host one copy of the result (an untiled decode keeps the whole clip on
the device and makes copies of it while converting).

Two ways, by what the VAE offers:

* **streamed (exact)** — Wan's causal VAEs (diffusers ``AutoencoderKLWan`` / ``AutoencoderKLQwenImage``) decode
  one latent frame at a time with a cache of the previous frames' features; the chunks are cut from that loop
  with the cache carried over, so the frames equal the untiled decode and ``temporal_overlap`` is not needed
  (ignored). Used when no spatial tiling is asked for (``tile_size`` at least the frame size).
* **cross-faded chunks (ComfyUI's way)** — otherwise each chunk (overlapping by ``temporal_overlap`` frames) is
  decoded on its own, with the VAE's spatial tiling (diffusers ``enable_tiling``: ``tile_size`` / ``overlap``),
  and blended with linear cross-fade weights over the overlaps. The VAEs are causal in time, so the frames
  before the first overlap equal the untiled decode; later chunks start without the earlier frames' context and
  approximate it.

Facts (ComfyUI's ``VAEDecodeTiled``): ``temporal_size`` and ``temporal_overlap`` are in pixel frames; with a
temporal compression ``r`` (4 for Wan) they become ``max(2, temporal_size // r)`` latent frames and
``max(1, min(tile_t // 2, temporal_overlap // r))``; ``overlap`` is cut to ``tile_size // 4`` and
``temporal_overlap`` halved when they are too large. A chunk starting at latent frame ``s`` gives
``1 + r · (n - 1)`` frames placed from pixel frame ``r · s`` (its first latent frame decodes as a single frame,
the last of the ``r`` it stands for).
"""

from __future__ import annotations

import inspect

import torch


def chunk_starts(frames: int, tile: int, overlap: int) -> list[int]:
    """Start latent frames of the chunks covering ``frames`` latent frames (``tile`` long, ``overlap`` shared;
    the last chunk ends at the end)."""
    if frames <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, frames - tile, step))
    starts.append(frames - tile)
    return starts


def latent_tiles(temporal_size: int, temporal_overlap: int, ratio: int) -> tuple[int, int]:
    """ComfyUI's conversion of the pixel-frame sizes to latent frames."""
    if temporal_size < temporal_overlap * 2:
        temporal_overlap //= 2
    tile = max(2, temporal_size // ratio)
    return tile, max(1, min(tile // 2, temporal_overlap // ratio))


def _weights(n: int, head: int, tail: int) -> torch.Tensor:
    """Per-frame weights of a chunk of ``n`` frames: ramps up over its first ``head`` frames and down over its
    last ``tail`` (a linear cross-fade with the neighbours' opposite ramps)."""
    w = torch.ones(n)
    if head > 0:
        w[:head] = torch.linspace(0, 1, head + 2)[1:-1]
    if tail > 0:
        w[n - tail:] = torch.minimum(w[n - tail:], torch.linspace(1, 0, tail + 2)[1:-1])
    return w


def _decode_chunk(module, z: torch.Tensor) -> torch.Tensor:
    """One chunk ``[1, C, n, h, w]`` → frames ``[F, H, W, 3]`` in 0..1 (float32, on the host)."""
    out = module.decode(z, return_dict=False)[0]
    return (out.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def decode_tiled(ctx, vae, latent: torch.Tensor, tile_size: int, overlap: int, temporal_size: int,
                 temporal_overlap: int, where: str = "VAEDecodeTiled") -> torch.Tensor:
    """The IMAGE batch ``[B · F, H, W, 3]`` of video latent ``latent`` decoded in temporal chunks."""
    from nodegraph_nodes.dit.qwen_image import ImageVae

    manager = ctx.service("models")
    with manager.use(vae.handle, ctx.device) as module, torch.inference_mode():
        if not isinstance(module, ImageVae):
            raise ValueError(f"{where}: a 5-D video latent needs a video VAE (Wan); this VAE is {type(module).__name__}")
        inner = module.vae
        ratio = int(getattr(inner.config, "scale_factor_temporal", 4))
        spatial = int(getattr(inner.config, "scale_factor_spatial", vae.scale_factor))
        tile, tile_overlap = latent_tiles(temporal_size, temporal_overlap, ratio)
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        dtype = next(module.parameters()).dtype
        b, _, frames, h, w = latent.shape
        tiling = hasattr(inner, "enable_tiling") and tile_size < max(h, w) * spatial
        if tiling:
            _enable_spatial_tiling(inner, tile_size, overlap, spatial)
        try:
            if not tiling and streamable(inner):
                videos = [_stream_video(ctx, inner, latent[i:i + 1].to(dtype), tile, ratio) for i in range(b)]
            else:
                videos = [_decode_video(ctx, module, latent[i:i + 1].to(dtype), tile, tile_overlap, ratio)
                          for i in range(b)]
        finally:
            if tiling:
                inner.disable_tiling()
    return torch.cat(videos) if len(videos) > 1 else videos[0]


def _enable_spatial_tiling(inner, tile_size: int, overlap: int, spatial: int) -> None:
    """diffusers' spatial tiling of ``inner`` with ``tile_size`` pixel tiles overlapping by ``overlap``: Wan's VAEs
    take strides, HunyuanVideo 1.5's the latent tile size and the overlap as a share of the tile."""
    params = inspect.signature(inner.enable_tiling).parameters
    kwargs = {"tile_sample_min_height": tile_size, "tile_sample_min_width": tile_size}
    if "tile_sample_stride_height" in params:
        stride = max(spatial, tile_size - overlap)
        kwargs.update(tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    else:
        latent = max(1, tile_size // spatial)
        kwargs.update(tile_latent_min_height=latent, tile_latent_min_width=latent,
                      tile_overlap_factor=max(overlap, spatial) / tile_size)
    inner.enable_tiling(**{k: v for k, v in kwargs.items() if k in params})


def _decode_video(ctx, module, z: torch.Tensor, tile: int, overlap: int, ratio: int) -> torch.Tensor:
    frames = z.shape[2]
    starts = chunk_starts(frames, tile, overlap)
    total = 1 + ratio * (frames - 1)
    out = None
    weight = torch.zeros(total)
    spans = [(ratio * s, ratio * (s + min(tile, frames - s) - 1)) for s in starts]  # pixel frames, inclusive
    for k, s in enumerate(starts):
        ctx.check_interrupted()
        n = min(tile, frames - s)
        chunk = _decode_chunk(module, z[:, :, s:s + n].to(ctx.device))
        first, last = spans[k]
        if chunk.shape[0] != last - first + 1:
            raise ValueError(f"VAEDecodeTiled: a chunk of {n} latent frames decoded to {chunk.shape[0]} frames, "
                             f"not {last - first + 1}")
        head = spans[k - 1][1] - first + 1 if k > 0 else 0
        tail = last - spans[k + 1][0] + 1 if k + 1 < len(spans) else 0
        wk = _weights(chunk.shape[0], max(0, head), max(0, tail))
        if out is None:
            out = torch.zeros((total, *chunk.shape[1:]))
        out[first:last + 1].add_(chunk * wk[:, None, None, None])
        weight[first:last + 1] += wk
        del chunk
    out.div_(weight[:, None, None, None])
    return out


def streamable(inner) -> bool:
    """Whether the VAE decodes frame by frame with a feature cache this module can drive (diffusers' Wan VAEs)."""
    return all(hasattr(inner, name) for name in ("clear_cache", "post_quant_conv", "decoder")) and \
        "feat_cache" in inspect.signature(inner.decoder.forward).parameters


def _stream_video(ctx, inner, z: torch.Tensor, tile: int, ratio: int) -> torch.Tensor:
    """diffusers' frame-by-frame causal decode (``AutoencoderKLWan._decode``) cut into chunks of ``tile`` latent
    frames, each moved to the output on the host as it is done: the untiled frames, one chunk on the device."""
    frames = z.shape[2]
    first_chunk = "first_chunk" in inspect.signature(inner.decoder.forward).parameters
    patch = getattr(inner.config, "patch_size", None)
    out = None
    written = 0
    inner.clear_cache()
    try:
        x = inner.post_quant_conv(z.to(ctx.device))
        for start in range(0, frames, tile):
            ctx.check_interrupted()
            parts = []
            for i in range(start, min(frames, start + tile)):
                inner._conv_idx = [0]
                extra = {"first_chunk": True} if i == 0 and first_chunk else {}
                parts.append(inner.decoder(x[:, :, i:i + 1], feat_cache=inner._feat_map, feat_idx=inner._conv_idx,
                                           **extra))
            chunk = torch.cat(parts, 2)
            del parts
            if patch is not None:
                from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

                chunk = unpatchify(chunk, patch_size=patch)
            chunk = (chunk.clamp(-1, 1)[0].float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).cpu()
            if out is None:
                out = torch.empty((1 + ratio * (frames - 1), *chunk.shape[1:]))
            out[written:written + chunk.shape[0]] = chunk
            written += chunk.shape[0]
            del chunk
    finally:
        inner.clear_cache()
    if written != out.shape[0]:
        raise ValueError(f"VAEDecodeTiled: the VAE gave {written} frames for {frames} latent frames, not {out.shape[0]}")
    return out
