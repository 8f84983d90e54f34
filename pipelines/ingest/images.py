"""Product images of an export: which files may be read, how much of them, and how they are opened.

A shop's export names each product's image by a local path (relative to the export folder), a `file://` URL or an
`http(s)://` URL. Exports are untrusted input, so every image goes through the rules below, in one place that
normalisation (image status), embedding (pipelines/features/store.py) and downloads (image_fetch.py) share:

- a local path or file:// URL must resolve, symlinks followed, inside the export folder: an id such as `../x`, an
  absolute path elsewhere or a link leading out gives the status "outside export" and is never opened;
- only regular files are read (a named pipe would block for ever, `/dev/zero` never ends), opened non-blocking and
  checked with fstat before a byte is read, and at most MAX_IMAGE_BYTES of them;
- the pixel count is read from the image header before decoding: above MAX_IMAGE_PIXELS the status is
  "too many pixels" (a 169-megapixel PNG decodes to 0.5 GB of RGB);
- an http(s) URL is never opened here: image_fetch.ImageFetcher downloads it into the content-addressed cache,
  and the cached file is then checked like any local one.

A refused image is a status with a reason (`kind: detail`), never an exception that stops the run.
"""
from __future__ import annotations

import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # a product photo is well under 5 MB; 20 MB leaves room for print-quality PNGs
MAX_IMAGE_PIXELS = 40_000_000  # 40 MP (e.g. 7300 x 5500): ~120 MB of RGB once decoded
MIN_IMAGE_SIDE = 8  # smaller is a placeholder or a tracking pixel, not a product photo
URL_SCHEMES = ("http", "https")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class ImageRefused(ValueError):
    """An image that is not read or not used; the message is its status (`kind: detail`)."""


class ImageCheck(NamedTuple):
    status: str  # "ok", "missing", or a refusal "kind: detail"
    path: str | None  # the local file to read (a downloaded URL's cache file), None unless status is "ok"


def is_missing_ref(ref) -> bool:
    """None, NaN (pandas' missing value) and blank strings name no image."""
    return ref is None or (isinstance(ref, float) and ref != ref) or not str(ref).strip()


def is_url(ref) -> bool:
    """An http(s) URL, to be downloaded rather than opened."""
    match = _SCHEME.match(str(ref))
    return bool(match) and match.group(1).lower() in URL_SCHEMES


def locate_image(ref, export_dir: str | Path) -> str | None:
    """Where the image named by `ref` is to be read from: a path inside `export_dir` (relative refs joined to it, so
    the path reads as the export's own), an http(s) URL unchanged, or None when `ref` names no image.
    Raises ImageRefused for a path leading outside the export folder, another URL scheme or a malformed ref."""
    if is_missing_ref(ref):
        return None
    ref = str(ref).strip()
    if "\x00" in ref:
        raise ImageRefused("invalid image path: NUL byte")
    match = _SCHEME.match(ref)
    scheme = match.group(1).lower() if match and len(match.group(1)) > 1 else ""  # 'C:' is a drive, not a scheme
    if scheme in URL_SCHEMES:
        return ref
    if scheme == "file":
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise ImageRefused(f"unsupported image URL: file URL on host {parts.netloc!r}")
        ref = unquote(parts.path)
    elif scheme:
        raise ImageRefused(f"unsupported image URL: scheme {scheme!r} (only {', '.join(URL_SCHEMES)}, file, or a path)")
    path = Path(export_dir) / ref  # an absolute ref stays absolute
    if not is_inside(path, export_dir):
        raise ImageRefused(f"outside export: {ref[:200]}")
    return str(path)


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Does `path`, with `..` and every symlink resolved, lie inside `folder` (also resolved)?"""
    try:
        real, root = os.path.realpath(path), os.path.realpath(folder)
    except (OSError, ValueError):
        return False
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def read_image_bytes(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Opened non-blocking and checked with fstat before any
    read, so a FIFO, a device or a directory is refused without waiting and without reading."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ImageRefused("missing") from None
    except (OSError, ValueError) as e:
        raise ImageRefused(f"missing: {getattr(e, 'strerror', None) or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRefused("not a regular file: a pipe, device, socket or directory is never read")
        if info.st_size > max_bytes:
            raise ImageRefused(f"too large: {info.st_size} bytes (limit {max_bytes})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageRefused(f"too large: more than {max_bytes} bytes (limit {max_bytes})")
    if not data:
        raise ImageRefused("corrupt: empty file")
    return data


def check_pixels(width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS):
    """ImageRefused when an image of this size would cost more memory to decode than a product photo may."""
    if width * height > max_pixels:
        raise ImageRefused(f"too many pixels: {width}x{height} ({width * height / 1e6:.1f} MP, limit "
                           f"{max_pixels / 1e6:.0f} MP)")


def open_image_header(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
    """A PIL image whose header is read but whose pixels are not decoded yet; refused above `max_pixels`."""
    from PIL import Image

    try:
        im = Image.open(BytesIO(data))
    except Image.DecompressionBombError as e:  # PIL's own guard, far above ours: still a pixel refusal
        raise ImageRefused(f"too many pixels: {e}"[:200]) from None
    except Exception as e:  # PIL raises many types for bytes that are no image
        raise ImageRefused(f"corrupt: {type(e).__name__}: {e}"[:200]) from None
    try:
        check_pixels(im.width, im.height, max_pixels)
    except ImageRefused:
        im.close()
        raise
    return im


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
    """The fully decoded PIL image of `data` (a truncated file fails here, per image), after the pixel guard."""
    im = open_image_header(data, max_pixels)
    try:
        im.load()
    except Exception as e:
        im.close()
        raise ImageRefused(f"corrupt: {type(e).__name__}: {e}"[:200]) from None
    if im.width < MIN_IMAGE_SIDE or im.height < MIN_IMAGE_SIDE:
        size = f"{im.width}x{im.height}"
        im.close()
        raise ImageRefused(f"corrupt: image too small ({size})")
    return im


def load_image(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS):
    """A local image file read and decoded under every guard above (the one way the pipeline opens an image)."""
    return decode_image(read_image_bytes(path, max_bytes), max_pixels)


def image_check(ref, fetcher=None) -> ImageCheck:
    """Is the image at `ref` (a located path or an http(s) URL) usable? URLs go through `fetcher`
    (image_fetch.ImageFetcher; None = nothing is downloaded) and are then checked as their cached file."""
    if is_missing_ref(ref):
        return ImageCheck("missing", None)
    path = str(ref)
    try:
        if is_url(path):
            if fetcher is None:
                raise ImageRefused("not fetched: no image cache given (network fetching off)")
            path = fetcher.fetch(path)
        load_image(path).close()
    except ImageRefused as e:
        return ImageCheck(str(e), None)
    return ImageCheck("ok", path)


def inspect_images(refs: list, workers: int = 4, fetcher=None) -> list[ImageCheck]:
    """image_check for every ref, in order. PIL decoding and downloads release the GIL, so threads overlap them."""
    if not refs:
        return []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda ref: image_check(ref, fetcher), refs, chunksize=64))
