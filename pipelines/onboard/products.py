"""A new shop's products without labels: its feed through the shop adapter and normalisation's row checks, but
through no category mapping (a new shop has none yet: finding one is what onboarding is for).

Malformed rows, adapter errors, empty titles and duplicate ids are quarantined with their reason exactly as
`prodcat normalize` does (pipelines/ingest/normalize.py: checked_records, product_table); rows in = products +
quarantined, checked (RowCountMismatch). The products table is the canonical one minus `category_path`: a frame
that reaches the label-free code path holding a label column is refused (LabelLeak), which is how the measurement
proves it never reads the unseen shop's labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

LABEL_COLUMNS = ("category_path", "label", "labels", "label_path")


class LabelLeak(RuntimeError):
    """A label column reached a code path that must work without labels (the honest-protocol guard)."""


class NoUsableRows(ValueError):
    """A feed that gave no product at all: every row quarantined, or no data rows."""


def require_unlabelled(products: pd.DataFrame, where: str = "onboarding") -> pd.DataFrame:
    """`products` itself if it holds no label column; LabelLeak naming them otherwise."""
    found = [c for c in LABEL_COLUMNS if c in products.columns]
    if found:
        raise LabelLeak(f"{where} reads unlabelled products only, but the frame holds {found}: drop them before "
                        "(labels enter only the final scoring)")
    return products


@dataclass
class UnlabelledExport:
    shop: str
    products: pd.DataFrame  # canonical product columns without category_path
    quarantine: pd.DataFrame  # normalize.QUARANTINE_COLUMNS
    rows_in: int
    source: str  # the file read
    format: str


def read_unlabelled(shop: str, adapter, export_dir, verify_images: bool = True, image_fetcher=None,
                    source: str = "") -> UnlabelledExport:
    """Every row of the export through `adapter` (pipelines/ingest/feeds.FeedAdapter) and the row checks; images
    located, fetched (http(s) through `image_fetcher`) and decoded when `verify_images`."""
    from pipelines.ingest.normalize import (QUARANTINE_COLUMNS, check_row_counts, checked_records, product_table,
                                            quarantine_to)

    records, quarantine, counter = [], [], {"rows_in": 0}
    for _, rec in checked_records(adapter, Path(export_dir), quarantine_to(quarantine, shop), counter):
        records.append(rec | {"platform": shop, "category_path": []})
    table = product_table(records, shop, verify_images, image_fetcher=image_fetcher)
    products = table.drop(columns=["category_path"])
    quarantined = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).astype({"line": "int64"})
    check_row_counts(shop, counter["rows_in"], len(products), len(quarantined))
    return UnlabelledExport(shop, products, quarantined, counter["rows_in"],
                            source or str(Path(export_dir) / adapter.EXPORT_FILE), adapter.FORMAT)


def read_feed_unlabelled(shop: str, feed, fmt: str | None = None, verify_images: bool = True,
                         image_fetcher=None) -> UnlabelledExport:
    """A feed file in any supported format (pipelines/ingest/feeds.load_feed: google, google-tsv, google-xml,
    shopify, yaml; detected from the file when `fmt` is None)."""
    from pipelines.ingest.feeds import load_feed

    loaded = load_feed(Path(feed), fmt, shop=shop)  # a YAML contract must name this very shop
    return read_unlabelled(shop, loaded.adapter, loaded.export_dir, verify_images, image_fetcher, str(feed))


def read_shop_unlabelled(shop: str, export_dir, verify_images: bool = True, image_fetcher=None,
                         shops_dir=None) -> UnlabelledExport:
    """A registered shop's raw export (its contract data/shops/<shop>.yaml), as if it were new: no mapping read."""
    from pipelines.ingest.shops import get_adapter

    return read_unlabelled(shop, get_adapter(shop, shops_dir), export_dir, verify_images, image_fetcher)


def require_products(export: UnlabelledExport) -> UnlabelledExport:
    """The export if it gave at least one product; NoUsableRows saying why not."""
    if len(export.products):
        return export
    if not export.rows_in:
        raise NoUsableRows(f"{export.source}: the feed holds no data rows")
    kinds = export.quarantine["reason_kind"].value_counts().to_dict()
    raise NoUsableRows(f"{export.source}: no usable rows: all {export.rows_in} rows were quarantined ({kinds}); "
                       "each row's reason is in the quarantine")
