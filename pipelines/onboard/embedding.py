"""Sentence vectors for onboarding, through the content-addressed store: the product texts the embedding assets
already cached (title . description) cost nothing, and the anchor names are encoded once per store.

One embedder serves the out-of-scope detector and the measurement classifier, so both read the very vectors the
`text_embeddings` asset computed with the Settings' text encoder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class TextEmbedder:
    """texts -> (unit vectors [n, d] with zeros where a text is empty, ok [n])."""

    def __init__(self, encoder: str, store_dir, threads: int = 0, weights_cache=None, progress: bool = False):
        from pipelines.features.encoders import load_encoder
        from pipelines.features.store import open_store

        self.encoder = load_encoder(encoder, threads=threads, weights_cache=weights_cache)
        self.store = open_store(Path(store_dir), self.encoder)
        self.progress = progress

    @classmethod
    def from_settings(cls, settings, store_dir=None) -> "TextEmbedder":
        """The settings' encoder over `store_dir` (default: the work dir's store, the embedding assets' own)."""
        return cls(settings.text_encoder, store_dir or settings.work("store"), settings.threads,
                   settings.weights_cache, progress=not settings.quiet)

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def __call__(self, texts) -> tuple[np.ndarray, np.ndarray]:
        from pipelines.features.store import embed_texts

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, bool)
        res = embed_texts(texts, self.encoder, self.store, progress=self.progress)
        vectors = np.nan_to_num(np.asarray(res.vectors, np.float32))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0).astype(np.float32), res.ok

