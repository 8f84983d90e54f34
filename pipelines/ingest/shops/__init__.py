"""Platform adapters: one module per shop, each turning its raw export into canonical records.

An adapter module defines:
  NAME, REQUIRED_COLUMNS, EXPORT_FILE (relative to the shop's input dir)
  to_record(row: dict, input_dir: Path) -> dict   # canonical fields except category_path/split
It raises `BadRow(reason)` for a row that cannot become a product; normalisation quarantines it.
"""
from __future__ import annotations

import importlib

# the CSV reader lives in its own module; re-exported here, where adapters and callers import it from
from pipelines.ingest.csv_export import MAX_FIELD_BYTES, BadExport, read_export  # noqa: F401
from pipelines.settings import PLATFORMS


class BadRow(ValueError):
    """A raw row that cannot become a product; the message is the quarantine reason."""


def get_adapter(platform: str):
    try:
        return importlib.import_module(f"pipelines.ingest.shops.{platform}")
    except ModuleNotFoundError:
        raise BadExport(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}") from None


def clean(text) -> str:
    return " ".join(str(text or "").split())
