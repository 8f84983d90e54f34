"""The vectors each inference stage reads, computed from raw titles, descriptions and image paths.

Stage 1 reads the lexical view only (pipelines/features/lexical.py: TF-IDF SVD + stacked LinearSVC scores), so a
product costs a few sparse transforms: no sentence encoder, no image decoding. Stage 2 reads text, image and joint
vectors, computed only for the products routed to it, through the content-addressed embedding cache and the joint
heads saved by the embedding assets, with the encoders the Settings select (the manifest check in two_stage.py
makes sure they are the ones the model was trained with).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def embedding_texts(titles, descriptions) -> list[str]:
    """The text a product is embedded and lexically featurised by: title . description (store.text_of)."""
    from pipelines.features.store import text_of

    return [text_of(t, d) for t, d in zip(titles, descriptions)]


def load_lexical(work) -> dict:
    """The lexical space the `lexical_space` asset fitted in this work dir."""
    from pipelines.features import lexical

    path = Path(work) / "lexical_space"
    if not (path / "lexical.skops").exists():
        raise FileNotFoundError(f"{path}/lexical.skops missing: materialise the embedding assets first (prodcat run)")
    return lexical.load(path)


def lexical_features(space: dict, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[TF-IDF SVD | lexical expert scores] per text, as the lexical_embeddings asset computes them for non-train
    rows; ok = the text is not empty."""
    from pipelines.features import lexical

    if not texts:
        return np.zeros((0, 0), np.float32), np.zeros(0, bool)
    matrix = np.concatenate([lexical.transform(space["svd"], texts), lexical.expert_scores(space["expert"], texts)], 1)
    return matrix, np.array([bool(t.strip()) for t in texts])


class Stage2Features:
    """Text, image and joint vectors for the products stage 2 sees, through the embedding cache; the encoders
    (Settings.text_encoder / image_encoder) and the joint heads are loaded once."""

    def __init__(self, settings, modalities=("text", "image", "joint"), store=None):
        from models.alignment import load_heads
        from pipelines.features.encoders import load_encoder
        from pipelines.features.store import open_store

        self.modalities = [m for m in modalities if m in ("text", "image", "joint")]
        need_text = bool({"text", "joint"} & set(self.modalities))
        need_image = bool({"image", "joint"} & set(self.modalities))
        store = Path(store) if store is not None else settings.work("store")
        opts = {"threads": settings.threads, "weights_cache": settings.weights_cache}
        self.text_encoder = load_encoder(settings.text_encoder, **opts) if need_text else None
        self.image_encoder = load_encoder(settings.image_encoder, **opts) if need_image else None
        self.text_store = open_store(store, self.text_encoder) if need_text else None
        self.image_store = open_store(store, self.image_encoder) if need_image else None
        self.heads = load_heads(Path(settings.work_dir) / "joint_space") if "joint" in self.modalities else None

    @property
    def encoders(self) -> dict:
        """{'text': Encoder, 'image': Encoder} for the ones loaded (what the manifest check compares)."""
        return {k: e for k, e in (("text", self.text_encoder), ("image", self.image_encoder)) if e is not None}

    def __call__(self, texts: list[str], image_paths: list, num_workers: int | None = 0,
                 progress: bool = False) -> tuple[dict, dict]:
        """(features, available) per modality; `progress` shows the embedding bars (off inside another bar)."""
        from models.alignment import joint_embed
        from pipelines.features.store import embed_images, embed_texts

        features, available = {}, {}
        if self.text_encoder is not None:
            t = embed_texts(texts, self.text_encoder, self.text_store, progress=progress)
            features["text"], available["text"] = np.nan_to_num(t.vectors), t.ok
        if self.image_encoder is not None:
            i = embed_images(image_paths, self.image_encoder, self.image_store, num_workers=num_workers,
                             progress=progress)
            features["image"], available["image"] = np.nan_to_num(i.vectors), i.ok
        if self.heads is not None:
            j = joint_embed(self.heads, features["text"], features["image"], available["image"])
            features["joint"], available["joint"] = np.nan_to_num(j), available["text"].copy()
        return features, available
