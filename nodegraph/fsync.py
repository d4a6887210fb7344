"""Flushing a file or folder to disk by its path (``fsync``), for writes that must survive a power cut:
the job store's write-ahead log, a folder's entries after an atomic rename."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | Path) -> bool:
    """``fsync`` the file or folder at ``path``; False when it cannot be opened (gone; a folder on
    Windows, where the rename is atomic anyway). A failing ``fsync`` itself is ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return True
