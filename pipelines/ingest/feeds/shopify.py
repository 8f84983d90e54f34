"""Shopify's product CSV export: rows of one Handle are one product group.

    Handle,Title,Body (HTML),Vendor,Product Category,Type,Tags,...,Variant SKU,...,Image Src,Image Position,...

Shopify writes a product as several rows sharing its Handle: the first carries the product's fields (Title, Body
(HTML), Vendor, Type, ...) and its first variant; each further variant has a row of its own (options, SKU, price,
usually no Title); each further image has a row holding only the Handle and Image Src. This reader gives one row
per variant, with the product's fields filled in where the variant row leaves them empty (a variant row's own
Title or Type wins), and two derived columns:

    @id     Variant SKU; without one the Handle, numbered `<handle>-<n>` when the product has several variants
    @image  the variant's own image (Variant Image), else the product's first image (lowest Image Position)

Image-only rows are images of their product, not products: they are not counted as rows. An image row whose
Handle has no product or variant row, and a row with a Handle and nothing else, are quarantined with the reason.
The whole export is read before the first row is given (a product's rows need not be adjacent).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.ingest.csv_export import read_export
from pipelines.ingest.shops import clean

VARIANT_COLUMNS = ("Variant SKU", "Option1 Value", "Option2 Value", "Option3 Value", "Variant Price",
                   "Variant Barcode")
PRODUCT_COLUMNS = ("Title", "Body (HTML)", "Vendor", "Product Category", "Type", "Tags",
                   "Google Shopping / Gender", "Google Shopping / Age Group",
                   "Google Shopping / Google Product Category")


def row_kind(row: dict) -> str:
    """'variant' (a product or variant row), 'image' (only an image) or 'empty' (a Handle and nothing else)."""
    if any(clean(row.get(c, "")) for c in ("Title",) + VARIANT_COLUMNS):
        return "variant"
    return "image" if clean(row.get("Image Src", "")) else "empty"


def _position(text: str, fallback: int) -> int:
    text = clean(text)
    return int(text) if text.isdigit() else fallback


class _Product:
    def __init__(self):
        self.variants: list = []  # (line, row)
        self.images: list = []  # (position, src)
        self.image_lines: list = []  # lines of image-only rows

    def add_image(self, row: dict):
        src = clean(row.get("Image Src", ""))
        if src:
            self.images.append((_position(row.get("Image Position", ""), 10 ** 6 + len(self.images)), src))

    def first_image(self) -> str:
        return min(self.images)[1] if self.images else ""


def merged_rows(handle: str, product: _Product):
    """(line, row, problem) per variant of one product, each row completed by the product's fields."""
    if not product.variants:
        for line in product.image_lines:
            yield line, None, f"image row of handle {handle!r}, which has no product row"
        return
    base = next((row for _, row in product.variants if clean(row.get("Title", ""))), product.variants[0][1])
    several = len(product.variants) > 1
    for n, (line, row) in enumerate(product.variants, start=1):
        merged = dict(row)
        for column in PRODUCT_COLUMNS:
            if not clean(merged.get(column, "")) and column in base:
                merged[column] = base[column]
        sku = clean(row.get("Variant SKU", ""))
        merged["@id"] = sku or (f"{handle}-{n}" if several else handle)
        merged["@image"] = clean(row.get("Variant Image", "")) or product.first_image()
        yield line, merged, None


def read_shopify_rows(path: Path, required: list[str]):
    """One (line, row, problem) per variant row (see the module docstring); problems of the CSV pass through."""
    required = [c for c in required if not c.startswith("@")]  # derived here, not in the file
    products: dict[str, _Product] = {}
    for line, row, problem in read_export(Path(path), required):
        if problem:
            yield line, None, problem
            continue
        handle = clean(row.get("Handle", ""))
        kind = row_kind(row)
        if not handle:
            yield line, None, "missing Handle"
            continue
        if kind == "empty":
            yield line, None, f"row of handle {handle!r} with no title, variant or image"
            continue
        product = products.setdefault(handle, _Product())
        product.add_image(row)
        if kind == "variant":
            product.variants.append((line, row))
        else:
            product.image_lines.append(line)
    for handle, product in products.items():
        yield from merged_rows(handle, product)
