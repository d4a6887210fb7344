"""``GET /view`` and ``POST /upload/image``: files confined to the input, output and temp folders.

Names go through the same ``resolve_inside`` rule as the file nodes (no ``..``, no absolute paths, no
symlinks out, no NUL); the query string is decoded once by aiohttp and never again, so percent-encoded
tricks arrive as literal names. Uploads are streamed to a hidden temporary file with a byte cap,
verified as images by Pillow (decompression-bomb limit included) and only then given their name.
Pillow is the only decoder used; nothing is ever unpickled.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aiohttp import web

from ..context import Paths
from .comfy_errors import bad_request

FOLDER_TYPES = ("input", "output", "temp")
#: served as downloads, never rendered by the browser
UNSAFE_TYPES = {"text/html", "application/javascript", "text/javascript", "text/css", "image/svg+xml",
                "application/xhtml+xml", "text/xml", "application/xml"}


#: media types by extension, not left to the system's mime.types (which may lack or misname them); the
#: browser's <video>/<audio> elements need them, and aiohttp's FileResponse answers Range requests
#: (206 Partial Content, Content-Range, Accept-Ranges) so players can seek
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska",
               ".mov": "video/quicktime", ".avi": "video/x-msvideo", ".ogv": "video/ogg", ".flac": "audio/flac",
               ".wav": "audio/wav", ".mp3": "audio/mpeg", ".opus": "audio/ogg", ".ogg": "audio/ogg",
               ".m4a": "audio/mp4", ".aac": "audio/aac", ".webp": "image/webp", ".apng": "image/apng"}


class FileError(Exception):
    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(bad_request(self.type, self.message), status=self.status)


def folder_for(paths: Paths, kind: str) -> Path:
    from ..user_files import folder_of

    if kind not in FOLDER_TYPES:
        raise FileError(400, "bad_type", f"type must be one of {', '.join(FOLDER_TYPES)}, not {kind!r}")
    return Path(folder_of(paths, kind))


def _resolve(base: Path, relative: str, what: str, status: int) -> Path:
    from ..user_files import resolve_inside

    try:
        return resolve_inside(base, relative, what)
    except ValueError as exc:
        raise FileError(status, "bad_path", str(exc)) from None


def locate(paths: Paths, filename: str, kind: str, subfolder: str) -> Path:
    """The file ``/view`` serves; 400 for bad names/types, 403 for a subfolder leaving the folder."""
    from ..user_files import split_annotation

    if not filename:
        raise FileError(400, "bad_path", "give a filename")
    filename, kind = split_annotation(filename, kind or "output")
    if filename.startswith(("/", "\\")) or ".." in filename.replace("\\", "/").split("/"):
        raise FileError(400, "bad_path", f"filename {filename!r} must be a plain name inside the folder")
    base = folder_for(paths, kind)
    folder = base
    if subfolder:
        folder = _resolve(base, subfolder, f"{kind} folder", 403)
        if not folder.resolve().is_relative_to(base.resolve()):
            raise FileError(403, "bad_path", f"subfolder {subfolder!r} leads outside the {kind} folder")
    path = _resolve(folder, filename, f"{kind} folder", 400)
    if not path.resolve().is_relative_to(base.resolve()):
        raise FileError(403, "bad_path", f"{filename!r} leads outside the {kind} folder")
    if not path.is_file():
        raise FileError(404, "not_found", f"{kind}/{subfolder + '/' if subfolder else ''}{filename} "
                        "does not exist")
    return path


def render_preview(path: Path, preview: str | None, channel: str | None, max_pixels: int) -> tuple[bytes, str]:
    """Re-encode for ``preview=webp;90`` / ``jpeg;80`` or ``channel=rgb`` / ``a``."""
    from PIL import Image

    with Image.open(path) as img:
        if img.size[0] * img.size[1] > max_pixels:
            raise ValueError(f"the image is {img.size[0]}x{img.size[1]} pixels, over the limit of {max_pixels}")
        img.load()
        if channel == "rgb":
            img = img.convert("RGB")
        elif channel == "a":
            alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
            img = Image.merge("RGBA", (Image.new("L", img.size, 0),) * 3 + (alpha,))
        if preview:
            fmt, _, quality = preview.partition(";")
            fmt = "jpeg" if fmt.lower() == "jpeg" else "webp"
            try:
                q = max(1, min(100, int(quality))) if quality else 90
            except ValueError:
                q = 90
            if fmt == "jpeg" and img.mode != "RGB":
                img = img.convert("RGB")
            buffer = io.BytesIO()
            img.save(buffer, format=fmt.upper(), quality=q)
            return buffer.getvalue(), f"image/{fmt}"
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"


async def view(request: web.Request, paths: Paths, max_pixels: int) -> web.StreamResponse:
    q = request.query
    try:
        path = locate(paths, q.get("filename", ""), q.get("type", "output"), q.get("subfolder", ""))
    except FileError as exc:
        return exc.response()
    channel = q.get("channel")
    preview = q.get("preview")
    disposition = {"Content-Disposition": f'filename="{path.name}"'.replace("\r", "").replace("\n", ""),
                   "Content-Security-Policy": "sandbox"}
    if preview or channel in ("rgb", "a"):
        try:
            data, ctype = await asyncio.get_running_loop().run_in_executor(
                None, render_preview, path, preview, channel, max_pixels)
        except Exception as exc:  # not an image Pillow can read, or over the pixel limit
            return FileError(400, "bad_image", f"cannot render {path.name}: {exc}").response()
        return web.Response(body=data, content_type=ctype, headers=disposition)
    ctype = MEDIA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if ctype in UNSAFE_TYPES:
        ctype = "application/octet-stream"
    return web.FileResponse(path, headers={**disposition, "Content-Type": ctype})


# -- upload -----------------------------------------------------------------------------------------

@dataclass
class UploadForm:
    data_path: Path | None = None
    filename: str = ""
    kind: str = "input"
    subfolder: str = ""
    overwrite: bool = False
    #: ``/upload/mask``'s reference to the image the mask belongs to (a JSON text), when sent
    original_ref: str | None = None


async def read_upload(request: web.Request, scratch: Path, max_bytes: int) -> UploadForm:
    """Stream the multipart form; the file goes to a temp file in ``scratch`` (size-capped)."""
    if request.content_type != "multipart/form-data":
        raise FileError(415, "unsupported_media_type", "upload with multipart/form-data")
    form = UploadForm()
    reader = await request.multipart()
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        async for part in reader:
            name = part.name
            if name == "image" and part.filename is not None and form.data_path is None:
                form.filename = part.filename
                fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=scratch)
                form.data_path = Path(tmp)
                size = 0
                with os.fdopen(fd, "wb") as handle:
                    while chunk := await part.read_chunk(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            raise FileError(413, "upload_too_large",
                                            f"the upload exceeds the limit of {max_bytes} bytes")
                        handle.write(chunk)
            elif name in ("type", "subfolder", "overwrite", "original_ref"):
                value = (await part.read(decode=True))[:4096].decode("utf-8", "replace")
                if name == "original_ref":
                    form.original_ref = value
                elif name == "type":
                    form.kind = value or "input"
                elif name == "subfolder":
                    form.subfolder = value
                else:
                    form.overwrite = value.lower() in ("true", "1")
            else:
                await part.release()
    except BaseException:
        if form.data_path is not None:
            form.data_path.unlink(missing_ok=True)
        raise
    return form


def verify_image(path: Path, max_pixels: int) -> None:
    """Pillow must recognise the file as an image within the pixel limit, and it must verify."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise FileError(413, "image_too_large", f"the image is {width}x{height} pixels; the limit "
                                f"is {max_pixels} pixels")
            img.verify()
    except FileError:
        raise
    except Image.DecompressionBombError as exc:
        raise FileError(413, "image_too_large", f"the image is too large: {exc}") from None
    except Exception as exc:
        raise FileError(400, "bad_image", f"the upload is not a readable image: {exc}") from None


