"""Raw shop export -> platform-normalised products in the shared taxonomy, plus quarantine and coverage.

Invariant: rows in = products + quarantined rows (checked on every run: RowCountMismatch, never an `assert`).
Every quarantined row carries a reason. An export whose every row is quarantined still gives the outputs: an empty
products table in the canonical schema, the quarantine, and a coverage report whose `warnings` say why.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.files import atomic_write_parquet, atomic_write_text, check_output_path
from pipelines.ingest.mapping import MappingTable, load_mapping
from pipelines.ingest.images import inspect_images
from pipelines.ingest.shops import BadRow, get_adapter
from pipelines.ingest.splits import assign_splits
from pipelines.settings import MAPPINGS_DIR
from pipelines.taxonomy.tree import Taxonomy, load_taxonomy, path_str

PRODUCT_COLUMNS = ["product_id", "platform", "group_id", "title", "description", "brand", "gender", "image_path",
                   "image_status", "native_path", "category_path", "split"]
LIST_COLUMNS = ("native_path", "category_path")  # lists of strings; every other product column is a string
QUARANTINE_COLUMNS = ["platform", "line", "product_id", "title", "native_path", "reason", "reason_kind"]
OUT_OF_SCOPE = "out of scope"


class RowCountMismatch(RuntimeError):
    """Rows read != rows normalised + rows quarantined: a row was lost or counted twice (a bug, never bad input)."""


def product_schema():
    """The canonical products table as Arrow types, so an empty table keeps its column types in parquet."""
    import pyarrow as pa

    return pa.schema([(c, pa.list_(pa.string()) if c in LIST_COLUMNS else pa.string()) for c in PRODUCT_COLUMNS])


def quarantine_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c == "line" else pa.string()) for c in QUARANTINE_COLUMNS])


def check_row_counts(platform: str, rows_in: int, products: int, quarantined: int):
    if rows_in != products + quarantined:
        raise RowCountMismatch(f"{platform}: {rows_in} rows read but {products} normalised + {quarantined} quarantined")


@dataclass
class NormalizeResult:
    products: pd.DataFrame
    quarantine: pd.DataFrame
    coverage: dict
    inputs: tuple = ()  # the export folder(s) read: outputs may never land on or inside them

    def write(self, out_dir: str | Path) -> Path:
        """products.parquet and quarantine.parquet in their canonical schemas (also when empty), coverage.json.

        Before anything is written: the row counts are checked again (rows in = the tables' rows, RowCountMismatch)
        and the output folder too (never an input, creatable, writable: OutputPathError). Each file is written
        atomically (pipelines.files), coverage.json last, so a reader finding a coverage.json of this run finds
        the tables of this run beside it."""
        cov = self.coverage
        check_row_counts(cov["platform"], cov["rows_in"], len(self.products), len(self.quarantine))
        out = check_output_path(out_dir, self.inputs, directory=True)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(self.products, out / "products.parquet", product_schema())
        atomic_write_parquet(self.quarantine, out / "quarantine.parquet", quarantine_schema())
        atomic_write_text(out / "coverage.json", json.dumps(cov, indent=2))
        return out


def check_images(paths: list, workers: int = 4) -> list[str]:
    """The status of each located image: 'ok', 'missing' or a refusal 'kind: detail' (pipelines/ingest/images.py:
    confined, regular files, bounded bytes and pixels, fully decoded so truncated files are caught)."""
    return [check.status for check in inspect_images(paths, workers)]


def quarantine_to(quarantine: list, platform: str):
    """-> reject(line, reason, rec=None): appends a quarantine record with its reason."""
    def reject(line, reason, rec=None):
        rec = rec or {}
        quarantine.append({"platform": platform, "line": line, "product_id": rec.get("product_id"),
                           "title": rec.get("title"), "native_path": path_str(rec.get("native_path") or []),
                           "reason": reason, "reason_kind": reason.split(":")[0]})
    return reject


def checked_records(adapter, input_dir: Path, reject, counter: dict):
    """The export's rows as adapter records, minus malformed rows, adapter errors, empty titles and duplicate ids
    (each rejected with its reason). counter["rows_in"] counts every row read. Yields (line, record)."""
    first_line = {}
    for line, row, problem in adapter.read_rows(input_dir):
        counter["rows_in"] += 1
        if problem:
            reject(line, problem)
            continue
        try:
            rec = adapter.to_record(row, input_dir)
        except BadRow as e:
            reject(line, str(e))
            continue
        if not rec["title"]:
            reject(line, "empty title", rec)
            continue
        if rec["product_id"] in first_line:
            reject(line, f"duplicate id (first seen on line {first_line[rec['product_id']]})", rec)
            continue
        first_line[rec["product_id"]] = line
        yield line, rec


def normalize_platform(platform: str, input_dir: str | Path, taxonomy: Taxonomy | None = None,
                       mapping: MappingTable | None = None, mapping_path: str | Path | None = None,
                       verify_images: bool = True, mappings_dir: str | Path = MAPPINGS_DIR,
                       image_fetcher=None, shops_dir: str | Path | None = None) -> NormalizeResult:
    """One shop's export in the shared taxonomy. The mapping is `mapping`, else the table at `mapping_path`, else
    `<mappings_dir>/<platform>.csv`; the taxonomy defaults to data/taxonomy.yaml. `image_fetcher`
    (pipelines/ingest/image_fetch.ImageFetcher) downloads http(s) images; None leaves them 'not fetched'. The
    shop's column contract is `<shops_dir>/<platform>.yaml` (default data/shops/)."""
    adapter = get_adapter(platform, shops_dir)
    input_dir = Path(input_dir)
    taxonomy = taxonomy or load_taxonomy()
    mapping = mapping or load_mapping(mapping_path or Path(mappings_dir) / f"{platform}.csv", taxonomy)

    products, quarantine = [], []
    reject = quarantine_to(quarantine, platform)
    counter = {"rows_in": 0}
    for line, rec in checked_records(adapter, input_dir, reject, counter):
        rule = mapping.lookup(rec["native_path"])
        if rule is None:
            reject(line, f"unknown native category: {path_str(rec['native_path'][:4])}", rec)
            continue
        if rule.unmapped_reason:
            reject(line, f"unmapped: {rule.unmapped_reason}", rec)
            continue
        rec["platform"] = platform
        rec["category_path"] = list(rule.category_path)
        products.append(rec)

    df = product_table(products, platform, verify_images, image_fetcher)
    quarantined = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS).astype({"line": "int64"})
    coverage = coverage_report(platform, counter["rows_in"], df, quarantined, mapping)
    check_row_counts(platform, coverage["rows_in"], coverage["rows_normalised"], coverage["rows_quarantined"])
    return NormalizeResult(df, quarantined, coverage, inputs=(input_dir,))


