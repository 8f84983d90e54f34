"""A stand-in for the champion when measuring onboarding leave-one-platform-out: a hierarchical classifier trained
on the *other* shops only, with the champion's classify() contract (pipelines/inference/two_stage.TwoStage).

The champion trained on every benchmark shop, so it cannot measure how a shop it never saw is onboarded. This model
is the same family (models/classifier.py, dynamic masking, per-level temperatures fitted on validation, abstention
thresholds of stage1.yaml) on the views that transfer across shops: the lexical view (TF-IDF SVD + stacked LinearSVC
scores, pipelines/features/lexical.py) refitted on the training shops' train rows, and, by default, the MiniLM
sentence vectors of the content-addressed store, fused late (the best zero-label strategy of the cross-platform
matrix). Minutes on the full benchmark with its embeddings cached. Early stopping and temperatures read the
training shops' validation rows; the new shop's labels reach nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ONBOARD_MODALITIES = ("lexical", "text")


FUSIONS = ("late", "early")


def onboard_strategy(modalities=ONBOARD_MODALITIES, fusion: str = "late") -> dict:
    """The classifier config: stage1.yaml for the lexical view alone, `fusion`'s strategy config (late.yaml or
    early.yaml) for several views."""
    from pipelines.classify.train import strategy_config

    modalities = list(modalities)
    unknown = sorted(set(modalities) - {"lexical", "text"})
    if unknown or not modalities:
        raise ValueError(f"onboarding classifier modalities are 'lexical' and/or 'text', got {modalities}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r}: one of {FUSIONS}")
    base = strategy_config("stage1" if modalities == ["lexical"] else fusion)
    suffix = "" if fusion == "late" else f"-{fusion}"
    return {k: v for k, v in base.items() if k not in ("routing", "abstain")} | {
        "name": "onboard-" + "-".join(modalities) + suffix, "modalities": modalities}


def _texts(titles, descriptions) -> list[str]:
    from pipelines.inference.features import embedding_texts

    return embedding_texts(titles, descriptions)


@dataclass
class ShopClassifier:
    """classify(titles, descriptions, image_paths) -> category_path (after abstention), full_path, conf_L1..,
    stage, needs_review, alternatives: the columns TwoStage.classify gives, so onboarding runs on either."""

    stage: object  # pipelines.inference.calibration.Stage
    lexical: dict  # {"svd": ..., "expert": ...}
    embed: object | None  # onboard.embedding.TextEmbedder when the model reads text vectors
    abstain_at: list
    info: dict = field(default_factory=dict)
    mode: str = "onboard"

    @property
    def depth(self) -> int:
        return self.stage.model.hierarchy.depth

    def features(self, texts: list[str]) -> tuple[dict, dict]:
        from pipelines.inference.features import lexical_features

        lex, ok = lexical_features(self.lexical, texts)
        features, available = {"lexical": lex}, {"lexical": ok}
        if "text" in self.stage.modalities:
            features["text"], available["text"] = self.embed(texts)
        return features, available

    def classify(self, titles, descriptions, image_paths=None, num_workers: int | None = 0,
                 progress: bool = False) -> pd.DataFrame:
        from pipelines.inference.calibration import abstain

        texts = _texts(titles, descriptions)
        depth = self.depth
        if not texts:
            pred_paths, conf, alternatives = [], np.zeros((0, depth), np.float32), []
        else:
            pred = self.stage.predict(*self.features(texts))
            pred_paths, conf, alternatives = list(pred.paths), pred.conf, list(pred.alternatives or [[]] * len(texts))
        cut, review = abstain(pred_paths, conf, self.abstain_at or [0.0] * depth)
        out = pd.DataFrame({"category_path": cut, "full_path": pred_paths})
        for lvl in range(depth):
            out[f"conf_L{lvl + 1}"] = conf[:, lvl] if len(conf) else np.zeros(0, np.float32)
        out["stage"], out["needs_review"] = np.ones(len(out), np.int8), review
        out["alternatives"] = alternatives
        return out


def lexical_view(texts: list[str], labels: list, groups: list, fit: np.ndarray) -> tuple[dict, np.ndarray]:
    """The lexical space fitted on the `fit` rows, and every row's [SVD | expert scores]; fit rows get their
    out-of-fold expert scores (a training row must not see an expert that saw it)."""
    from pipelines.features import lexical

    fit_texts = [t for t, f in zip(texts, fit) if f]
    svd = lexical.fit_lexical(fit_texts)
    expert, _, oof = lexical.fit_expert(fit_texts, [labels[i] for i in np.flatnonzero(fit)],
                                        [groups[i] for i in np.flatnonzero(fit)])
    scores = lexical.expert_scores(expert, texts)
    scores[fit] = oof
    return {"svd": svd, "expert": expert}, np.concatenate([lexical.transform(svd, texts), scores], 1)


def fit_shop_classifier(rows: pd.DataFrame, taxonomy, out_dir, *, embed=None, modalities=ONBOARD_MODALITIES,
                        seed: int = 0, threads: int = 0, max_epochs: int | None = None) -> ShopClassifier:
    """Train on the training shops' mapped rows (`title, description, category_path, split, platform, group_id`):
    fit on split 'train', early stopping and temperatures on 'val', the test split scored as usual."""
    from pipelines.inference.stage1 import stage1_config

    cfg = onboard_strategy(modalities)
    if "text" in cfg["modalities"] and embed is None:
        raise ValueError("a classifier reading text vectors needs an embedder (onboard.embedding.TextEmbedder)")
    texts = _texts(rows["title"], rows["description"])
    labels = [tuple(p) for p in rows["category_path"]]
    split = rows["split"].to_numpy()
    groups = (rows["platform"].astype(str) + ":" + rows["group_id"].astype(str)).tolist()
    space, lex = lexical_view(texts, labels, groups, split == "train")
    features = {"lexical": lex}
    available = {"lexical": np.array([bool(t.strip()) for t in texts])}
    if "text" in cfg["modalities"]:
        features["text"], available["text"] = embed(texts)
    stage, info = train_calibrated_stage(cfg, features, available, labels, split, taxonomy, out_dir, seed=seed,
                                         threads=threads, max_epochs=max_epochs)
    info["training_shops"] = sorted(rows["platform"].unique().tolist())
    return ShopClassifier(stage, space, embed, list(stage1_config().get("abstain", [])), info)


def train_calibrated_stage(cfg: dict, features: dict, available: dict, labels: list, split: np.ndarray, taxonomy,
                           out_dir, *, seed: int, threads: int, max_epochs) -> tuple:
    """Train `cfg` on split 'train' (early stopping on 'val', the training shops' rows) and calibrate its
    temperatures on the same 'val' rows. -> (calibration.Stage, info)."""
    from pipelines.classify.train import load_model, train_classifier
    from pipelines.inference.calibration import Stage, calibrate

    res = train_classifier(cfg, features, available, labels, split, taxonomy, Path(out_dir), seed=seed,
                           max_epochs=max_epochs, threads=threads)
    model = load_model(res.model_dir)
    val = np.flatnonzero(split == "val")
    cal = calibrate(model, {m: features[m][val] for m in model.modalities},
                    {m: available[m][val] for m in model.modalities}, [labels[i] for i in val])
    return Stage(model, cal["temperatures"]), {
        "strategy": cfg["name"], "train_rows": int((split == "train").sum()), "val_hF1": res.val.get("hF1"),
        "epochs": res.epochs, "train_seconds": round(res.train_seconds, 1), "temperatures": cal["temperatures"]}
