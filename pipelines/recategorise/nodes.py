"""Taxonomy nodes and the products sitting at them: node addressing, the shops' native fine labels, loading.

A node is a tuple path ("Footwear", "Shoes"); the products *at* a node are those whose shared-taxonomy path ends
exactly there (not deeper): they are what a shallow node lumps together. Native fine labels (Myntra articleType,
H&M product_type_name, a Flipkart tree level) are what the shared taxonomy dropped; they only evaluate clusters.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.settings import PLATFORMS
from pipelines.taxonomy.tree import Taxonomy, parse_path, path_str


def as_node(node) -> tuple[str, ...]:
    """'Footwear > Shoes' or ('Footwear', 'Shoes') -> ('Footwear', 'Shoes')."""
    return parse_path(node) if isinstance(node, str) else tuple(node)


def node_slug(node) -> str:
    """'Footwear > Shoes' -> 'footwear_shoes' (directory names)."""
    return "_".join(as_node(node)).lower().replace(" & ", "-and-").replace(" ", "-").replace("/", "-")


def at_node(products: pd.DataFrame, node) -> np.ndarray:
    """Products whose shared-taxonomy path ends exactly at `node` (not deeper)."""
    node = as_node(node)
    return products["category_path"].map(lambda p: tuple(p) == node).to_numpy(bool)


def native_label(native_path, platform: str, node, cfg: dict) -> str | None:
    """The shop's fine label below `node`: the configured native level, skipping audience levels ("For Girls")."""
    levels = cfg["native_label_level"].get(path_str(as_node(node)), cfg["native_label_level"]["default"])
    if platform not in levels:
        return None
    path, k = list(native_path), int(levels[platform])
    while k < len(path) and any(path[k].startswith(p) for p in cfg.get("native_skip_prefixes", [])):
        k += 1
    return path[k] if k < len(path) else None


def native_labels(products: pd.DataFrame, node, cfg: dict) -> pd.Series:
    """native_label per product (None where the shop has no label at that level), aligned with `products`."""
    return pd.Series([native_label(n, p, node, cfg) for n, p in zip(products["native_path"], products["platform"])],
                     index=products.index, dtype=object)


def load_raw_products(data_root: str | Path, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """Every platform's raw export under data_root, normalised (images are checked later, for node products only)."""
    from pipelines.ingest.normalize import normalize_platform

    frames = [normalize_platform(p, Path(data_root) / p, taxonomy=taxonomy, verify_images=False).products
              for p in PLATFORMS if (Path(data_root) / p).is_dir()]
    if not frames:
        raise FileNotFoundError(f"no platform export under {data_root} (expected {', '.join(PLATFORMS)})")
    return pd.concat(frames, ignore_index=True)


def node_products(products: pd.DataFrame, nodes: list) -> pd.DataFrame:
    """The products sitting exactly at `nodes`, with their images checked (unreadable -> image_path None)."""
    from pipelines.ingest.normalize import check_images

    out = products[np.any([at_node(products, n) for n in nodes], axis=0)].reset_index(drop=True)
    paths = [p if isinstance(p, str) and p else None for p in out["image_path"]]  # NaN from parquet = no image
    out["image_status"] = check_images(paths)
    out.loc[out["image_status"] != "ok", "image_path"] = None
    return out
