"""The training shops' side of onboarding: their products with the labels their hand mappings give.

Only shops other than the one being onboarded come through here (their mappings are allowed knowledge); a new shop's
products come through products.read_*_unlabelled and never meet a mapping. Each product gets
  category_path  the hand mapping's taxonomy path (an empty tuple when its rule is `unmapped` or missing);
  scope          'in' (mapped), 'out' (`unmapped: out of scope: ...`) or 'other' (ambiguous, placeholders, no rule).
Unlike `prodcat normalize`, unmapped rows keep their full record (title and description), so the out-of-scope
detector sees them as a new shop's products will look.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.onboard.products import UnlabelledExport, read_shop_unlabelled

SCOPE_IN, SCOPE_OUT, SCOPE_OTHER = "in", "out", "other"
OUT_OF_SCOPE_PREFIX = "out of scope"  # the hand mappings' reasons: "out of scope: home & furniture", ...


def scope_of_rule(rule) -> str:
    if rule is None:
        return SCOPE_OTHER
    if not rule.unmapped_reason:
        return SCOPE_IN
    return SCOPE_OUT if rule.unmapped_reason.startswith(OUT_OF_SCOPE_PREFIX) else SCOPE_OTHER


def label_training_shop(export: UnlabelledExport, mapping) -> pd.DataFrame:
    """The export's products plus `category_path` (tuple) and `scope` from the shop's hand mapping."""
    rules = [mapping.lookup(n) for n in export.products["native_path"]]
    table = export.products.copy()
    table["category_path"] = [tuple(r.category_path) if r is not None and not r.unmapped_reason else ()
                              for r in rules]
    table["scope"] = [scope_of_rule(r) for r in rules]
    return table


def load_training_shops(shops, raw_dir, taxonomy, mappings_dir, shops_dir=None) -> dict[str, pd.DataFrame]:
    """{shop: labelled products} for each training shop; `raw_dir(shop)` gives its export folder. Images are not
    decoded: onboarding's models read text only."""
    from pipelines.ingest.mapping import load_mapping

    tables = {}
    for shop in shops:
        export = read_shop_unlabelled(shop, raw_dir(shop), verify_images=False, shops_dir=shops_dir)
        tables[shop] = label_training_shop(export, load_mapping(Path(mappings_dir) / f"{shop}.csv", taxonomy))
    return tables


def mapped_rows(tables: dict) -> pd.DataFrame:
    """Every training shop's mapped products in one frame (what a taxonomy classifier trains on)."""
    frames = [t[t["scope"] == SCOPE_IN] for t in tables.values()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def measured_shops(settings, shops=None) -> list[str]:
    """The shops of a leave-one-platform-out measurement: `shops` (default the benchmark shops) whose export is
    under the data root; ValueError when fewer than two remain (nothing would be left to train on)."""
    from pipelines.settings import PLATFORMS

    found = [s for s in (shops or PLATFORMS) if settings.raw_dir(s).exists()]
    if len(found) < 2:
        raise ValueError(f"leave-one-platform-out needs two shops with exports, found {found} under "
                         f"{settings.data_root}")
    return found
