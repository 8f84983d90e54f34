"""HTTP service for two-stage classification (FastAPI): POST /classify, GET /taxonomy, GET /health; OpenAPI at /docs.

The models (stage 1, the champion, encoders, lexical space) are loaded once, before the app starts, and checked
against their manifests (a model trained with other encoders or another taxonomy is refused). Requests are
validated by pydantic (clear 422 messages); bodies above MAX_BODY_BYTES get 413 before they are parsed; a batch
holds at most MAX_BATCH products. Inference runs under one lock: the models use the machine's cores already, and
the embedding cache writer is not meant for concurrent use within one process.
"""
from __future__ import annotations

import base64
import binascii
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

MAX_BATCH = 256
MAX_TITLE = 500
MAX_DESCRIPTION = 5000
MAX_IMAGE_BYTES = 2_000_000  # decoded
MAX_BODY_BYTES = 8_000_000


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: str | None = Field(None, max_length=200, description="echoed back; the index is used when absent")
    title: str = Field(..., min_length=1, max_length=MAX_TITLE)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    brand: str = Field("", max_length=200, description="accepted for the record; the models read title + description")
    image_base64: str | None = Field(None, max_length=MAX_IMAGE_BYTES * 4 // 3 + 8,
                                     description="JPEG/PNG bytes, base64; only stage 2 looks at images")

    @field_validator("title")
    @classmethod
    def title_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("title is blank")
        return v


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    products: list[Product] = Field(..., min_length=1, max_length=MAX_BATCH)


def _kind(value) -> str:
    return "batch" if isinstance(value, dict) and "products" in value or isinstance(value, Batch) else "product"


# a callable discriminator: validation errors name the fields of the shape that was sent, not of both shapes
ProductOrBatch = Annotated[Union[Annotated[Product, Tag("product")], Annotated[Batch, Tag("batch")]],
                           Discriminator(_kind)]


class Result(BaseModel):
    product_id: str
    category_path: list[str] = Field(description="after abstention: cut back to the last confident ancestor")
    category: str
    confidence: dict[str, float | None] = Field(description="calibrated p(node | parent) per level of the full path")
    full_path: list[str] = Field(description="the model's best valid path before abstention")
    stage: int
    needs_review: bool
    image_used: bool


class BatchResult(BaseModel):
    results: list[Result]
    ms: float


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for bodies above the limit, by Content-Length or while streaming (chunked bodies)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": f"request body larger than {self.limit} bytes"}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)  # an HTTPException: FastAPI answers 413
            return message

        return await self.app(scope, limited, send)


def _decode_image(b64: str, index: int, folder: Path) -> Path:
    from io import BytesIO

    from PIL import Image

    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"products[{index}].image_base64 is not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise HTTPException(413, f"products[{index}] image is {len(data)} bytes; limit {MAX_IMAGE_BYTES}")
    try:
        with Image.open(BytesIO(data)) as im:
            im.load()
    except Exception as e:  # PIL raises many types for bad bytes
        raise HTTPException(422, f"products[{index}].image_base64 does not decode as an image: "
                                 f"{type(e).__name__}") from None
    path = folder / f"{index}.img"
    path.write_bytes(data)
    return path


def create_app(settings, model_dir=None, mode: str = "routed", classifier=None) -> FastAPI:
    """The app for the models and taxonomy of `settings`; the models load once at startup (or pass an already
    loaded `classifier`)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from pipelines.inference.two_stage import TwoStage
        from pipelines.taxonomy.tree import load_taxonomy

        app.state.clf = classifier or TwoStage.load(settings, model_dir, mode)
        app.state.taxonomy = load_taxonomy(settings.taxonomy_path)
        app.state.lock = threading.Lock()
        app.state.started = time.time()
        yield

    app = FastAPI(title="prodcat", version="1", lifespan=lifespan,
                  description="Two-stage product categorisation into the shared fashion taxonomy.")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.get("/health")
    def health(request: Request) -> dict:
        clf = request.app.state.clf
        return {"status": "ok", "mode": clf.mode, "threshold": clf.info.get("threshold"),
                "stage2": clf.info.get("stage2_source"), "stage2_strategy": clf.info.get("stage2_strategy"),
                "uptime_s": round(time.time() - request.app.state.started, 1)}

    @app.get("/taxonomy")
    def taxonomy(request: Request) -> dict:
        tax = request.app.state.taxonomy
        return {"name": tax.name, "version": tax.version, "levels": tax.levels,
                "nodes": [list(n) for n in tax.nodes], "leaves": [list(n) for n in tax.leaves()]}

    @app.post("/classify", response_model=Result | BatchResult)
    def classify(body: ProductOrBatch, request: Request):
        """One product (-> one result) or {"products": [...]} (-> {"results": [...]})."""
        products = body.products if isinstance(body, Batch) else [body]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            images = [_decode_image(p.image_base64, i, Path(tmp)) if p.image_base64 else None
                      for i, p in enumerate(products)]
            with request.app.state.lock:
                out = request.app.state.clf.classify([p.title for p in products],
                                                     [p.description for p in products],
                                                     [str(i) if i else None for i in images])
        results = [_result(p, i, row, images[i] is not None) for i, (p, (_, row)) in
                   enumerate(zip(products, out.iterrows()))]
        if isinstance(body, Batch):
            return BatchResult(results=results, ms=round(1000 * (time.perf_counter() - t0), 2))
        return results[0]

    return app


def _result(product: Product, index: int, row, image_given: bool) -> Result:
    import math

    conf = {k[len("conf_"):]: (None if math.isnan(float(v)) else round(float(v), 4))
            for k, v in row.items() if k.startswith("conf_")}
    path = list(row["category_path"])
    return Result(product_id=product.product_id or str(index), category_path=path, category=" > ".join(path),
                  confidence=conf, full_path=list(row["full_path"]), stage=int(row["stage"]),
                  needs_review=bool(row["needs_review"]), image_used=image_given and int(row["stage"]) == 2)


def serve(host: str, port: int, settings, model_dir=None, mode: str = "routed") -> int:
    """Load the models first (a missing champion or a manifest mismatch is a clear error and exit code 2 from the
    CLI, not a failed uvicorn startup), then serve until interrupted."""
    import uvicorn

    from pipelines.inference.two_stage import TwoStage

    classifier = TwoStage.load(settings, model_dir, mode)
    uvicorn.run(create_app(settings, classifier=classifier), host=host, port=port, log_level="warning")
    return 0
