"""A shop's export read through its contract: the adapter protocol normalisation and classification use.

    adapter.NAME, adapter.EXPORT_FILE, adapter.REQUIRED_COLUMNS, adapter.FORMAT
    adapter.read_rows(export_dir)          -> (line, row or None, problem) per record of the export file
    adapter.to_record(row, export_dir)     -> the canonical record (fields.build_record); BadRow to quarantine
    adapter.native_path(row)               -> the row's native category path

One class serves every shop: the benchmark shops (data/shops/*.yaml), any CSV / TSV / JSON Lines / Parquet export
with a YAML contract, and the standard Google Merchant Center and Shopify feeds (fixed contracts).
"""
from __future__ import annotations

from pathlib import Path

from pipelines.ingest.feeds.contract import ShopContract
from pipelines.ingest.feeds.fields import build_record, field_path
from pipelines.ingest.feeds.google import read_google_xml
from pipelines.ingest.feeds.rows import ROW_READERS
from pipelines.ingest.feeds.shopify import read_shopify_rows

FORMAT_READERS = ROW_READERS | {"google-tsv": ROW_READERS["tsv"], "google-xml": read_google_xml,
                                "shopify": read_shopify_rows}


class FeedAdapter:
    """The adapter of one shop contract (see the module docstring)."""

    def __init__(self, contract: ShopContract):
        self.contract = contract

    def __repr__(self) -> str:
        return f"FeedAdapter({self.NAME!r}, {self.EXPORT_FILE!r}, {self.FORMAT!r})"

    @property
    def NAME(self) -> str:  # noqa: N802 (the adapter protocol's upper-case names)
        return self.contract.shop

    @property
    def EXPORT_FILE(self) -> str:  # noqa: N802
        return self.contract.file

    @property
    def FORMAT(self) -> str:  # noqa: N802
        return self.contract.format

    @property
    def REQUIRED_COLUMNS(self) -> list[str]:  # noqa: N802
        return self.contract.required_columns

    def read_rows(self, export_dir: str | Path):
        return FORMAT_READERS[self.FORMAT](Path(export_dir) / self.EXPORT_FILE, self.REQUIRED_COLUMNS)

    def to_record(self, row: dict, export_dir: str | Path) -> dict:
        return build_record(self.contract, row, export_dir)

    def native_path(self, row: dict) -> list[str]:
        return field_path(self.contract.fields.get("native_path"), row)