def verify_media(path: Path, max_pixels: int) -> None:
    """A video or audio upload: PyAV (FFmpeg's demuxers; nothing is decoded) must find an audio or video
    stream in it, its frames within the pixel limit."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video and not container.streams.audio:
                raise FileError(400, "bad_media", "the upload holds no video or audio stream")
            for stream in container.streams.video:
                width, height = stream.codec_context.width, stream.codec_context.height
                if width * height > max_pixels:
                    raise FileError(413, "image_too_large", f"the video is {width}x{height} pixels; the limit "
                                    f"is {max_pixels} pixels")
    except FileError:
        raise
    except Exception as exc:
        raise FileError(400, "bad_media", f"the upload is not a readable video or audio file: {exc}") from None


def store_upload(form: UploadForm, paths: Paths, max_pixels: int) -> dict[str, str]:
    """Verify and place the uploaded file; ComfyUI's naming (reuse identical, else ``stem (n).ext``).
    Images are checked by Pillow, video and audio files (LoadVideo's and LoadAudio's upload) by PyAV."""
    from ..user_files import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    assert form.data_path is not None
    base = folder_for(paths, form.kind)
    name = form.filename
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise FileError(400, "bad_path", f"upload file name {name!r} must be a plain file name")
    suffix = Path(name).suffix.lower()
    media = suffix in VIDEO_EXTENSIONS or suffix in AUDIO_EXTENSIONS
    if suffix not in IMAGE_EXTENSIONS and not media:
        raise FileError(400, "bad_path", f"upload file name {name!r} must end in an image, video or audio "
                        "extension")
    folder = _resolve(base, form.subfolder, f"{form.kind} folder", 400) if form.subfolder else base
    (verify_media if media else verify_image)(form.data_path, max_pixels)
    folder.mkdir(parents=True, exist_ok=True)
    target = _resolve(folder, name, f"{form.kind} folder", 400)
    data = form.data_path.read_bytes()
    if form.overwrite:
        if target.is_symlink():
            raise FileError(400, "bad_path", f"{name!r} is a symbolic link; refusing to overwrite it")
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    else:
        stem, ext = os.path.splitext(name)
        counter = 1
        while True:
            try:
                with open(target, "xb") as handle:  # exclusive: never replaces a file or a symlink
                    handle.write(data)
                break
            except FileExistsError:
                if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
                    break  # same name, same bytes: reuse
            target = _resolve(folder, f"{stem} ({counter}){ext}", f"{form.kind} folder", 400)
            counter += 1
    form.data_path.unlink(missing_ok=True)
    subfolder = form.subfolder.replace("\\", "/").strip("/")
    return {"name": target.name, "subfolder": subfolder, "type": form.kind}


async def upload_image(request: web.Request, paths: Paths, scratch: Path, max_bytes: int, max_pixels: int,
                       transform: Callable[[UploadForm], Path] | None = None) -> web.Response:
    """``scratch``: a private folder for partial uploads (never served). ``transform`` (run in a worker
    thread; ``/upload/mask``'s composition) makes the file that is stored in place of the uploaded one;
    its FileError is the answer."""
    form = None
    try:
        form = await read_upload(request, scratch, max_bytes)
        if form.data_path is None:
            raise FileError(400, "no_file", "the form has no 'image' file part")
        folder_for(paths, form.kind)  # bad type → 400 before any work
        loop = asyncio.get_running_loop()
        if transform is not None:
            made = await loop.run_in_executor(None, transform, form)
            uploaded, form.data_path = form.data_path, made
            uploaded.unlink(missing_ok=True)
        reply = await loop.run_in_executor(None, store_upload, form, paths, max_pixels)
        return web.json_response(reply)
    except FileError as exc:
        return exc.response()
    finally:
        if form is not None and form.data_path is not None:
            form.data_path.unlink(missing_ok=True)


def clear_previews(temp_dir: Path) -> int:
    """Delete the PreviewImage files (``*_temp_*.png``) a previous server left in the temp folder, as
    ComfyUI empties its temp folder at start. Other files, folders and symlinks are left alone."""
    removed = 0
    for entry in Path(temp_dir).glob("*_temp_*.png"):
        if entry.is_file() and not entry.is_symlink():
            entry.unlink()
            removed += 1
    return removed
