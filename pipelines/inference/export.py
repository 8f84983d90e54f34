"""`prodcat classify`: a raw shop export in, a predictions file and a quarantine file beside it out.

Rows go through the platform adapter and normalisation's row checks (malformed rows, non-UTF-8, adapter errors,
empty titles, duplicate ids are quarantined with their reason) but not through the category mapping: classifying
needs no label, so unknown or unmapped native categories are classified. Every row read is accounted for:
rows in = classified + quarantined, checked before anything is written.

Order of work, cheapest failure first: the output paths are checked (never the export or a model the run reads,
never a directory, a name too long or a folder that cannot be written: files.check_output_path), then the models
are loaded and every model file validated, and only then is the export read and classified. Outputs are written
atomically (files.py: temporary file + rename; CSV with spreadsheet formulas neutralised), so a run killed or
failing while writing leaves each file as it was (or absent), never truncated; the quarantine goes first and the
predictions last, so a new predictions file means the whole run finished.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.files import OutputPathError, atomic_write_csv, atomic_write_parquet, check_output_path
from pipelines.inference.two_stage import TwoStage

CHUNK = 2048  # products per classify step in batch mode (bounds memory; one progress-bar tick)
SUFFIXES = (".parquet", ".csv")
WORK_INPUTS = ("models", "adapt", "registry_cache", "mlartifacts", "lexical_space", "joint_space", "store", "embeddings",
               "assets", "normalized")  # what prodcat reads from its work dir: no output goes into these


class RowCountMismatch(RuntimeError):
    """Rows were lost or invented between the export and the output files: a bug, never silently accepted."""


def read_export_unlabelled(platform: str, input_dir, shops_dir=None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """A raw export through the platform adapter (its contract in `shops_dir`, default data/shops) and
    normalisation's row quarantine, without the category mapping. -> (products, quarantine, rows in)."""
    from pipelines.ingest.normalize import QUARANTINE_COLUMNS, checked_records, quarantine_to
    from pipelines.ingest.shops import get_adapter
    from pipelines.taxonomy.tree import path_str

    products, quarantine, counter = [], [], {"rows_in": 0}
    adapter = get_adapter(platform, shops_dir)
    for _, rec in checked_records(adapter, Path(input_dir), quarantine_to(quarantine, platform), counter):
        products.append({k: rec.get(k) for k in ("product_id", "title", "description", "brand", "image_path")}
                        | {"native_path": path_str(rec.get("native_path") or [])})
    df = pd.DataFrame(products, columns=["product_id", "title", "description", "brand", "image_path", "native_path"])
    return df, pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS), counter["rows_in"]


def alternative_columns(alternatives, n: int, k: int = 2) -> pd.DataFrame:
    """alt1_path, alt1_score, ...: the answering model's runners-up, best first ('' / NaN where a row has fewer),
    for a reviewer choosing another path (the review page shows them)."""
    from pipelines.taxonomy.tree import path_str

    rows = list(alternatives) if alternatives is not None else [[] for _ in range(n)]
    cols = {}
    for j in range(k):
        cols[f"alt{j + 1}_path"] = [path_str(r[j][0]) if len(r) > j else "" for r in rows]
        cols[f"alt{j + 1}_score"] = [round(float(r[j][1]), 4) if len(r) > j else np.nan for r in rows]
    return pd.DataFrame(cols)


def output_table(products: pd.DataFrame, result: pd.DataFrame, depth: int) -> pd.DataFrame:
    from pipelines.taxonomy.tree import path_str

    out = pd.DataFrame({"product_id": products["product_id"].astype(str).to_numpy(),
                        "category_path": [path_str(p) for p in result["category_path"]]})
    for lvl in range(depth):
        out[f"conf_L{lvl + 1}"] = result[f"conf_L{lvl + 1}"].to_numpy().astype(float).round(4)
    out["stage"] = result["stage"].to_numpy()
    out["needs_review"] = result["needs_review"].to_numpy()
    return out.join(alternative_columns(result.get("alternatives"), len(out)))


def _check_suffix(path: Path):
    if path.suffix not in SUFFIXES:
        raise ValueError(f"--out must end in .parquet or .csv, got {path.name!r}")


def quarantine_path(out_file: Path) -> Path:
    return out_file.with_name(f"{out_file.stem}.quarantine{out_file.suffix}")


def classify_inputs(settings, input_dir, model_dir=None) -> list[Path]:
    """What a classify run reads (the export, the model given, the work dir's models and spaces): its outputs may
    not be, nor lie inside, any of them."""
    from pipelines.inference.stage1 import stage1_dir

    work = Path(settings.work_dir)
    return [Path(input_dir), *([Path(model_dir)] if model_dir else []), stage1_dir(settings),
            *(work / name for name in WORK_INPUTS)]


def checked_outputs(out_file, inputs) -> tuple[Path, Path]:
    """(predictions path, quarantine path), both writable and neither an input, before any work is done."""
    out_file = Path(out_file)
    _check_suffix(out_file)
    return check_output_path(out_file, inputs), check_output_path(quarantine_path(out_file), inputs)


def write_table(df: pd.DataFrame, path: Path):
    """Atomically (temporary file + rename); CSV cells that a spreadsheet would evaluate as a formula are escaped."""
    _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        atomic_write_parquet(df, path)
    else:
        atomic_write_csv(df, path)


def write_outputs(table: pd.DataFrame, quarantine: pd.DataFrame, out_file: Path, q_path: Path):
    """The quarantine, then the predictions (the file a reader looks for comes last). A write that fails (disk
    full, file too large, permission) leaves the previous file in place and raises OutputPathError naming it."""
    for df, path in ((quarantine, q_path), (table, out_file)):
        try:
            write_table(df, path)
        except OSError as e:
            raise OutputPathError(f"cannot write {path}: {e.strerror or e}") from None


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
    out_file, q_path = checked_outputs(out_file, classify_inputs(settings, input_dir, model_dir))
    if not Path(input_dir).exists():
        raise FileNotFoundError(f"export {input_dir} not found")
    clf = classifier or TwoStage.load(settings, model_dir, mode)
    products, quarantine, rows_in = read_export_unlabelled(platform, input_dir, settings.shops_dir)
    t0 = time.perf_counter()
    result = classify_products(clf, products, platform, progress, settings.loader_workers)
    seconds = time.perf_counter() - t0
    table = output_table(products, result, clf.depth)
    if rows_in != len(table) + len(quarantine):
        raise RowCountMismatch(f"{platform}: {rows_in} rows read but {len(table)} classified + {len(quarantine)} "
                               "quarantined")
    write_outputs(table, quarantine, out_file, q_path)
    return {"platform": platform, "rows_in": rows_in, "classified": len(table), "quarantined": len(quarantine),
            "quarantined_by_reason": quarantine["reason_kind"].value_counts().to_dict(),
            "stage": {f"stage{k}": int(v) for k, v in table["stage"].value_counts().sort_index().items()},
            "needs_review": int(table["needs_review"].sum()), "seconds": round(seconds, 2),
            "items_per_s": round(len(table) / seconds, 1) if seconds > 0 else None,
            "mode": clf.mode, "threshold": clf.info.get("threshold"), "stage2": clf.info.get("stage2_source"),
            "out": str(out_file), "quarantine_out": str(q_path)}
