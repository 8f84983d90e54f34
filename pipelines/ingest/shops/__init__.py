"""Platform adapters: one module per shop, each turning its raw export into canonical records.

An adapter module defines:
  NAME, REQUIRED_COLUMNS, EXPORT_FILE (relative to the shop's input dir)
  to_record(row: dict, input_dir: Path) -> dict   # canonical fields except category_path/split
It raises `BadRow(reason)` for a row that cannot become a product; normalisation quarantines it.
"""
from __future__ import annotations

import csv
import importlib
from pathlib import Path

from pipelines.settings import PLATFORMS

# Largest CSV field we read: 16 MiB. Python's default (128 KiB) rejects long product descriptions; sys.maxsize
# overflows the C long on Windows. A bigger field quarantines the rest of the export ("malformed CSV from here on").
MAX_FIELD_BYTES = 16 * 1024 * 1024


class BadRow(ValueError):
    """A raw row that cannot become a product; the message is the quarantine reason."""


class BadExport(ValueError):
    """The export as a whole is unusable (missing file or columns)."""


def get_adapter(platform: str):
    try:
        return importlib.import_module(f"pipelines.ingest.shops.{platform}")
    except ModuleNotFoundError:
        raise BadExport(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}") from None


def read_export(path: Path, required: list[str]):
    """Yield (line_number, row_dict_or_None, problem) for every data record of a CSV export.

    Malformed records (wrong field count) and records with non-UTF-8 bytes are yielded with a problem text
    instead of being dropped, so that rows in = rows out + rows quarantined.
    """
    if not path.exists():
        raise BadExport(f"export file {path} does not exist")
    if csv.field_size_limit() < MAX_FIELD_BYTES:  # process-wide setting: raised here, when reading, never lowered
        csv.field_size_limit(MAX_FIELD_BYTES)
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            raise BadExport(f"{path} is empty") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise BadExport(f"{path}: missing required columns {missing} (found {header})")
        try:
            for fields in reader:
                line = reader.line_num
                if not fields or all(not x.strip() for x in fields):
                    if fields:  # a row of empty separators is a record too
                        yield line, None, "empty row"
                    continue
                if len(fields) != len(header):
                    yield line, None, f"malformed row: {len(fields)} fields, expected {len(header)}"
                    continue
                if any(_has_surrogates(x) for x in fields):
                    yield line, None, "non-UTF-8 bytes in row"
                    continue
                yield line, dict(zip(header, fields)), None
        except csv.Error as e:
            yield reader.line_num, None, f"malformed CSV from here on: {e}"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def clean(text) -> str:
    return " ".join(str(text or "").split())
