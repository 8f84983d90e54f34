"""http(s) product images, downloaded once into a content-addressed cache under the work dir.

    fetcher = ImageFetcher(settings.work("images"), network=True)
    path = fetcher.fetch("https://shop.example/img/123.jpg")   # a local file; ImageRefused with the status if not

Layout: `<cache>/sha256/<2 hex>/<sha256 of the bytes>` holds each distinct image once; `<cache>/urls/<sha256 of the
URL>` holds the content hash a URL gave, so a URL is downloaded once and two URLs serving the same bytes share one
file. Files are written atomically (pipelines/files.py): a killed download leaves no partial image.

A download is bounded: `timeout` seconds for the whole transfer (a server trickling bytes is cut off too), at most
`max_bytes` (stopped while streaming, and refused up front by Content-Length), no compressed transfer (a gzip bomb
would inflate past the limit between two checks), the image header's pixel count checked before the bytes enter the
cache, and redirects followed only to http/https (a redirect to file:// or another scheme is refused). With
`network=False` nothing is downloaded: only images already in the cache are served.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pipelines.files import atomic_write_bytes
from pipelines.ingest.images import (MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, URL_SCHEMES, ImageRefused,
                                     open_image_header)

FETCH_TIMEOUT = 10.0  # seconds for one whole download, redirects included
MAX_REDIRECTS = 5


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ImageFetcher:
    """Downloads http(s) images into `cache_dir` (see the module docstring); `network=False` turns fetching off."""
    cache_dir: Path
    network: bool = True
    timeout: float = FETCH_TIMEOUT
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    max_redirects: int = MAX_REDIRECTS

    def content_path(self, digest: str) -> Path:
        return Path(self.cache_dir) / "sha256" / digest[:2] / digest

    def _url_entry(self, url: str) -> Path:
        return Path(self.cache_dir) / "urls" / _sha256(url.encode("utf-8", "surrogatepass"))

    def cached(self, url: str) -> Path | None:
        """The cache file a URL was downloaded to before, if it is still there."""
        try:
            digest = self._url_entry(url).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        path = self.content_path(digest) if len(digest) == 64 else None
        return path if path is not None and path.is_file() else None

    def fetch(self, url: str) -> str:
        """The local cache file holding the image at `url`, downloading it if the cache lacks it.
        Raises ImageRefused ("not fetched", "fetch failed", "too large", "too many pixels", ...)."""
        hit = self.cached(url)
        if hit is not None:
            return str(hit)
        if not self.network:
            raise ImageRefused("not fetched: network fetching is off and the image is not in the cache")
        data = self.download(url)
        open_image_header(data, self.max_pixels).close()  # decompression-bomb guard before the bytes are kept
        digest = _sha256(data)
        target = self.content_path(digest)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        entry = self._url_entry(url)
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(entry, digest.encode())
        return str(target)

    def download(self, url: str) -> bytes:
        """The body at `url`, following at most `max_redirects` redirects, all within http/https."""
        import httpx

        deadline = time.monotonic() + self.timeout
        try:
            with httpx.Client(follow_redirects=False, timeout=self.timeout, trust_env=False,
                              headers={"Accept-Encoding": "identity"}) as client:
                for _ in range(self.max_redirects + 1):
                    _check_scheme(url)
                    with client.stream("GET", url) as response:
                        if response.is_redirect:
                            url = urljoin(url, response.headers.get("location", ""))
                            continue
                        return self._body(response, deadline)
        except httpx.TimeoutException:
            raise ImageRefused(f"fetch failed: timed out (limit {self.timeout:g} s)") from None
        except httpx.HTTPError as e:
            raise ImageRefused(f"fetch failed: {type(e).__name__}: {e}"[:200]) from None
        raise ImageRefused(f"fetch failed: more than {self.max_redirects} redirects")

    def _body(self, response, deadline: float) -> bytes:
        if response.status_code != 200:
            raise ImageRefused(f"fetch failed: HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageRefused(f"too large: {declared} bytes announced (limit {self.max_bytes})")
        chunks, size = [], 0
        for chunk in response.iter_raw():  # as received: a chunk size would wait for a trickling server
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageRefused(f"too large: more than {self.max_bytes} bytes (limit {self.max_bytes})")
            if time.monotonic() > deadline:
                raise ImageRefused(f"fetch failed: timed out (limit {self.timeout:g} s)")
            chunks.append(chunk)
        if not size:
            raise ImageRefused("corrupt: empty download")
        return b"".join(chunks)


def _check_scheme(url: str):
    scheme = urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ImageRefused(f"fetch failed: redirect to a {scheme or 'relative'!r} URL refused (only http, https)")
