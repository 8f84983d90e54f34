"""Images: confined to the export folder, regular files only, bounded bytes and pixels, and http(s) downloads into
the content-addressed cache, tested against a local HTTP server (127.0.0.1, started here)."""
import io
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from pipelines.features.store import image_keys
from pipelines.ingest.image_fetch import ImageFetcher
from pipelines.ingest.images import (MAX_IMAGE_BYTES, ImageRefused, image_check, inspect_images, load_image,
                                     locate_image, read_image_bytes)
from pipelines.ingest.normalize import normalize_platform, product_table
from pipelines.settings import SAMPLE_DIR

SAMPLE_JPEG = next((SAMPLE_DIR / "myntra" / "images").glob("*.jpg"))


def png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def export_dir(tmp_path):
    export = tmp_path / "export"
    (export / "images").mkdir(parents=True)
    shutil.copy(SAMPLE_JPEG, export / "images" / "good.jpg")
    shutil.copy(SAMPLE_JPEG, tmp_path / "secret.jpg")  # outside the export
    return export


def test_local_refs_are_confined_to_the_export(export_dir):
    assert locate_image("images/good.jpg", export_dir) == str(export_dir / "images" / "good.jpg")
    assert locate_image(f"file://{export_dir}/images/good.jpg", export_dir) == str(export_dir / "images" / "good.jpg")
    assert locate_image("", export_dir) is None and locate_image(float("nan"), export_dir) is None
    assert locate_image("https://shop.example/a.jpg", export_dir) == "https://shop.example/a.jpg"
    (export_dir / "images" / "link.jpg").symlink_to(export_dir.parent / "secret.jpg")
    for ref in ("../secret.jpg", "images/../../secret.jpg", str(export_dir.parent / "secret.jpg"),
                f"file://{export_dir.parent}/secret.jpg", "images/link.jpg", "/etc/passwd"):
        with pytest.raises(ImageRefused, match="^outside export"):
            locate_image(ref, export_dir)
    for ref, reason in (("ftp://host/a.jpg", "unsupported image URL"), ("file://other-host/a.jpg", "file URL on host"),
                        ("images/a\x00.jpg", "NUL byte")):
        with pytest.raises(ImageRefused, match=reason):
            locate_image(ref, export_dir)


def within(fn, *args, seconds: float = 5.0):
    """fn(*args), run in a thread that must finish in time (reading a FIFO would block for ever)."""
    out = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"{fn.__name__}{args} still blocked after {seconds} s"
    return out[0]


def test_special_files_are_refused_unread(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "folder.jpg").mkdir()
    for name in ("pipe.jpg", "zero.jpg", "folder.jpg"):
        assert within(image_check, tmp_path / name).status.startswith("not a regular file")
    keys, errors = within(image_keys, [str(fifo), str(tmp_path / "zero.jpg")])  # the embedding store's reader
    assert keys == ["", ""] and all(e.startswith("refused image: not a regular file") for e in errors)


def test_size_and_pixel_limits(tmp_path):
    big = tmp_path / "big.jpg"
    with big.open("wb") as f:  # sparse: no disk, no memory
        f.truncate(MAX_IMAGE_BYTES + 1)
    assert image_check(big).status.startswith("too large")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(8000, 6000, "1"))  # 48 MP in ~50 KB
    assert bomb.stat().st_size < 200_000
    assert image_check(bomb).status.startswith("too many pixels: 8000x6000")
    with pytest.raises(ImageRefused, match="too many pixels"):
        load_image(bomb)
    from pipelines.features.store import _ImageFiles  # the embedding DataLoader's dataset decodes through the guard
    dataset = _ImageFiles([str(bomb), str(SAMPLE_JPEG)], lambda im: im.size)
    assert dataset[0][1] is None and dataset[0][2].startswith("refused image: too many pixels: 8000x6000")
    assert dataset[1][1] == Image.open(SAMPLE_JPEG).size and dataset[1][2] is None
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "tiny.png").write_bytes(png_bytes(4, 4))
    (tmp_path / "cut.jpg").write_bytes(SAMPLE_JPEG.read_bytes()[:300])
    checks = inspect_images([str(SAMPLE_JPEG), None, str(tmp_path / "nothing.jpg"), str(tmp_path / "empty.jpg"),
                             str(tmp_path / "tiny.png"), str(tmp_path / "cut.jpg")])
    assert [c.status.split(":")[0] for c in checks] == ["ok", "missing", "missing", "corrupt", "corrupt", "corrupt"]
    assert checks[0].path == str(SAMPLE_JPEG) and all(c.path is None for c in checks[1:])
    assert read_image_bytes(SAMPLE_JPEG) == SAMPLE_JPEG.read_bytes()


@pytest.fixture
def hostile_myntra(tmp_path):
    """A Myntra export whose ids lead out of it, with a link out, a FIFO and a huge PNG as images."""
    export = tmp_path / "shop" / "myntra"
    (export / "images").mkdir(parents=True)
    shutil.copy(SAMPLE_JPEG, tmp_path / "outside.jpg")
    shutil.copy(SAMPLE_JPEG, export / "images" / "1.jpg")
    (export / "images" / "2.jpg").symlink_to(tmp_path / "outside.jpg")
    os.mkfifo(export / "images" / "3.jpg")
    (export / "images" / "4.jpg").write_bytes(png_bytes(8000, 6000, "1"))
    ids = ["1", "2", "3", "4", "../../../outside", str(tmp_path / "outside")]
    rows = [f"{pid},Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Tee {n}" for n, pid in enumerate(ids)]
    (export / "styles.csv").write_text("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,"
                                       "usage,productDisplayName\n" + "\n".join(rows) + "\n")
    return export


