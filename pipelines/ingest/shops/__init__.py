"""Shop adapters: a shop's export -> canonical product records, by the shop's column contract.

Every shop, the three benchmark shops included, is a contract `data/shops/<shop>.yaml` (docs/feeds.md) read by
pipelines/ingest/feeds/; `get_adapter(shop)` returns its adapter:
  NAME, EXPORT_FILE (relative to the shop's input dir), REQUIRED_COLUMNS, FORMAT
  read_rows(input_dir) -> (line, row or None, problem) per record of the export
  to_record(row: dict, input_dir: Path) -> dict   # canonical fields except category_path/split
  native_path(row) -> list[str]
It raises `BadRow(reason)` for a row that cannot become a product; normalisation quarantines it.
"""
from __future__ import annotations

# the CSV reader lives in its own module; re-exported here, where adapters and callers import it from
from pipelines.ingest.csv_export import MAX_FIELD_BYTES, BadExport, read_export  # noqa: F401


class BadRow(ValueError):
    """A raw row that cannot become a product; the message is the quarantine reason."""


def get_adapter(platform: str, shops_dir=None):
    """The adapter of a registered shop, from its contract `<shops_dir>/<platform>.yaml` (default data/shops/);
    BadExport naming the known shops for an unknown one."""
    from pipelines.ingest.feeds import shop_adapter  # the feeds package imports BadRow and clean from here

    return shop_adapter(platform, shops_dir)


def registered_shops(data_root, shops_dir) -> list[str]:
    """Shops with a column contract (<shops_dir>/<shop>.yaml) whose export folder exists under `data_root`; the
    benchmark shops first, in their usual order."""
    from pathlib import Path

    from pipelines.settings import PLATFORMS

    contracts = sorted(p.stem for p in Path(shops_dir).glob("*.yaml"))
    ordered = [s for s in PLATFORMS if s in contracts] + [s for s in contracts if s not in PLATFORMS]
    return [s for s in ordered if (Path(data_root) / s).is_dir()]


def clean(text) -> str:
    return " ".join(str(text or "").split())
