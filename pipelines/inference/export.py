"""`prodcat classify`: a raw shop export in, a predictions file and a quarantine file beside it out.

Rows go through the platform adapter and normalisation's row checks (malformed rows, non-UTF-8, adapter errors,
empty titles, duplicate ids are quarantined with their reason) but not through the category mapping: classifying
needs no label, so unknown or unmapped native categories are classified. Every row read is accounted for:
rows in = classified + quarantined, checked before the summary is returned.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from pipelines.inference.two_stage import TwoStage

CHUNK = 2048  # products per classify step in batch mode (bounds memory; one progress-bar tick)
SUFFIXES = (".parquet", ".csv")


class RowCountMismatch(RuntimeError):
    """Rows were lost or invented between the export and the output files: a bug, never silently accepted."""


def read_export_unlabelled(platform: str, input_dir) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """A raw export through the platform adapter and normalisation's row quarantine, without the category mapping.
    -> (products, quarantine, rows in)."""
    from pipelines.ingest.normalize import QUARANTINE_COLUMNS, checked_records, quarantine_to
    from pipelines.ingest.shops import get_adapter
    from pipelines.taxonomy.tree import path_str

    products, quarantine, counter = [], [], {"rows_in": 0}
    for _, rec in checked_records(get_adapter(platform), Path(input_dir), quarantine_to(quarantine, platform), counter):
        products.append({k: rec.get(k) for k in ("product_id", "title", "description", "brand", "image_path")}
                        | {"native_path": path_str(rec.get("native_path") or [])})
    df = pd.DataFrame(products, columns=["product_id", "title", "description", "brand", "image_path", "native_path"])
    return df, pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS), counter["rows_in"]


def output_table(products: pd.DataFrame, result: pd.DataFrame, depth: int) -> pd.DataFrame:
    from pipelines.taxonomy.tree import path_str

    out = pd.DataFrame({"product_id": products["product_id"].astype(str).to_numpy(),
                        "category_path": [path_str(p) for p in result["category_path"]]})
    for lvl in range(depth):
        out[f"conf_L{lvl + 1}"] = result[f"conf_L{lvl + 1}"].to_numpy().astype(float).round(4)
    out["stage"] = result["stage"].to_numpy()
    out["needs_review"] = result["needs_review"].to_numpy()
    return out


def _check_suffix(path: Path):
    if path.suffix not in SUFFIXES:
        raise ValueError(f"--out must end in .parquet or .csv, got {path.name!r}")


def write_table(df: pd.DataFrame, path: Path):
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)


def classify_products(clf: TwoStage, products: pd.DataFrame, label: str, progress: bool,
                      num_workers: int | None) -> pd.DataFrame:
    """The products in CHUNK-sized steps under one progress bar (the embedding bars inside stay off)."""
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(products), desc=f"classify {label}", unit="item", disable=not progress,
              mininterval=1.0) as bar:
        for s in range(0, len(products), CHUNK):
            chunk = products.iloc[s:s + CHUNK]
            parts.append(clf.classify(chunk["title"].tolist(), chunk["description"].tolist(),
                                      chunk["image_path"].tolist(), num_workers=num_workers, progress=False))
            bar.update(len(chunk))
    return pd.concat(parts, ignore_index=True) if parts else clf.classify([], [], [])


def classify_export(platform: str, input_dir, out_file, settings, model_dir=None, mode: str = "routed",
                    progress: bool = True, classifier: TwoStage | None = None) -> dict:
    """Classify every usable row of a raw shop export with the models of `settings` (or an already loaded
    `classifier`); write the predictions (and the quarantine beside them); -> summary counts."""
    out_file = Path(out_file)
    _check_suffix(out_file)
    products, quarantine, rows_in = read_export_unlabelled(platform, input_dir)
    clf = classifier or TwoStage.load(settings, model_dir, mode)
    t0 = time.perf_counter()
    result = classify_products(clf, products, platform, progress, settings.loader_workers)
    seconds = time.perf_counter() - t0
    table = output_table(products, result, clf.depth)
    if rows_in != len(table) + len(quarantine):
        raise RowCountMismatch(f"{platform}: {rows_in} rows read but {len(table)} classified + {len(quarantine)} "
                               "quarantined")
    write_table(table, out_file)
    q_path = out_file.with_name(f"{out_file.stem}.quarantine{out_file.suffix}")
    write_table(quarantine, q_path)
    return {"platform": platform, "rows_in": rows_in, "classified": len(table), "quarantined": len(quarantine),
            "quarantined_by_reason": quarantine["reason_kind"].value_counts().to_dict(),
            "stage": {f"stage{k}": int(v) for k, v in table["stage"].value_counts().sort_index().items()},
            "needs_review": int(table["needs_review"].sum()), "seconds": round(seconds, 2),
            "items_per_s": round(len(table) / seconds, 1) if seconds > 0 else None,
            "mode": clf.mode, "threshold": clf.info.get("threshold"), "stage2": clf.info.get("stage2_source"),
            "out": str(out_file), "quarantine_out": str(q_path)}
