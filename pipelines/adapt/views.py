"""The feature matrices adaptation trains and predicts on, computed once per new shop.

Training side: *every* product of the training shops (mapped or not, so each shop's mean is taken over all of its
products, as the new shop's is), the lexical view refitted on their mapped train rows (out-of-fold expert scores
there), MiniLM vectors from the content-addressed store. New shop: its unlabelled products (require_unlabelled),
through the same lexical space and embedder. Variants of the adaptation (centring on/off, self-training rounds) then
cost a training each, not a feature pass. Asked for (augment=), restyled copies of the labelled train rows come
with them (augment.py), so title augmentation is one more switch of the same views.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class AdaptViews:
    modalities: list
    space: dict  # the lexical space fitted on the training shops
    train_features: dict  # {modality: [n_train_products, d]}
    train_available: dict
    train_shop: np.ndarray  # platform per training product
    labels: list  # hand path (tuple) per training product, () where unmapped
    split: np.ndarray  # 'train' / 'val' / 'test' per training product
    new_shop: str
    new_features: dict  # {modality: [n_new_products, d]}
    new_available: dict
    new_groups: np.ndarray  # group id per new-shop product
    augmented: object = None  # augment.AugmentedRows: restyled copies of the labelled train rows (None: not asked)

    @property
    def mapped(self) -> np.ndarray:
        return np.array([len(p) > 0 for p in self.labels], bool)


def _texts(table: pd.DataFrame) -> list[str]:
    from pipelines.inference.features import embedding_texts

    return embedding_texts(table["title"], table["description"])


def training_side(tables: dict) -> pd.DataFrame:
    """The training shops' labelled products (onboard.training.load_training_shops) in one frame."""
    frames = [t.assign(platform=shop) for shop, t in sorted(tables.items())]
    return pd.concat(frames, ignore_index=True)


def build_adapt_views(tables: dict, new_products: pd.DataFrame, new_shop: str, embed=None,
                      modalities=("lexical", "text"), augment=None) -> AdaptViews:
    """AdaptViews of the training shops' `tables` ({shop: labelled products}) and the new shop's unlabelled
    `new_products` (LabelLeak if they hold a label column). `augment` (a number of variants or an
    augment.AugmentConfig) adds restyled copies of the labelled train rows; None (default) computes none."""
    from pipelines.adapt.augment import augment_config, augmented_training_rows
    from pipelines.inference.features import lexical_features
    from pipelines.onboard.classifier import lexical_view
    from pipelines.onboard.products import require_unlabelled

    require_unlabelled(new_products, "adaptation")
    if "text" in modalities and embed is None:
        raise ValueError("adapting a classifier that reads text vectors needs an embedder (onboard.embedding)")
    rows = training_side(tables)
    texts, new_texts = _texts(rows), _texts(new_products)
    labels = [tuple(p) for p in rows["category_path"]]
    split = rows["split"].to_numpy().astype(str)
    groups = (rows["platform"].astype(str) + ":" + rows["group_id"].astype(str)).tolist()
    fit = np.array([bool(p) for p in labels]) & (split == "train")
    space, lex = lexical_view(texts, labels, groups, fit)
    new_lex, new_lex_ok = lexical_features(space, new_texts)
    feats, avail = {"lexical": lex}, {"lexical": np.array([bool(t.strip()) for t in texts])}
    new_feats, new_avail = {"lexical": new_lex}, {"lexical": new_lex_ok}
    if "text" in modalities:
        (feats["text"], avail["text"]), (new_feats["text"], new_avail["text"]) = embed(texts), embed(new_texts)
    augment = augment_config(augment)
    augmented = augmented_training_rows(rows, texts, labels, groups, fit, space, augment, modalities, embed) \
        if augment else None
    return AdaptViews(list(modalities), space, feats, avail, rows["platform"].to_numpy().astype(str), labels, split,
                      new_shop, new_feats, new_avail, new_products["group_id"].astype(str).to_numpy(), augmented)