def product_table(records: list[dict], platform: str, verify_images: bool, image_fetcher=None) -> pd.DataFrame:
    """The canonical products table (PRODUCT_COLUMNS; string columns of dtype object, also when empty), with
    image status and split. The table only points at images that decode (a downloaded one: its cache file); an
    image the adapter refused (outside the export, ...) keeps the adapter's reason as its status."""
    df = pd.DataFrame(records, columns=[c for c in PRODUCT_COLUMNS if c != "split"], dtype=object)
    refused = [s if isinstance(s, str) else None for s in df["image_status"]]
    if verify_images:
        checks = inspect_images(df["image_path"].tolist(), fetcher=image_fetcher)
        status = [r or c.status for r, c in zip(refused, checks)]
        paths = [c.path for c in checks]
    else:
        status = [r or ("unchecked" if p else "missing") for r, p in zip(refused, df["image_path"])]
        paths = df["image_path"].tolist()
    df["image_status"] = pd.Series(status, index=df.index, dtype=object)
    df["image_path"] = pd.Series([p if s in ("ok", "unchecked") else None for p, s in zip(paths, status)],
                                 index=df.index, dtype=object)
    df["split"] = pd.Series(assign_splits(df["group_id"], platform), index=df.index, dtype=object)
    return df[PRODUCT_COLUMNS].reset_index(drop=True)


def coverage_warnings(rows_in: int, rows_normalised: int, quarantine: pd.DataFrame) -> list[str]:
    """What a reader of the coverage must not miss: an export that gave no product at all, and why."""
    if rows_normalised:
        return []
    if not rows_in:
        return ["the export holds no data rows: no products"]
    kinds = ", ".join(f"{k} ({n})" for k, n in Counter(quarantine["reason_kind"]).most_common())
    return [f"no products: all {rows_in} rows were quarantined ({kinds}); see quarantine.parquet for each reason"]


def coverage_report(platform: str, rows_in: int, products: pd.DataFrame, quarantine: pd.DataFrame,
                    mapping: MappingTable) -> dict:
    reasons = quarantine["reason"]
    unmapped = reasons[reasons.str.startswith("unmapped: ")].str.removeprefix("unmapped: ")
    out_of_scope = int(unmapped.str.startswith(OUT_OF_SCOPE).sum())
    unknown = quarantine.loc[quarantine["reason_kind"] == "unknown native category", "native_path"]
    fashion_rows = rows_in - out_of_scope
    return {
        "platform": platform,
        "mapping_table": mapping.source,
        "rows_in": rows_in,
        "rows_normalised": int(len(products)),
        "rows_quarantined": int(len(quarantine)),
        "fashion_rows": fashion_rows,
        "fashion_mapped_share": round(len(products) / fashion_rows, 4) if fashion_rows else 0.0,
        "unmapped_by_reason": dict(Counter(unmapped).most_common()),
        "quarantined_by_kind": dict(Counter(quarantine["reason_kind"]).most_common()),
        "native_categories_not_in_table": dict(Counter(unknown).most_common(50)),
        "mapped_depth": {str(k): int(v) for k, v in Counter(products["category_path"].map(len)).items()},
        "image_status": dict(Counter(products["image_status"].str.split(":").str[0]).most_common()),
        "splits": dict(Counter(products["split"]).most_common()),
        "categories": int(products["category_path"].map(tuple).nunique()) if len(products) else 0,
        "warnings": coverage_warnings(rows_in, len(products), quarantine),
    }
