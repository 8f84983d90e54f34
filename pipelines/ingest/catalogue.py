"""Reading/writing product tables and the cross-platform catalogue."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

LIST_COLUMNS = ("native_path", "category_path")


def as_lists(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet gives list columns back as numpy arrays; the canonical schema uses Python lists."""
    for col in LIST_COLUMNS:
        if col in df.columns:
            df[col] = df[col].map(lambda v: [str(x) for x in v] if v is not None else [])
    return df


def read_products(path: str | Path) -> pd.DataFrame:
    return as_lists(pd.read_parquet(path))


def content_hash(df: pd.DataFrame) -> str:
    """Stable hash of a table's content (used as a Dagster data version)."""
    flat = df.astype(str) if len(df) else df
    h = hashlib.sha256(",".join(df.columns).encode())
    h.update(pd.util.hash_pandas_object(flat, index=False).values.tobytes())
    return h.hexdigest()[:16]


def union_catalogue(per_platform: dict[str, pd.DataFrame]) -> pd.DataFrame:
    frames = [df for _, df in sorted(per_platform.items()) if len(df)]
    cat = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    # node identity is the full path: product ids are only unique within a platform
    cat.insert(0, "uid", cat["platform"] + ":" + cat["product_id"].astype(str))
    return cat


def split_manifest(catalogue: pd.DataFrame) -> pd.DataFrame:
    return catalogue[["uid", "platform", "group_id", "split"]].copy()


def groups_crossing_splits(catalogue: pd.DataFrame) -> pd.DataFrame:
    per_group = catalogue.groupby(["platform", "group_id"])["split"].nunique()
    return per_group[per_group > 1].reset_index()
