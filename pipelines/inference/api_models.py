"""The service's request and response shapes, and the strict parsing of a request body into them.

Bodies are parsed by pydantic's JSON parser straight from bytes: strict JSON only (no NaN or Infinity, no lone
surrogates, UTF-8), every field a string of bounded length, no unknown fields. A refusal names the fields at fault
and never echoes the input back (a 4 MB bad image used to come back as a 4 MB error).
"""
from __future__ import annotations

from typing import Annotated, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator

from pipelines.inference.guards import RequestRefused, excerpt

MAX_BATCH = 256
MAX_TITLE = 500
MAX_DESCRIPTION = 5000
MAX_IMAGE_BYTES = 2_000_000  # decoded
MAX_ERRORS = 10  # listed in one 422


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
BODY = TypeAdapter(ProductOrBatch)


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


def _where(loc) -> str:
    """('batch', 'products', 0, 'title') -> 'products[0].title'; the discriminator's tag is dropped."""
    parts = list(loc)[1:] if loc and loc[0] in ("product", "batch") else list(loc)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _error(e: dict) -> dict:
    item = {"field": _where(e["loc"]), "message": excerpt(e["msg"], 200), "type": e["type"]}
    if e["type"] not in ("json_invalid", "string_too_long") and isinstance(e.get("input"), (int, float, bool)):
        item["input"] = excerpt(e["input"])  # a short scalar says what was wrong; strings and objects are not echoed
    return item


def parse_products(body: bytes, max_batch: int = MAX_BATCH) -> tuple[list[Product], bool]:
    """(products, whether the body was a batch), or RequestRefused(422) naming each field at fault."""
    if not body.strip():
        raise RequestRefused(422, "empty body: send one product {\"title\": ...} or {\"products\": [...]}")
    try:
        parsed = BODY.validate_json(body)
    except ValidationError as e:
        errors = [_error(x) for x in e.errors(include_url=False, include_context=False)]
        first = errors[0]
        if first["type"] == "json_invalid":
            raise RequestRefused(422, f"body is not valid JSON (UTF-8, no NaN/Infinity, no lone surrogates): "
                                      f"{first['message']}") from None
        raise RequestRefused(422, f"invalid request: {first['field']}: {first['message']}"
                                  + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
                             errors=errors[:MAX_ERRORS]) from None
    if isinstance(parsed, Batch):
        if len(parsed.products) > max_batch:
            raise RequestRefused(422, f"invalid request: products: at most {max_batch} products per request")
        return parsed.products, True
    return [parsed], False


def openapi_components() -> tuple[dict, dict]:
    """(request body schema, component schemas) for the OpenAPI document: the body is parsed by hand (strictly),
    so FastAPI does not see its model."""
    schema = BODY.json_schema(ref_template="#/components/schemas/{model}")
    components = schema.pop("$defs", {})
    for model in (Result, BatchResult):
        extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components |= extra.pop("$defs", {}) | {model.__name__: extra}
    return schema, components
