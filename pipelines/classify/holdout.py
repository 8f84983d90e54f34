"""Leave-one-platform-out evaluation: train on every other shop, evaluate on the shop the model has never seen.

    build_training_set(products, manifests, holdout, out_dir, cfg)   -> the training side of one holdout, saved
    evaluate_holdout(train_dir, products, manifests, strategy, ...)  -> metrics on the unseen shop (all + test split)
    few_shot_curve(train_dir, products, manifests, strategy, ...)    -> hF1 after adding 1%, 5%, ... of its groups

The matrix, gaps, heatmap and the report section built from these cells are in pipelines/reports/holdout.py.

`products[p]` is a shop's normalised table, `manifests[m][p]` its (uid, ok) embedding manifest for modality m
(row order of work/embeddings/<m>/<p>.npy). The lexical view (TF-IDF SVD + stacked SVM expert) learns from labels,
so each holdout refits it on the training shops only: the unseen shop's labels never reach any model.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.settings import ROOT

CONFIG_PATH = ROOT / "models" / "configs" / "holdout.yaml"
FROZEN = ("text", "image", "joint")  # label-free embeddings, shared with the in-distribution models


def load_holdout_config(path=None) -> dict:
    """models/configs/holdout.yaml (or `path`): title normalisation and the few-shot strategy and fractions."""
    path = Path(path or CONFIG_PATH)
    cfg = yaml.safe_load(path.read_text())
    missing = [k for k in ("normalise_titles", "fewshot") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    return cfg


# ---- domain shift helper: shop-specific title styles ----------------------------------------------------------

_GENDER = {"women's": "women", "womens": "women", "ladies": "women", "men's": "men", "mens": "men",
           "boy's": "boys", "girl's": "girls", "unisex": "unisex"}
_NOISE = re.compile(r"\b(pack of \d+|set of \d+|combo|\d+\s*(pcs|pieces|ml|gm|g|cm|mm|inch))\b")


def normalise_title(title: str, brand: str = "") -> str:
    """One title style for every shop: lower case, brand removed (Myntra and Flipkart lead with it, H&M never
    names it), gender words unified, pack/size noise dropped. Applied to the lexical view of every shop alike."""
    t = str(title or "").lower()
    b = str(brand or "").lower().strip()
    if b and len(b) > 1:
        t = t.replace(b, " ")
    t = _NOISE.sub(" ", t)
    words = [_GENDER.get(w, w) for w in re.findall(r"[a-z0-9][a-z0-9'&-]*", t)]
    return " ".join(words)


def lexical_texts(table: pd.DataFrame, normalise: bool) -> list[str]:
    from pipelines.features.store import text_of

    titles = ([normalise_title(t, b) for t, b in zip(table["title"], table["brand"].fillna(""))] if normalise
              else table["title"].tolist())
    return [text_of(t, d) for t, d in zip(titles, table["description"])]


# ---- the training side of one holdout ---------------------------------------------------------------------------

def _with_uid(table: pd.DataFrame) -> pd.DataFrame:
    table = table.reset_index(drop=True)
    return table.assign(uid=table["platform"] + ":" + table["product_id"].astype(str))


def build_training_set(products: dict, manifests: dict, holdout: str, out_dir, cfg: dict | None = None) -> dict:
    """Rows of the training shops (their train + val splits), their embedding manifests, and a lexical view fitted
    on their train rows (out-of-fold expert scores on those rows). Saved under out_dir; -> summary."""
    from pipelines.features import lexical

    cfg = cfg or load_holdout_config()
    train_shops = sorted(p for p in products if p != holdout)
    if not train_shops:
        raise ValueError(f"holdout {holdout!r}: no other platform to train on")
    table = _with_uid(pd.concat([products[p] for p in train_shops], ignore_index=True))
    table = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit = table["split"] == "train"
    texts = lexical_texts(table, cfg["normalise_titles"])
    t0 = time.perf_counter()
    fit_texts = [t for t, f in zip(texts, fit) if f]
    svd = lexical.fit_lexical(fit_texts)
    expert, classes, oof = lexical.fit_expert(fit_texts, table.loc[fit, "category_path"].tolist(),
                                              (table.loc[fit, "platform"] + table.loc[fit, "group_id"]).tolist())
    lexical.save({"svd": svd, "expert": expert}, out)
    scores = lexical.expert_scores(expert, texts)
    scores[fit.to_numpy()] = oof  # a training row must not see an expert that saw it
    np.save(out / "lexical.npy", np.concatenate([lexical.transform(svd, texts), scores], 1))
    table[["uid", "platform", "product_id", "group_id", "split", "category_path"]].to_parquet(out / "rows.parquet",
                                                                                             index=False)
    for m in FROZEN:
        pd.concat([manifests[m][p].assign(platform=p) for p in train_shops],
                  ignore_index=True)[["uid", "ok", "platform"]].to_parquet(out / f"manifest_{m}.parquet", index=False)
    summary = {"holdout": holdout, "training_platforms": train_shops, "rows": len(table), "train_rows": int(fit.sum()),
               "lexical_seconds": round(time.perf_counter() - t0, 1), "normalise_titles": cfg["normalise_titles"],
               "classes": len(classes)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _training_features(train_dir: Path, work: Path):
    from pipelines.features.matrices import assemble

    rows = pd.read_parquet(train_dir / "rows.parquet")
    manifests = {}
    for m in FROZEN:
        man = pd.read_parquet(train_dir / f"manifest_{m}.parquet")
        manifests[m] = {p: g.drop(columns="platform").reset_index(drop=True) for p, g in man.groupby("platform")}
    features, available = assemble(rows, manifests, work)
    features["lexical"] = np.load(train_dir / "lexical.npy")
    available["lexical"] = np.ones(len(rows), bool)
    return rows, features, available


def _holdout_features(train_dir: Path, table: pd.DataFrame, manifests: dict, work: Path, cfg: dict):
    from pipelines.features import lexical
    from pipelines.features.matrices import assemble

    features, available = assemble(table, {m: {table["platform"].iloc[0]: manifests[m]} for m in FROZEN}, work)
    fitted = lexical.load(train_dir)
    texts = lexical_texts(table, cfg["normalise_titles"])
    features["lexical"] = np.concatenate([lexical.transform(fitted["svd"], texts),
                                          lexical.expert_scores(fitted["expert"], texts)], 1)
    available["lexical"] = np.array([bool(t.strip()) for t in texts])
    return features, available


def _concat(a: dict, b: dict) -> dict:
    return {m: np.concatenate([a[m], b[m]]) for m in a}


# ---- one cell: strategy x holdout ------------------------------------------------------------------------------

def _not_applicable(modalities, available: dict) -> str:
    """Why a strategy cannot learn anything on this training side (e.g. image-only with no images), or ''."""
    if not any(available[m].any() for m in modalities):
        return f"training platforms have no {'/'.join(modalities)} vectors"
    return ""


def _scores(labels, paths, prob, fallback, taxonomy) -> dict:
    from pipelines.classify.metrics import evaluate

    if not len(labels):
        return {}
    return evaluate(labels, paths, taxonomy, confidence=prob) | {"fallback_rate": float(np.mean(fallback)),
                                                                 "n": len(labels)}


def _training_side(train_dir: Path, work: Path, table: pd.DataFrame, h_feats: dict, h_avail: dict,
                   extra_train: np.ndarray | None):
    """The training shops' rows, plus the unseen shop's `extra_train` rows (few-shot) as train rows.
    -> (features, available, labels, split)."""
    rows, feats, avail = _training_features(train_dir, work)
    labels = [tuple(p) for p in rows["category_path"]]
    split = rows["split"].to_numpy()
    if extra_train is not None and extra_train.any():
        feats = _concat(feats, {m: v[extra_train] for m, v in h_feats.items()})
        avail = _concat(avail, {m: v[extra_train] for m, v in h_avail.items()})
        labels += [tuple(p) for p in table.loc[extra_train, "category_path"]]
        split = np.concatenate([split, np.full(int(extra_train.sum()), "train")])
    return feats, avail, labels, split


def _unseen_shop_scores(model_dir, modalities, table: pd.DataFrame, h_feats: dict, h_avail: dict,
                        extra_train: np.ndarray | None, taxonomy) -> dict:
    """The trained model on every mapped product of the unseen shop (`all`, without the rows it trained on) and on
    its grouped test split (`test`)."""
    from pipelines.classify.train import predict

    paths, _, prob, fallback = predict(model_dir, {m: h_feats[m] for m in modalities},
                                       {m: h_avail[m] for m in modalities}, return_fallback=True)
    true = [tuple(p) for p in table["category_path"]]
    test = (table["split"] == "test").to_numpy()
    evaluated = np.ones(len(table), bool) if extra_train is None else ~extra_train
    pick = lambda mask: _scores([true[i] for i in np.flatnonzero(mask)], [paths[i] for i in np.flatnonzero(mask)],
                                prob[mask], fallback[mask], taxonomy)
    return {"all": pick(evaluated), "test": pick(test & evaluated)}


def evaluate_holdout(train_dir, holdout_products: pd.DataFrame, holdout_manifests: dict, strategy: str, work,
                     taxonomy, out_dir, cfg: dict | None = None, *, seed: int, extra_train: np.ndarray | None = None,
                     max_epochs: int | None = None, threads: int = 0) -> dict:
    """Train `strategy` on the training side, predict every mapped product of the unseen shop.
    -> {all: metrics, test: metrics (its grouped test split), n_train, holdout_modalities, ...}.
    `extra_train` (bool per holdout row) moves those rows into training (few-shot adaptation); they are then
    excluded from evaluation, which reads the test split only."""
    from pipelines.classify.train import strategy_config, train_classifier

    cfg = cfg or load_holdout_config()
    train_dir, work = Path(train_dir), Path(work)
    modalities = strategy_config(strategy)["modalities"]
    table = _with_uid(holdout_products)
    h_feats, h_avail = _holdout_features(train_dir, table, holdout_manifests, work, cfg)
    feats, avail, labels, split = _training_side(train_dir, work, table, h_feats, h_avail, extra_train)
    result = {"holdout": table["platform"].iloc[0], "strategy": strategy, "n_train": int((split == "train").sum()),
              "n_holdout": len(table),
              "holdout_modalities": {m: round(float(h_avail[m].mean()), 4) for m in modalities},
              "training_modalities": {m: round(float(avail[m].mean()), 4) for m in modalities}}
    why = _not_applicable(modalities, avail)
    if why:
        return result | {"not_applicable": why, "all": {}, "test": {}}
    t0 = time.perf_counter()
    res = train_classifier(strategy, {m: feats[m] for m in modalities}, {m: avail[m] for m in modalities}, labels,
                           split, taxonomy, out_dir, seed=seed, max_epochs=max_epochs, threads=threads)
    result |= _unseen_shop_scores(res.model_dir, modalities, table, h_feats, h_avail, extra_train, taxonomy)
    result |= {"val_in_distribution": res.val, "train_seconds": round(time.perf_counter() - t0, 1),
               "epochs": res.epochs}
    (Path(out_dir) / "holdout_metrics.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def few_shot_rows(table: pd.DataFrame, fraction: float, seed: int = 0) -> np.ndarray:
    """A deterministic `fraction` of the holdout shop's train-split product groups (whole groups, so no variant of
    a labelled product leaks into the test split, which is grouped the same way)."""
    from pipelines.ingest.splits import stable_unit

    train = (table["split"] == "train").to_numpy()
    u = np.array([stable_unit(f"fewshot{seed}:{p}:{g}") for p, g in zip(table["platform"], table["group_id"])])
    return train & (u < fraction / 0.8)  # the train split holds 80% of groups


def few_shot_curve(train_dir, holdout_products, holdout_manifests, strategy, work, taxonomy, out_dir,
                   fractions=(0.0, 0.01, 0.05), cfg=None, *, seed: int, threads: int = 0) -> list[dict]:
    """hF1 on the unseen shop's test split after adding each fraction of its labelled products to training."""
    table = _with_uid(holdout_products)
    curve = []
    for f in fractions:
        extra = few_shot_rows(table, f, seed) if f > 0 else np.zeros(len(table), bool)
        r = evaluate_holdout(train_dir, holdout_products, holdout_manifests, strategy, work, taxonomy,
                             Path(out_dir) / f"fewshot_{f:g}", cfg, seed=seed, extra_train=extra, threads=threads)
        curve.append({"fraction": f, "labelled_products": int(extra.sum()), "test_hF1": r["test"].get("hF1"),
                      "test_n": r["test"].get("n", 0)})
    return curve
