"""What the HTTP service refuses, and how early: limits, timeouts, the bearer token and the bind rule.

Requests are untrusted: every limit below is checked before the work it protects (a body above the size limit is
refused by its Content-Length or while it streams, before it is parsed; an image's pixel count is read from its
header before it is decoded), and every refusal is a short JSON message - never a traceback, never the input
echoed back beyond a short excerpt.

Slow clients cannot hold the service: a connection must deliver its request headers within `header_timeout_s`
(uvicorn has a keep-alive timeout but none for headers), a body within `body_timeout_s`, and a classification
must finish within `request_timeout_s` (504). uvicorn answers 503 beyond `max_connections`.

Authentication: an optional bearer token, compared in constant time; it is required to bind anywhere but
loopback (serving an open classifier to the network by accident is the failure this prevents).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
import threading
from dataclasses import dataclass

OPEN_PATHS = ("/health", "/ready")  # liveness and readiness answer without the token (load balancers probe them)
MIN_TOKEN_CHARS = 16


class ServiceConfigError(ValueError):
    """A service configuration that must not start (no token beyond loopback, a token too short)."""


class RequestRefused(Exception):
    """A request answered with `status` and a short message (no traceback, no input echo)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, errors: list | None = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.errors = status, message, headers or {}, errors


@dataclass(frozen=True)
class ServiceLimits:
    """Every bound the service enforces (README "security model")."""

    max_body_bytes: int = 8_000_000
    max_body_bytes_in_flight: int = 128_000_000  # all requests' bodies held at once (503 beyond)
    max_batch: int = 256  # products per request
    max_image_bytes: int = 2_000_000  # per image, after base64 decoding
    max_image_pixels: int = 16_000_000  # per image, read from the header before decoding (16 MP = 48 MB RGB)
    max_header_bytes: int = 32_768  # request line + headers (431 beyond)
    header_timeout_s: float = 5.0  # request line + headers, from connect (or from the previous response)
    body_timeout_s: float = 15.0  # the whole body, once the headers are in
    request_timeout_s: float = 30.0  # queueing + classification (504 after)
    keep_alive_s: int = 5  # idle keep-alive connections are closed after this
    max_connections: int = 512  # uvicorn limit_concurrency: 503 beyond
    max_items_in_flight: int = 2048  # products queued or being classified: 503 beyond
    max_images_in_flight: int = 256  # decoded (preprocessed) images waiting for stage 2: 503 beyond
    image_decoders: int = 2  # threads that decode images, off the event loop
    batch_size: int = 64  # stage-1 micro-batch: products per model call (every call has exactly this many rows)
    stage2_batch_size: int = 16  # stage-2 micro-batch: its work per product is heavier, its batches smaller
    batch_wait_ms: float = 2.0  # micro-batch: how long a worker waits for more products once it has one
    vector_cache_mb: int = 64  # per encoder: stage-2 vectors of recent products, in memory (LRU)

    def __post_init__(self):
        bad = [f"{k}={v!r}" for k, v in vars(self).items() if not isinstance(v, (int, float)) or v <= 0]
        if bad:
            raise ServiceConfigError(f"service limits must be positive numbers: {', '.join(bad)}")
        if self.max_body_bytes > self.max_body_bytes_in_flight:
            raise ServiceConfigError(f"max_body_bytes {self.max_body_bytes} exceeds max_body_bytes_in_flight "
                                     f"{self.max_body_bytes_in_flight}")
        if self.max_batch > self.max_items_in_flight:
            raise ServiceConfigError(f"max_batch {self.max_batch} exceeds max_items_in_flight "
                                     f"{self.max_items_in_flight}: such a request could never be admitted")


def excerpt(value, limit: int = 40) -> str:
    """A short, always encodable rendering of a piece of input for an error message."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def error_body(status: int, message: str, errors: list | None = None) -> bytes:
    doc = {"detail": excerpt(message, 300)}
    if errors:
        doc["errors"] = errors[:10]
    return json.dumps(doc, ensure_ascii=True).encode()


async def send_error(send, status: int, message: str, headers: dict | None = None) -> None:
    """A complete JSON error response on a raw ASGI `send` (for middleware, before any app code ran)."""
    body = error_body(status, message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---- token and bind rule ------------------------------------------------------------------------------------------

def is_loopback_host(host: str) -> bool:
    """Does binding to `host` keep the service on this machine? An IP literal is judged as such; a name must
    resolve to loopback addresses only ('0.0.0.0' and '::' are every interface, not loopback)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to start without a token beyond loopback, or with a token that is easy to guess or cannot travel in
    an HTTP header."""
    if token is not None:
        if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
            raise ServiceConfigError(f"the service token must be at least {MIN_TOKEN_CHARS} printable ASCII "
                                     "characters without spaces (e.g. `python -c 'import secrets; "
                                     "print(secrets.token_urlsafe(32))'`)")
        return
    if not is_loopback_host(host):
        raise ServiceConfigError(f"refusing to serve on {host!r} without authentication: beyond loopback a bearer "
                                 "token is required (set PRODCAT_TOKEN or pass --token), or bind to 127.0.0.1")


def bearer_ok(headers: list, token: str) -> bool:
    """Is the request's `Authorization: Bearer <token>` the expected one? Constant-time comparison."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, given = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token.encode("ascii"))
    return False


