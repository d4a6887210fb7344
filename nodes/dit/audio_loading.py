"""Where the loaders hand audio models: :func:`load_checkpoint` (CheckpointLoaderSimple) detects a Stable Audio
checkpoint (:mod:`.stable_audio`) from a file's keys and returns ``None`` for other files, so the image
families' detection goes on unchanged."""

from __future__ import annotations

from pathlib import Path


def load_checkpoint(path: Path, manager, device: str):
    """``(MODEL, CLIP, VAE)`` of an audio all-in-one file, else ``None``."""
    from nodegraph_nodes.dit import stable_audio
    from nodegraph_nodes.dit.loading import file_keys

    keys = file_keys(path, manager.allow_pickle)
    if stable_audio.is_checkpoint(keys):
        return stable_audio.load_checkpoint(path, manager, device)
    return None
