"""Great Expectations 1.x suite for a platform-normalised product table.

Run as a blocking Dagster asset check; also callable directly (`validate_products`).
"""
from __future__ import annotations

import logging

import pandas as pd

from pipelines.taxonomy.tree import Taxonomy, path_str

# images that must decode, per platform with images (Myntra lacks some, by nature of the export)
MIN_IMAGE_SHARE = {"myntra": 0.9, "hm": 0.95, "flipkart": 0.0}
SPLIT_SHARE = {"train": (0.7, 0.9), "val": (0.05, 0.15), "test": (0.05, 0.15)}


def _frame_for_checks(products: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "product_id": products["product_id"].astype(str),
        "title": products["title"].astype(str).str.strip(),
        "category_path": products["category_path"].map(path_str),
        "image_ok": (products["image_status"] == "ok").astype(int),
        "split": products["split"].astype(str),
        **{f"is_{s}": (products["split"] == s).astype(int) for s in SPLIT_SHARE},
    })


def build_suite(taxonomy: Taxonomy, platform: str, min_rows: int = 1):
    import great_expectations as gx

    valid_paths = sorted(path_str(n) for n in taxonomy.nodes)
    e = gx.expectations
    expectations = [
        e.ExpectTableRowCountToBeBetween(min_value=min_rows),
        e.ExpectColumnValuesToBeUnique(column="product_id"),
        e.ExpectColumnValuesToNotBeNull(column="title"),
        e.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1),
        e.ExpectColumnValuesToBeInSet(column="category_path", value_set=valid_paths),
        e.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLIT_SHARE)),
        e.ExpectColumnMeanToBeBetween(column="image_ok", min_value=MIN_IMAGE_SHARE.get(platform, 0.0)),
    ]
    expectations += [e.ExpectColumnMeanToBeBetween(column=f"is_{s}", min_value=lo, max_value=hi)
                     for s, (lo, hi) in SPLIT_SHARE.items()]
    suite = gx.ExpectationSuite(name=f"normalized_products_{platform}")
    for exp in expectations:
        suite.add_expectation(exp)
    return suite


def _quiet_context():
    """An in-memory GX context with analytics off (its own `analytics_enabled` config, so no environment variable
    is needed: no network here, and none wanted) and no progress bars."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def validate_products(products: pd.DataFrame, taxonomy: Taxonomy, platform: str) -> dict:
    """Returns {'success': bool, 'results': [{expectation, column, success, observed}], 'statistics': ...}."""
    context = _quiet_context()
    source = context.data_sources.add_pandas(f"prodcat_{platform}")
    batch_def = source.add_dataframe_asset("products").add_batch_definition_whole_dataframe("all")
    batch = batch_def.get_batch(batch_parameters={"dataframe": _frame_for_checks(products)})
    result = batch.validate(build_suite(taxonomy, platform))
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        observed = r.result.get("observed_value", r.result.get("unexpected_count"))
        observed = float(observed) if hasattr(observed, "item") else observed
        rows.append({"expectation": cfg.type, "column": cfg.kwargs.get("column", ""), "success": bool(r.success),
                     "observed": observed if isinstance(observed, (int, float, str, type(None))) else str(observed),
                     "unexpected_examples": [str(x) for x in (r.result.get("partial_unexpected_list") or [])[:5]]})
    return {"success": bool(result.success), "results": rows, "statistics": dict(result.statistics)}