class BearerAuth:
    """ASGI middleware: 401 for requests without the token, except liveness/readiness probes."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.token is not None:
            authorised = bearer_ok(scope.get("headers") or [], self.token)
            scope.setdefault("state", {})["authorised"] = authorised
            if not authorised and scope.get("path") not in OPEN_PATHS:
                return await send_error(send, 401, "missing or invalid bearer token (Authorization: Bearer ...)",
                                        {"www-authenticate": "Bearer"})
        return await self.app(scope, receive, send)


# ---- bodies and headers -------------------------------------------------------------------------------------------

def declared_length(scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class Admission:
    """How much of one thing the service holds at once (products queued, decoded images, body bytes), bounded:
    `take(n)` admits n more or refuses the request (503, retry-after) saying what is held and the limit; `give(n)`
    returns them. Thread-safe: the batcher's worker threads give back what the event loop took."""

    def __init__(self, limit: int, what: str, headers: dict | None = None):
        self.limit, self.what, self.used = limit, what, 0
        self.headers = {"retry-after": "1", **(headers or {})}
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise RequestRefused(503, f"busy: {self.used} {self.what} (limit {self.limit}); retry shortly",
                                     dict(self.headers))
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class BodyBudget(Admission):
    """Bytes of request bodies held at once, across requests: 512 connections x 8 MB would be 4 GB. A refused body
    is not read to its end, so its connection cannot carry another request."""

    def __init__(self, limit: int):
        super().__init__(limit, "bytes of request bodies held", {"connection": "close"})


async def read_body(request, limits: ServiceLimits, budget: BodyBudget) -> bytes:
    """The whole body, refused by its declared length or as soon as the streamed bytes pass the limit (413), when
    the bodies held by all requests would pass theirs (503), or when it does not arrive within body_timeout_s (408).
    The caller gives len(body) back to `budget` once the request is answered."""
    declared = declared_length(request.scope)
    close = {"connection": "close"}  # the rest of the body is not read: this connection cannot carry another request
    if declared is not None and declared > limits.max_body_bytes:
        raise RequestRefused(413, f"request body larger than {limits.max_body_bytes} bytes", close)
    chunks, held = [], 0

    async def collect() -> bytes:
        nonlocal held
        async for chunk in request.stream():
            if held + len(chunk) > limits.max_body_bytes:
                raise RequestRefused(413, f"request body larger than {limits.max_body_bytes} bytes", close)
            budget.take(len(chunk))
            held += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    from starlette.requests import ClientDisconnect

    try:
        return await asyncio.wait_for(collect(), limits.body_timeout_s)
    except BaseException as e:
        budget.give(held)
        if isinstance(e, ClientDisconnect):
            raise RequestRefused(400, "client disconnected before the body was complete") from None
        if isinstance(e, asyncio.TimeoutError):
            raise RequestRefused(408, f"request body not received within {limits.body_timeout_s:g} s", close) from None
        raise


def _raw_response(status: bytes, message: bytes) -> bytes:
    return (b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, len(message), message))


HEADERS_LATE = _raw_response(b"408 Request Timeout", b"request headers not received in time")
HEADERS_TOO_LARGE = _raw_response(b"431 Request Header Fields Too Large", b"request headers too large")


def guarded_protocol(limits: ServiceLimits) -> type:
    """uvicorn's httptools protocol with a deadline and a size bound for the request line and headers: a
    connection that sends nothing, or headers byte by byte, is answered 408 and closed instead of being held for
    ever (uvicorn times out idle keep-alive connections only); one whose headers never end is answered 431."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedProtocol(HttpToolsProtocol):
        _header_timer = None
        _header_seen = 0

        def _arm(self):
            self._disarm()
            self._header_seen = 0
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._refuse, HEADERS_LATE)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _refuse(self, response: bytes):
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data):
            super().data_received(data)
            if self._header_timer is not None and not self.transport.is_closing():  # headers still incomplete
                self._header_seen += len(data)
                if self._header_seen > limits.max_header_bytes:
                    self._refuse(HEADERS_TOO_LARGE)

        def on_message_begin(self):
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self):
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return GuardedProtocol
