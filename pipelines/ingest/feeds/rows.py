"""Rows of an export file, whatever its format, as normalisation reads them: (line, row or None, problem).

Every reader yields one item per record of the file, so that rows in = products + quarantined rows: a record that
cannot be read is yielded with the reason instead of a row. `line` is where the record is: the physical line for
CSV, TSV and JSON Lines (the header is line 1 of a CSV/TSV), the record number (from 1) for Parquet.
A file that cannot be read at all, or lacks a column the contract requires, raises BadExport naming the file, the
missing columns and the ones found.

    csv      comma-separated, quoted fields may span lines (pipelines/ingest/csv_export.py)
    tsv      tab-separated, one record per line (Google Merchant Center's text format): a field may be wrapped
             in double quotes ("" inside is one quote); a record never spans lines, so no quote can swallow rows
    jsonl    one JSON object per line; scalar values become text, a list stays a list (a category path)
    parquet  read in batches; every value becomes text, a list column stays a list
"""
from __future__ import annotations

import json
from pathlib import Path

from pipelines.ingest.csv_export import MAX_FIELD_BYTES, BadExport, check_export_file, read_export, sniff_encoding

MAX_LINE_BYTES = MAX_FIELD_BYTES  # a TSV or JSON Lines record longer than this is quarantined, not read
PARQUET_BATCH = 4096


def missing_columns_error(path: Path, missing: list, found: list) -> BadExport:
    found_text = repr(list(found))
    found_text = found_text if len(found_text) <= 300 else found_text[:300] + "...]"
    return BadExport(f"{path}: missing required columns {missing} (found {found_text})")


def read_csv_rows(path: Path, required: list[str]):
    return read_export(Path(path), required)


def _text_lines(path: Path):
    """(line number, text or None, problem) per physical line, each read with a bounded length."""
    with path.open("rb") as f:
        number = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line
                    raw = f.readline(MAX_LINE_BYTES + 1)
                yield number, None, f"line too long: over {MAX_LINE_BYTES} bytes"
                continue
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError:
                yield number, None, "non-UTF-8 bytes in row"


def _open_checked(path: Path) -> Path:
    path = Path(path)
    check_export_file(path)
    with path.open("rb") as f:
        sniff_encoding(path, f.read(1024))
    return path


def _tsv_field(text: str) -> str:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return text[1:-1].replace('""', '"')
    return text


def read_tsv_rows(path: Path, required: list[str]):
    """Tab-separated rows (see the module docstring); the header names the columns."""
    path = _open_checked(path)
    lines = _text_lines(path)
    first = next(lines, None)
    if first is None or first[1] is None:
        raise BadExport(f"{path} is empty" if first is None else f"{path}: unreadable header line: {first[2]}")
    header = [h.strip().lstrip("\ufeff") for h in first[1].split("\t")]
    missing = [c for c in required if c not in header]
    if missing:
        raise missing_columns_error(path, missing, header)
    for number, text, problem in lines:
        if problem or not text.strip():
            if problem or text:  # a line of bare tabs is an (empty) record; a blank line is none
                yield number, None, problem or "empty row"
            continue
        fields = [_tsv_field(x) for x in text.split("\t")]
        nul = next((column for column, value in zip(header, fields) if "\x00" in value), None)
        if len(fields) != len(header):
            yield number, None, f"malformed row: {len(fields)} fields, expected {len(header)}"
        elif nul is not None:
            yield number, None, f"NUL byte in field {nul}"
        else:
            yield number, dict(zip(header, fields)), None


def cell_value(value):
    """A JSON/Parquet value as a row cell: text for scalars ('' for null), a list of texts for a list."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return [cell_value(v) for v in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 12345.0 from a float column is the id 12345
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _json_record(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON: {e.msg} at column {e.colno}"
    if not isinstance(value, dict):
        return None, f"malformed JSON: a line must hold an object, got {type(value).__name__}"
    return {str(k): cell_value(v) for k, v in value.items()}, None


def read_jsonl_rows(path: Path, required: list[str]):
    """One JSON object per line. The first object must hold every required key (else BadExport: the contract does
    not fit the file); a later object lacking one is quarantined."""
    path = _open_checked(path)
    checked = False
    for number, text, problem in _text_lines(path):
        if problem is None and not text.strip():
            continue
        row, problem = (None, problem) if problem else _json_record(text)
        if row is not None:
            missing = [c for c in required if c not in row]
            if missing and not checked:
                raise missing_columns_error(path, missing, list(row))
            checked = True
            if "\x00" in text:
                row, problem = None, "NUL byte in row"
            elif missing:
                row, problem = None, f"missing fields {missing}"
        yield number, row, problem


def read_parquet_rows(path: Path, required: list[str]):
    """Parquet rows in batches of PARQUET_BATCH; the schema must hold every required column."""
    import pyarrow.parquet as pq

    path = Path(path)
    check_export_file(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is no parquet
        raise BadExport(f"{path}: not a readable Parquet file: {e}"[:300]) from None
    names = parquet.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise missing_columns_error(path, missing, names)
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH):
        for record in batch.to_pylist():
            number += 1
            row = {str(k): cell_value(v) for k, v in record.items()}
            bad = next((k for k, v in row.items() if isinstance(v, str) and "\x00" in v), None)
            yield number, (None if bad else row), (f"NUL byte in field {bad}" if bad else None)


ROW_READERS = {"csv": read_csv_rows, "tsv": read_tsv_rows, "jsonl": read_jsonl_rows, "parquet": read_parquet_rows}
