"""Per-shop feature standardisation: a shop's vectors minus that shop's own mean.

Why: a shop's title style (brand first, marketing names, description length) moves all of its sentence vectors the
same way; what separates categories is the direction *within* a shop. Centring every shop by its own mean (the
training shops by theirs, a new shop by the mean of its unlabelled products, no label read) removes the shop offset
the classifier would otherwise read as category evidence. Unit-norm views (MiniLM) are renormalised afterwards so
the classifier sees vectors of the scale it was built for; rows without a vector stay zero.
"""
from __future__ import annotations

import numpy as np

UNIT_NORM_VIEWS = ("text",)  # views the embedder returns as unit vectors


class NoVectorsToCentre(ValueError):
    """A shop has no available row in a view, so it has no mean to centre by."""


def shop_mean(vectors: np.ndarray, available: np.ndarray, shop: str = "") -> np.ndarray:
    """The mean of the rows that hold a vector (float64 for a stable sum)."""
    available = np.asarray(available, bool)
    if not available.any():
        raise NoVectorsToCentre(f"shop {shop or '?'}: no row with a vector to take a mean of")
    return np.asarray(vectors, np.float64)[available].mean(0)


def centre_rows(vectors: np.ndarray, available: np.ndarray, mean: np.ndarray, unit_norm: bool) -> np.ndarray:
    """`vectors - mean` on the available rows (renormalised when `unit_norm`), zeros elsewhere."""
    available = np.asarray(available, bool)
    out = np.where(available[:, None], np.asarray(vectors, np.float64) - mean[None, :], 0.0)
    if unit_norm:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.where(norms > 0, out / np.maximum(norms, 1e-12), 0.0)
    return out.astype(np.float32)


def centre_by_shop(vectors: np.ndarray, available: np.ndarray, shops, unit_norm: bool) -> tuple[np.ndarray, dict]:
    """Every shop's rows centred by its own mean. -> (centred matrix, {shop: mean})."""
    shops = np.asarray(shops).astype(str)
    out = np.zeros(np.shape(vectors), np.float32)
    means = {}
    for shop in sorted(set(shops)):
        rows = shops == shop
        means[shop] = shop_mean(vectors[rows], available[rows], shop)
        out[rows] = centre_rows(vectors[rows], available[rows], means[shop], unit_norm)
    return out, means
