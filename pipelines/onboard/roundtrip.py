"""Issue 17's third target: a shop exported as a Google TSV, a Google RSS XML and a Shopify CSV feed onboards to the
same products and the same predictions as its native export.

The shop's native export is written once into each format by the same writers `scripts/export_feed.py` uses (its
images copied once beside the feeds, named by the hash of their bytes), each feed is read back through its format's
reader and onboarded by the very classifier and detector that onboarded the native export, and everything is compared
product by product (matched on the product id): the text fields, the group, the native category, the image (its
bytes' hash), then the predicted path, the out-of-scope and needs_review flags, the confidences and the proposed
mapping. No label is read here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

FEED_FILES = {"google-tsv": "google.tsv", "google-xml": "google.xml", "shopify": "shopify.csv"}
PRODUCT_FIELDS = ("group_id", "title", "description", "brand", "gender", "native_path")
PREDICTION_FIELDS = ("category_path", "model_path", "out_of_scope", "needs_review", "stage")


def export_shop_feeds(shop: str, export_dir, out_dir, shops_dir=None) -> tuple[dict, dict]:
    """The native export written in every format of FEED_FILES under `out_dir`.
    -> ({format: feed path}, {product_id: hash prefix of its image bytes, '' for none})."""
    from pipelines.ingest.feeds.writers import FEED_WRITERS, copy_images, shop_records
    from pipelines.ingest.shops import get_adapter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = shop_records(get_adapter(shop, shops_dir), export_dir)
    links = copy_images(records, out_dir)
    feeds = {}
    for fmt, name in FEED_FILES.items():
        FEED_WRITERS[fmt](records, links, out_dir / name, shop)
        feeds[fmt] = out_dir / name
    image_hashes = {str(r["product_id"]): Path(link).stem if link else "" for r, link in zip(records, links)}
    return feeds, image_hashes


def _image_hash(path) -> str:
    """The hash prefix the writers name an image by ('' for none): feeds link images/<hash>.<ext>."""
    return Path(str(path)).stem if isinstance(path, str) and path else ""


def compare_products(native: pd.DataFrame, feed: pd.DataFrame, native_images: dict) -> dict:
    """Products matched on product_id: how many are in both; per field how many of those are equal, and how many
    are empty natively but filled in the feed (`from_group`: Shopify gives a variant row that leaves a product
    field empty - Vendor, Image Src - its product's value, and a native image that could not be read is not
    exported, so it comes back as a sibling's). Those are counted apart, never as equal."""
    a = native.assign(product_id=native["product_id"].astype(str)).set_index("product_id")
    b = feed.assign(product_id=feed["product_id"].astype(str)).set_index("product_id")
    both = a.index.intersection(b.index)
    pairs = {f: [(a.at[i, f], b.at[i, f]) for i in both] for f in PRODUCT_FIELDS if f in a and f in b}
    pairs["image"] = [(native_images.get(i, ""), _image_hash(b.at[i, "image_path"])) for i in both]
    equal = {f: sum(_same(x, y) for x, y in p) for f, p in pairs.items()}
    from_group = {f: sum(_empty(x) and not _empty(y) for x, y in p) for f, p in pairs.items()}
    return {"native": len(a), "feed": len(b), "matched": len(both), "equal": equal, "from_group": from_group}


def _empty(x) -> bool:
    return x is None or (not isinstance(x, (list, tuple, np.ndarray)) and (pd.isna(x) or str(x) == ""))


def _same(x, y) -> bool:
    """Field equality where lists (native paths) compare by value and missing equals missing."""
    if isinstance(x, (list, tuple, np.ndarray)) or isinstance(y, (list, tuple, np.ndarray)):
        return list(x) == list(y)
    if pd.isna(x) or pd.isna(y):
        return bool(pd.isna(x) and pd.isna(y))
    return x == y


def compare_predictions(native: pd.DataFrame, feed: pd.DataFrame) -> dict:
    """Predictions matched on product_id: per field how many agree; the largest confidence difference."""
    a = native.assign(product_id=native["product_id"].astype(str)).set_index("product_id")
    b = feed.assign(product_id=feed["product_id"].astype(str)).set_index("product_id").reindex(a.index)
    present = b["model_path"].notna()
    equal = {f: int(((a[f] == b[f]) & present).sum()) for f in PREDICTION_FIELDS}
    conf = [c for c in a.columns if c.startswith("conf_L")]
    diff = (a[conf] - b[conf]).abs().to_numpy(float)
    return {"compared": len(a), "equal": equal,
            "max_confidence_diff": round(float(np.nanmax(diff)) if present.any() else float("nan"), 6)}


def compare_proposals(native: pd.DataFrame, feed: pd.DataFrame) -> dict:
    """Proposed mapping rows (native category -> proposed path, decision) that agree."""
    cols = ["native_path", "category_path", "unmapped_reason", "support", "confident"]
    key = lambda t: set(map(tuple, t[cols].astype(str).to_numpy()))  # noqa: E731
    return {"rows": len(native), "feed_rows": len(feed), "equal_rows": len(key(native) & key(feed))}


def roundtrip_shop(shop: str, settings, export, predictions, proposal, onboard, out_dir) -> dict:
    """Every feed format of `shop`'s native export onboarded by `onboard(products) -> (predictions, proposal)` and
    compared with the native `export`/`predictions`/`proposal`. -> {format: comparison}, plus `met`."""
    from pipelines.onboard.products import read_feed_unlabelled, require_products

    feeds, images = export_shop_feeds(shop, settings.raw_dir(shop), out_dir, settings.shops_dir)
    result = {}
    for fmt, path in feeds.items():
        feed = require_products(read_feed_unlabelled(shop, path, fmt, verify_images=False))
        feed_predictions, feed_proposal = onboard(feed.products)
        result[fmt] = {"rows_in": feed.rows_in, "quarantined": len(feed.quarantine),
                       "products": compare_products(export.products, feed.products, images),
                       "predictions": compare_predictions(predictions, feed_predictions),
                       "proposal": compare_proposals(proposal, feed_proposal)}
        result[fmt]["identical"] = roundtrip_identical(result[fmt])
    result["met"] = all(result[f]["identical"] for f in feeds)
    return result


def roundtrip_identical(cell: dict) -> bool:
    """Same products (every one matched, every field equal, or empty natively and given its group's value by
    Shopify's format, reported apart), same predictions and the same proposal."""
    p, q, m = cell["products"], cell["predictions"], cell["proposal"]
    fields_equal = all(p["equal"][f] + p["from_group"][f] == p["matched"] for f in p["equal"])
    return (p["native"] == p["feed"] == p["matched"] and fields_equal
            and all(v == q["compared"] for v in q["equal"].values())
            and m["rows"] == m["feed_rows"] == m["equal_rows"])