def test_normalize_never_reads_outside_the_export_nor_special_files(hostile_myntra):
    result = within(normalize_platform, "myntra", hostile_myntra, seconds=60)
    products = result.products.set_index("product_id")
    status = products["image_status"].str.split(":").str[0].to_dict()
    assert status == {"1": "ok", "2": "outside export", "3": "not a regular file", "4": "too many pixels",
                      "../../../outside": "outside export",  # images/../../../outside.jpg
                      str(hostile_myntra.parent.parent / "outside"): "missing"}  # images//tmp/...: still inside
    assert products["image_path"].notna().sum() == 1
    assert result.coverage["image_status"]["outside export"] == 2


class _Handler(BaseHTTPRequestHandler):
    good = SAMPLE_JPEG.read_bytes()
    hits: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/good.jpg":
            return self._send(self.good)
        if self.path == "/big.jpg":  # no Content-Length: the limit must stop the stream
            self.send_response(200)
            self.end_headers()
            chunk = b"\xff" * 65536
            for _ in range(MAX_IMAGE_BYTES // len(chunk) + 8):
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return
            return
        if self.path == "/announced-big.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_IMAGE_BYTES * 10))
            self.end_headers()
            return
        if self.path == "/slow.jpg":
            self.send_response(200)
            self.end_headers()
            for byte in self.good[:40]:
                time.sleep(0.1)
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
            return
        if self.path == "/bomb.png":
            return self._send(png_bytes(8000, 6000, "1"))
        if self.path.startswith("/redirect-"):
            target = {"/redirect-file": "file:///etc/passwd", "/redirect-ok": "/good.jpg"}[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        self.send_error(404)

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.hits = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_image_is_downloaded_once_into_the_content_cache(server, tmp_path):
    fetcher = ImageFetcher(tmp_path / "cache", timeout=5)
    first = fetcher.fetch(f"{server}/good.jpg")
    assert Path(first).read_bytes() == SAMPLE_JPEG.read_bytes()
    assert Path(first).name == __import__("hashlib").sha256(SAMPLE_JPEG.read_bytes()).hexdigest()
    assert fetcher.fetch(f"{server}/good.jpg") == first and _Handler.hits["/good.jpg"] == 1
    offline = ImageFetcher(tmp_path / "cache", network=False)
    assert offline.fetch(f"{server}/good.jpg") == first  # the cache still serves with the network off
    assert fetcher.fetch(f"{server}/redirect-ok") == first  # same bytes, same file
    with pytest.raises(ImageRefused, match="^not fetched: network fetching is off"):
        offline.fetch(f"{server}/bomb.png")
    assert "/bomb.png" not in _Handler.hits


@pytest.mark.parametrize("path, reason", [("/big.jpg", "too large: more than"),
                                          ("/announced-big.jpg", "too large: 209715200 bytes announced"),
                                          ("/slow.jpg", "fetch failed: timed out"),
                                          ("/bomb.png", "too many pixels: 8000x6000"),
                                          ("/redirect-file", "fetch failed: redirect to a 'file' URL refused"),
                                          ("/missing.jpg", "fetch failed: HTTP 404")])
def test_http_image_refusals(server, tmp_path, path, reason):
    fetcher = ImageFetcher(tmp_path / "cache", timeout=1.5)
    t0 = time.monotonic()
    with pytest.raises(ImageRefused, match="^" + reason.replace("(", r"\(")):
        fetcher.fetch(server + path)
    assert time.monotonic() - t0 < 4
    assert not list((tmp_path / "cache").rglob("sha256/*/*"))  # nothing refused is kept


def test_feed_with_http_images_normalises_to_cached_files(server, tmp_path):
    from pipelines.ingest.feeds import load_feed
    from pipelines.ingest.feeds.writers import shop_records

    (tmp_path / "feed.tsv").write_text("id\ttitle\timage_link\tproduct_type\n"
                                       f"a1\tGood\t{server}/good.jpg\tWomen > Dresses\n"
                                       f"a2\tBomb\t{server}/bomb.png\tWomen > Dresses\n"
                                       f"a3\tGone\t{server}/missing.jpg\tWomen > Dresses\n")
    feed = load_feed(tmp_path / "feed.tsv", shop="acme")
    records = [r | {"platform": "acme", "category_path": []} for r in shop_records(feed.adapter, feed.export_dir)]
    table = product_table(records, "acme", True, ImageFetcher(tmp_path / "cache", timeout=5))
    assert table["image_status"].str.split(":").str[0].tolist() == ["ok", "too many pixels", "fetch failed"]
    assert Path(table["image_path"][0]).parent.parent.parent == tmp_path / "cache"
    offline = product_table(records, "acme", True)
    assert offline["image_status"].str.startswith("not fetched").all() and offline["image_path"].isna().all()
