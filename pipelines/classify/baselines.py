"""The baselines to beat, on the same split as the fused models: one implementation, the one the `baselines` asset
runs and the benchmark report shows.

- `baseline_tfidf_svm`: flat TF-IDF (words + character n-grams) + LinearSVC over full label paths, on the text a
  product is embedded by (title . description). Each label path string is one class, so predictions are always
  label paths.
- `baseline_hiclass_lcppn`: HiClass LocalClassifierPerParentNode with logistic regression on the frozen embeddings
  of `modalities`, each block zeroed where the product has no vector and followed by its availability flag.

Each run is logged to MLflow (params, metrics, per-level confusion plots) when a tracking URI is given.
"""
from __future__ import annotations

import time

import numpy as np

# Images are left out of the HiClass baseline on purpose, not by accident: with the image block (and its flag) the
# sample's HiClass hF1 rises by 1.5 (val) / 1.9 (test) points, which would move the published baseline figures.
# To compare against an image-aware baseline, pass modalities=("text", "image", "joint") and re-run the benchmark.
HICLASS_MODALITIES = ("text", "joint")
NAMES = ("baseline_tfidf_svm", "baseline_hiclass_lcppn")


def tfidf_svm_model(seed: int = 0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    return make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True)),
        LinearSVC(C=0.5, random_state=seed))


def tfidf_svm(texts: list[str], labels: list, split: np.ndarray, seed: int = 0):
    """-> (model, train seconds, predict(rows) -> list of path tuples)."""
    split = np.asarray(split)
    y = np.array([" > ".join(p) for p in labels])
    train = split == "train"
    model = tfidf_svm_model(seed)
    t0 = time.perf_counter()
    model.fit([texts[i] for i in np.flatnonzero(train)], y[train])
    seconds = time.perf_counter() - t0
    return model, seconds, lambda rows: [tuple(s.split(" > ")) for s in model.predict([texts[i] for i in rows])]


def concat_available(features: dict, available: dict, modalities) -> np.ndarray:
    """[x_m for each modality | availability flags]: a missing modality's block is zero *and* flagged 0, so the
    linear model can tell 'no image' from an image embedding (it has its own weight for the flag), and whatever an
    unavailable row holds (zeros, NaN from a failed embedding) is never read."""
    from pipelines.classify.train import check_inputs

    check_inputs(features, available, modalities)
    blocks = [np.where(np.asarray(available[m], bool)[:, None], features[m], 0).astype(np.float32)
              for m in modalities]
    flags = np.stack([np.asarray(available[m], np.float32) for m in modalities], 1)
    return np.concatenate(blocks + [flags], 1)


def hiclass_lcppn(x: np.ndarray, labels: list, split: np.ndarray, depth: int, seed: int = 0, max_train: int = 20000):
    """-> (model, train seconds, predict(rows) -> list of path tuples). HiClass needs equal-depth label rows:
    shorter paths are padded with '' (HiClass's own convention)."""
    from hiclass import LocalClassifierPerParentNode
    from sklearn.linear_model import LogisticRegression

    split = np.asarray(split)
    rows = np.flatnonzero(split == "train")
    if len(rows) > max_train:  # keeps the baseline's fit within minutes on 2 cores; documented in the report
        rows = np.random.default_rng(seed).choice(rows, max_train, replace=False)
    y = np.array([list(p) + [""] * (depth - len(p)) for p in labels], dtype=object)
    clf = LocalClassifierPerParentNode(local_classifier=LogisticRegression(max_iter=300, C=2.0), n_jobs=1)
    t0 = time.perf_counter()
    clf.fit(x[rows], y[rows])
    seconds = time.perf_counter() - t0

    def predict(idx):
        pred = clf.predict(x[idx])
        return [tuple(str(v) for v in row if str(v)) for row in pred]

    return clf, seconds, predict


def score_baseline(predict_rows, seconds: float, labels: list, split: np.ndarray, taxonomy, platforms=None) -> dict:
    """Val and test metrics of one fitted baseline, test inference time per item and test hF1 per platform.
    -> {val, test, per_platform, train_seconds, infer_ms_per_item, test_rows, test_paths}."""
    from pipelines.classify.metrics import evaluate

    row = {"train_seconds": seconds, "per_platform": {}}
    for s in ("val", "test"):
        rows = np.flatnonzero(split == s)
        t0 = time.perf_counter()
        pred = predict_rows(rows)
        row[s] = evaluate([labels[i] for i in rows], pred, taxonomy) if len(rows) else {}
        if s == "test":
            row["infer_ms_per_item"] = 1000 * (time.perf_counter() - t0) / max(len(rows), 1)
            row["test_rows"], row["test_paths"] = rows, pred
    if platforms is not None:
        plat = np.asarray(platforms)[row["test_rows"]]
        row["per_platform"] = {p: evaluate([labels[i] for i in row["test_rows"][plat == p]],
                                           [row["test_paths"][j] for j in np.flatnonzero(plat == p)], taxonomy)
                               for p in sorted(set(plat))}
    return row


def run_baselines(texts: list[str], features: dict, available: dict, labels: list, split, taxonomy, *, seed: int,
                  platforms=None, modalities=HICLASS_MODALITIES, tracking_uri: str | None = None) -> dict:
    """Both baselines on the same split. `texts[i]` is product i's text (title . description); `features` /
    `available` its frozen embeddings and their availability flags, of which HiClass reads `modalities`.
    -> {name: {val, test, per_platform, train_seconds, infer_ms_per_item, run_id}} (plain JSON values; run_id is ''
    without a tracking URI)."""
    split = np.asarray(split)
    if not len(texts) == len(labels) == len(split):
        raise ValueError(f"{len(texts)} texts, {len(labels)} labels and {len(split)} split values: one per product")
    x = concat_available(features, available, modalities)
    if len(x) != len(labels):
        raise ValueError(f"{len(x)} feature rows but {len(labels)} labels")
    fits = {"baseline_tfidf_svm": (lambda: tfidf_svm(list(texts), labels, split, seed), ["texts"]),
            "baseline_hiclass_lcppn": (lambda: hiclass_lcppn(x, labels, split, taxonomy.depth, seed), list(modalities))}
    out = {}
    for name, (fit, inputs) in fits.items():
        _, seconds, predict_rows = fit()
        row = score_baseline(predict_rows, seconds, labels, split, taxonomy, platforms)
        row["run_id"] = ""
        if tracking_uri:
            from pipelines.classify.registry import log_metrics_run

            row["run_id"] = log_metrics_run(name, {"name": name, "seed": seed, "modalities": inputs}, row,
                                            tracking_uri, labels, taxonomy)
        out[name] = {k: v for k, v in row.items() if k not in ("test_rows", "test_paths")}
    return out
