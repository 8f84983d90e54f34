"""HTTP service for two-stage classification (FastAPI): POST /classify, GET /taxonomy, GET|HEAD /health (liveness)
and /ready (readiness), GET /stats (batching and cache counters); OpenAPI at /docs.

The models (stage 1, the champion, encoders, lexical space) are loaded once, before the server starts, and checked
against their manifests (a model trained with other encoders or another taxonomy is refused). A request's products
are micro-batched with other requests' products (batching.py), images are decoded in a bounded pool off the event
loop (request_images.py) and stage-2 vectors come from an in-memory LRU over the read-only embedding store
(vector_cache.py): the service never writes to the store and never lists it per request.

Requests are untrusted (guards.py): bodies are parsed strictly (api_models.py), every limit is checked before the
work it protects, every refusal is a short JSON message, and beyond loopback a bearer token is required.

With a review folder (`prodcat serve --review DIR`) the same app serves the review page under /review
(review_routes.py, pipelines/review/): the same token, the same body limits.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from pipelines.inference.api_models import openapi_components, parse_products
from pipelines.inference.guards import (BearerAuth, BodyBudget, RequestRefused, ServiceLimits, check_bind,
                                        error_body, guarded_protocol, read_body)

log = logging.getLogger("prodcat.service")
SERVICE_THREADS = 1  # torch intra-op threads unless Settings.threads says otherwise: see serve()
PARSE_INLINE_BYTES = 64_000  # larger bodies are parsed in a thread: the event loop keeps answering meanwhile


def json_response(doc, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8"), status_code=status,
                    media_type="application/json", headers=headers)


def _refused(request: Request, exc: RequestRefused) -> Response:
    return Response(error_body(exc.status, exc.message, exc.errors), status_code=exc.status,
                    media_type="application/json", headers=exc.headers)


def _internal(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(error_body(500, f"internal error ({type(exc).__name__})"), status_code=500,
                    media_type="application/json")


async def _parsed(body: bytes, limits: ServiceLimits):
    if len(body) > PARSE_INLINE_BYTES:
        return await asyncio.get_running_loop().run_in_executor(None, parse_products, body, limits.max_batch)
    return parse_products(body, limits.max_batch)


async def _classified(state, products, batch: bool) -> list:
    """Images decoded, products through the micro-batcher; the request's share of the bounds released after."""
    n_images = sum(1 for p in products if p.image_base64)
    state.images.admitted.take(n_images)
    job = None
    try:
        images = await state.images.prepare(products, batch)
        job = state.batcher.submit(asyncio.get_running_loop(), products, images)
        return await job.future
    except BaseException:
        if job is not None:
            job.cancelled = True  # timed out or the client went away: its remaining products are skipped
        raise
    finally:
        state.images.admitted.give(n_images)


async def _classify_route(request: Request) -> Response:
    """One product (-> one result) or {"products": [...]} (-> {"results": [...], "ms": ...})."""
    state, limits = request.app.state, request.app.state.limits
    t0 = time.perf_counter()
    body = await read_body(request, limits, state.bodies)
    try:
        products, batch = await _parsed(body, limits)
        results = await asyncio.wait_for(_classified(state, products, batch), limits.request_timeout_s)
    except asyncio.TimeoutError:
        raise RequestRefused(504, f"classification did not finish within {limits.request_timeout_s:g} s; "
                                  "retry, or send fewer products per request") from None
    finally:
        state.bodies.give(len(body))
    if batch:
        return json_response({"results": results, "ms": round(1000 * (time.perf_counter() - t0), 2)})
    return json_response(results[0])


async def _health_route(request: Request) -> Response:
    """Liveness: the process answers. Details only to an authorised caller when a token is set."""
    state = request.app.state
    doc = {"status": "ok", "mode": state.clf.mode, "uptime_s": round(time.time() - state.started, 1)}
    if request.scope.get("state", {}).get("authorised", True):
        info = state.clf.info
        doc |= {"threshold": info.get("threshold"), "stage2": info.get("stage2_source"),
                "stage2_strategy": info.get("stage2_strategy")}
    return json_response(doc)


async def _ready_route(request: Request) -> Response:
    """Readiness: models loaded, both workers alive and room in the queue; 503 otherwise (a balancer backs off)."""
    state = request.app.state
    batcher = state.batcher
    doc = {"in_flight": batcher.in_flight, "limit": state.limits.max_items_in_flight}
    if not batcher.alive:
        return json_response(doc | {"status": "not ready", "reason": "a worker thread stopped"}, 503)
    if batcher.in_flight >= state.limits.max_items_in_flight:
        return json_response(doc | {"status": "not ready", "reason": "queue full"}, 503, {"retry-after": "1"})
    return json_response(doc | {"status": "ready"})


async def _taxonomy_route(request: Request) -> Response:
    tax = request.app.state.taxonomy
    return json_response({"name": tax.name, "version": tax.version, "levels": tax.levels,
                          "nodes": [list(n) for n in tax.nodes], "leaves": [list(n) for n in tax.leaves()]})


async def _stats_route(request: Request) -> Response:
    """Batching and cache counters (what `prodcat bench serve` reports)."""
    state = request.app.state
    s = state.batcher.stats
    busy = {k: round(v, 2) for k, v in s.busy_s.items()}
    return json_response({"batches": s.batches, "items": s.items, "busy_s": busy,
                          "skipped": s.skipped, "failed_batches": s.failed_batches,
                          "in_flight": state.batcher.in_flight, "images_in_flight": state.images.admitted.used,
                          "vectors": state.features.stats() if state.features is not None else {}})


