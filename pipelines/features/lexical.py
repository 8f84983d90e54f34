"""Lexical text features: word + character n-gram TF-IDF reduced by truncated SVD, fitted on the train split.

Shop titles are short and formulaic ("Puma Men Grey T-shirt"); exact tokens and sub-words carry signal that a
sentence encoder smooths away, which is why TF-IDF + LinearSVC is such a strong baseline. Fusion strategies get
this dense lexical view as one more modality."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def fit_lexical(texts: list[str], dim: int = 256, seed: int = 0):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.preprocessing import Normalizer

    model = make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=100_000),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=3, sublinear_tf=True,
                                   max_features=100_000)),
        TruncatedSVD(n_components=dim, random_state=seed, n_iter=4),
        Normalizer())
    model.fit(texts)
    return model


def transform(model, texts: list[str]) -> np.ndarray:
    return model.transform(texts).astype(np.float32)


def save(model, out_dir: str | Path) -> Path:
    import skops.io as sio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sio.dump(model, out / "lexical.skops")  # skops: a typed, inspectable format instead of a raw pickle
    return out / "lexical.skops"


class UntrustedModelFile(ValueError):
    """A lexical.skops holding a type outside SKOPS_ALLOWED: refused before anything in it is built."""


# Every type a saved lexical space holds ({"svd": fit_lexical(...), "expert": tfidf_svm_model(...)}), by the
# name skops records. Loading builds nothing else: a file naming any other type (os.system, a foreign class) is
# refused, whoever wrote it. Extend this list when the saved models gain a type (the error names it).
SKOPS_ALLOWED = frozenset({
    "builtins.bool", "builtins.dict", "builtins.float", "builtins.int", "builtins.list", "builtins.NoneType",
    "builtins.str", "builtins.tuple", "builtins.slice",
    "numpy.dtype", "numpy.ndarray", "numpy.float32", "numpy.float64", "numpy.int32", "numpy.int64", "numpy.bool_",
    "scipy.sparse._csr.csr_matrix", "scipy.sparse._csr.csr_array",
    "sklearn.pipeline.Pipeline", "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer", "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.decomposition._truncated_svd.TruncatedSVD", "sklearn.preprocessing._data.Normalizer",
    "sklearn.svm._classes.LinearSVC",
})


def skops_types(path: Path) -> set[str]:
    """Every `module.Class` a skops file names (objects, types, functions alike), read from its schema alone:
    nothing is imported or built."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            schema = json.loads(z.read("schema.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise UntrustedModelFile(f"{path} is not a readable skops file: {type(e).__name__}: {e}") from e
    found, todo = set(), [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "__module__" in node and "__class__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def load(out_dir: str | Path):
    """The saved lexical space, after checking that the file names only SKOPS_ALLOWED types; skops itself is then
    told to trust exactly those beyond its own defaults (it refuses anything else, should the walk miss a node)."""
    import skops.io as sio

    path = Path(out_dir) / "lexical.skops"
    foreign = sorted(skops_types(path) - SKOPS_ALLOWED)
    if foreign:
        raise UntrustedModelFile(f"{path} holds types outside the lexical allow-list: {', '.join(foreign)}; "
                                 "refusing to load it (nothing in it was built)")
    return sio.load(path, trusted=sorted(SKOPS_ALLOWED))


def fit_expert(texts: list[str], labels: list, groups: list, folds: int = 5, seed: int = 0):
    """A TF-IDF + LinearSVC 'lexical expert' over full label paths, and its out-of-fold decision scores.

    The fusion models read the expert's per-class scores as a modality (stacking). On training rows they must see
    scores from a model that never saw that row, or they would learn to trust an overfit expert: so train rows get
    out-of-fold scores (folds by product group), everything else the expert fitted on all train rows.
    Returns (expert, classes, oof_scores[n, k])."""
    from sklearn.model_selection import GroupKFold

    from pipelines.classify.baselines import tfidf_svm_model

    y = np.array([" > ".join(p) for p in labels])
    expert = tfidf_svm_model(seed).fit(texts, y)
    classes = list(expert.classes_)
    oof = np.zeros((len(texts), len(classes)), dtype=np.float32)
    for fit_rows, score_rows in GroupKFold(n_splits=folds).split(texts, y, groups):
        fold = tfidf_svm_model(seed).fit([texts[i] for i in fit_rows], y[fit_rows])
        scores = fold.decision_function([texts[i] for i in score_rows])
        cols = [classes.index(c) for c in fold.classes_]
        oof[np.ix_(score_rows, cols)] = scores if scores.ndim == 2 else np.c_[-scores, scores]
        missing = [j for j in range(len(classes)) if j not in set(cols)]
        oof[np.ix_(score_rows, missing)] = -2.0  # a class unseen in this fold: clearly not it
    return expert, classes, oof


def expert_scores(expert, texts: list[str]) -> np.ndarray:
    return expert.decision_function(texts).astype(np.float32)