def _lifespan(settings, model_dir, mode, classifier, limits):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from pipelines.inference.batching import MicroBatcher
        from pipelines.inference.request_images import ImageDecoder
        from pipelines.inference.two_stage import TwoStage
        from pipelines.inference.vector_cache import ServingFeatures
        from pipelines.taxonomy.tree import load_taxonomy

        clf = classifier or TwoStage.load(settings, model_dir, mode)
        features = (ServingFeatures(clf.features2, limits.vector_cache_mb, limits.stage2_batch_size)
                    if clf.features2 is not None else None)
        app.state.clf, app.state.features, app.state.limits = clf, features, limits
        app.state.taxonomy = load_taxonomy(settings.taxonomy_path)
        app.state.bodies = BodyBudget(limits.max_body_bytes_in_flight)
        app.state.images = ImageDecoder(limits, features.preprocess if features is not None else None)
        app.state.batcher = MicroBatcher(clf, features, limits)
        app.state.started = time.time()
        try:
            yield
        finally:
            app.state.batcher.close()
            app.state.images.close()

    return lifespan


def _openapi(app: FastAPI):
    """The generated document, with /classify's hand-parsed body and its responses described."""
    from fastapi.openapi.utils import get_openapi

    def build() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            body, components = openapi_components()
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            post = doc["paths"]["/classify"]["post"]
            post["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            one_of = [{"$ref": "#/components/schemas/Result"}, {"$ref": "#/components/schemas/BatchResult"}]
            post["responses"] = {"200": {"description": "one Result, or BatchResult for a batch",
                                         "content": {"application/json": {"schema": {"anyOf": one_of}}}}} | {
                str(code): {"description": why} for code, why in ERROR_CODES.items()}
            app.openapi_schema = doc
        return app.openapi_schema

    return build


ERROR_CODES = {401: "missing or invalid bearer token", 408: "body not received in time", 413: "body or image too "
               "large", 422: "invalid request (fields named)", 503: "busy: retry shortly", 504: "timed out"}


def create_app(settings, model_dir=None, mode: str = "routed", classifier=None, limits: ServiceLimits | None = None,
               token: str | None = None, review=None) -> FastAPI:
    """The app for the models and taxonomy of `settings`; the models load once at startup (or pass an already
    loaded `classifier`). With a `token`, every path but /health and /ready needs `Authorization: Bearer`. With
    `review` (review_routes.ReviewApp), the review page is mounted under /review."""
    limits = limits or ServiceLimits()
    app = FastAPI(title="prodcat", version="2", lifespan=_lifespan(settings, model_dir, mode, classifier, limits),
                  description="Two-stage product categorisation into the shared fashion taxonomy.")
    app.add_middleware(BearerAuth, token=token)
    app.add_exception_handler(RequestRefused, _refused)
    app.add_exception_handler(Exception, _internal)
    app.add_api_route("/classify", _classify_route, methods=["POST"], response_class=Response)
    app.add_api_route("/health", _health_route, methods=["GET", "HEAD"], response_class=Response)
    app.add_api_route("/ready", _ready_route, methods=["GET", "HEAD"], response_class=Response)
    app.add_api_route("/taxonomy", _taxonomy_route, methods=["GET"], response_class=Response)
    app.add_api_route("/stats", _stats_route, methods=["GET"], response_class=Response)
    if review is not None:
        from pipelines.inference.review_routes import add_review_routes

        add_review_routes(app, review, token)
    app.openapi = _openapi(app)
    return app


def uvicorn_config(app: FastAPI, host: str, port: int, limits: ServiceLimits):
    """uvicorn with the service's guards: header deadline and size bound, keep-alive timeout, connection limit."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          http=guarded_protocol(limits), timeout_keep_alive=limits.keep_alive_s,
                          limit_concurrency=limits.max_connections)


def open_review(settings, review_dir, review_db: str | None = None, review_export: tuple | None = None):
    """The review page's source (an onboard output folder, or a classify output with `review_export` = (platform,
    export dir)) and decision store (default: the work dir's)."""
    from pipelines.inference.review_routes import ReviewApp
    from pipelines.review.store import default_review_db
    from pipelines.taxonomy.tree import load_taxonomy

    return ReviewApp.open(review_dir, review_db or default_review_db(settings.work_dir),
                          load_taxonomy(settings.taxonomy_path), review_export)


def serve(host: str, port: int, settings, model_dir=None, mode: str = "routed", token: str | None = None,
          limits: ServiceLimits | None = None, review_dir=None, review_db: str | None = None,
          review_export: tuple | None = None) -> int:
    """Check the bind rule (a token beyond loopback) before anything loads, load the models (a missing champion or
    a manifest mismatch is a clear error and exit code 2 from the CLI, not a failed uvicorn startup), then serve
    until interrupted."""
    import uvicorn

    from pipelines.features.encoders import configure_threads
    from pipelines.inference.two_stage import TwoStage

    limits = limits or ServiceLimits()
    check_bind(host, token)
    review = open_review(settings, review_dir, review_db, review_export) if review_dir else None  # fails first
    classifier = TwoStage.load(settings, model_dir, mode)
    # the service's parallelism is across requests (two model workers, the event loop, image decoders): torch
    # spreading each small micro-batch over every core costs more in synchronisation than it saves (3 ms -> 30 ms
    # for a stage-1 batch on a busy 2-core machine)
    configure_threads(settings.threads if settings.threads > 0 else SERVICE_THREADS)
    app = create_app(settings, classifier=classifier, limits=limits, token=token, review=review)
    uvicorn.Server(uvicorn_config(app, host, port, limits)).run()
    return 0
