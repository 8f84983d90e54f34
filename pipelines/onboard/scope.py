"""Out-of-scope detection: a product that belongs nowhere in the fashion taxonomy (a curtain, a phone, a lipstick)
is flagged `out_of_scope` instead of being given the least wrong fashion path.

A product is scored by what it resembles, in the sentence space of the Settings' text encoder (MiniLM):
    raw score = mean of its k best cosines to out-of-scope anchors - mean of its k best cosines to in-scope anchors
Anchors are category *names*, never a shop's product titles, because titles carry a shop's style (H&M names a
product "Khloe SP Seamless Andes") and a model fitted on the training shops' titles flags a new shop's unfamiliar
style rather than its non-fashion goods (measured on the sample: a TF-IDF classifier flagged 70% of H&M's fashion):
  - the training shops' native categories, as their hand mappings label them: a category whose products are all
    mapped is an in-scope name ("Tshirts (Topwear)"), one all sent to `unmapped: out of scope` an out-of-scope name
    ("Lipstick (Lips)");
  - label-free: the fashion taxonomy's own node names (in scope) and, when given, every category of the public
    Google product taxonomy (its apparel and luggage branches in scope, the rest out: "Curtains (Window Treatments)").
Then each score is averaged with the mean score of each native category the product sits in (every prefix of its
native path with at least `min_support` products): the shop's own category tree, read without labels, tells that a
lone "Real Blue Loafers" sits among shoes.

The threshold: at most `max_flag_rate` of the training shops' *validation* in-scope products flagged, each scored
with the native-name anchors of the *other* training shops only (as a new shop would be), so the threshold sees
unfamiliar names the way a new shop's will. No label of the shop being onboarded chooses anything.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.onboard.training import SCOPE_IN, SCOPE_OUT

IN_SCOPE_GOOGLE_ROOTS = ("Apparel & Accessories", "Luggage & Bags")
MAX_FLAG_RATE = 0.01  # on the training shops' validation rows: half the issue's 2% budget, for the shift to a new shop
TOP_K = 3
MIN_SUPPORT = 3
BATCH = 2048  # products scored per matrix product (bounds memory: BATCH x anchors floats)


class ScopeTrainingError(ValueError):
    """The anchors or training rows cannot give a detector (no out-of-scope anchor, no in-scope validation row)."""


def default_google_taxonomy() -> Path | None:
    """../shared/benchmark/reference/google_product_taxonomy-with-ids.en-US.txt when it is there (entry points
    pass it on; nothing below them assumes it)."""
    from pipelines.settings import BENCHMARK_DIR

    path = BENCHMARK_DIR / "reference" / "google_product_taxonomy-with-ids.en-US.txt"
    return path if path.is_file() else None


def anchor_name(levels) -> str:
    """A category as anchor text: its own name with its parent's, "Curtains (Window Treatments)"."""
    levels = [str(x).strip() for x in levels if str(x).strip()]
    return f"{levels[-1]} ({levels[-2]})" if len(levels) > 1 else levels[-1]


def google_taxonomy_anchors(path) -> tuple[list[str], list[str]]:
    """(out-of-scope names, in-scope names) from Google's `id - A > B > C` taxonomy file, split by the root
    (IN_SCOPE_GOOGLE_ROOTS in scope). Comment lines are skipped; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Google product taxonomy {path} not found (omit it to train without its anchors)")
    out_names, in_names = set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or " - " not in line:
            continue
        levels = [x.strip() for x in line.split(" - ", 1)[1].split(">")]
        (in_names if levels[0] in IN_SCOPE_GOOGLE_ROOTS else out_names).add(anchor_name(levels))
    return sorted(out_names - in_names), sorted(in_names)


def taxonomy_anchors(taxonomy) -> list[str]:
    return sorted({anchor_name(node) for node in taxonomy.nodes})


def native_anchors(table: pd.DataFrame, min_support: int = MIN_SUPPORT) -> tuple[list[str], list[str]]:
    """(out-of-scope names, in-scope names) of one training shop's native categories: every prefix of a native
    path with at least `min_support` products, all of them out of scope (resp. all mapped)."""
    scopes: dict[tuple, Counter] = defaultdict(Counter)
    for native, scope in zip(table["native_path"], table["scope"]):
        for depth in range(1, len(native) + 1):
            scopes[tuple(native[:depth])][scope] += 1
    out_names, in_names = set(), set()
    for prefix, count in scopes.items():
        total = sum(count.values())
        if total >= min_support and count[SCOPE_OUT] == total:
            out_names.add(anchor_name(prefix))
        elif total >= min_support and count[SCOPE_IN] == total:
            in_names.add(anchor_name(prefix))
    return sorted(out_names - in_names), sorted(in_names - out_names)


@dataclass
class Anchors:
    """Anchor names by source: 'base' (label-free) and one entry per training shop (its native names)."""
    out_names: dict
    in_names: dict

    def pick(self, sources) -> tuple[list[str], list[str]]:
        out = sorted({n for s in sources for n in self.out_names.get(s, [])})
        inn = sorted({n for s in sources for n in self.in_names.get(s, [])})
        return out, inn

    def counts(self) -> dict:
        return {s: {"out_of_scope": len(self.out_names.get(s, [])), "in_scope": len(self.in_names.get(s, []))}
                for s in sorted(set(self.out_names) | set(self.in_names))}


def build_anchors(taxonomy, training: dict, google_taxonomy=None, min_support: int = MIN_SUPPORT) -> Anchors:
    """Base anchors (the taxonomy's nodes; Google's categories when `google_taxonomy` names its file) and each
    training shop's native-category anchors."""
    base_out, base_in = google_taxonomy_anchors(google_taxonomy) if google_taxonomy else ([], [])
    out_names, in_names = {"base": base_out}, {"base": sorted(set(base_in) | set(taxonomy_anchors(taxonomy)))}
    for shop, table in training.items():
        out_names[shop], in_names[shop] = native_anchors(table, min_support)
    return Anchors(out_names, in_names)


def smooth_by_native_category(scores: np.ndarray, native_paths, min_support: int = MIN_SUPPORT) -> np.ndarray:
    """Each score averaged with the mean score of every native category (path prefix, case-folded) it sits in
    that holds at least `min_support` products. Label-free: it reads the shop's own category tree only."""
    scores = np.asarray(scores, float)
    keys = [tuple(str(x).casefold() for x in (n if isinstance(n, (list, tuple, np.ndarray)) else [])) for n in
            native_paths]
    members: dict[tuple, list] = defaultdict(list)
    for i, key in enumerate(keys):
        for depth in range(1, len(key) + 1):
            members[key[:depth]].append(i)
    means = {k: float(scores[v].mean()) for k, v in members.items() if len(v) >= min_support}
    out = np.empty(len(scores))
    for i, key in enumerate(keys):
        found = [means[key[:d]] for d in range(1, len(key) + 1) if key[:d] in means]
        out[i] = (scores[i] + sum(found)) / (1 + len(found))
    return out


def _top_k_mean(sims: np.ndarray, k: int) -> np.ndarray:
    k = min(k, sims.shape[1])
    return np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(1)


@dataclass
class ScopeDetector:
    """scores(vectors, native_paths): P-like out-of-scope scores; flags(): above the chosen threshold."""

    out_vectors: np.ndarray
    in_vectors: np.ndarray
    threshold: float = 0.0
    top_k: int = TOP_K
    min_support: int = MIN_SUPPORT
    info: dict = field(default_factory=dict)

    def raw_scores(self, vectors: np.ndarray) -> np.ndarray:
        parts = [_top_k_mean(v @ self.out_vectors.T, self.top_k) - _top_k_mean(v @ self.in_vectors.T, self.top_k)
                 for v in (vectors[s:s + BATCH] for s in range(0, len(vectors), BATCH))]
        return np.concatenate(parts) if parts else np.zeros(0)

    def scores(self, vectors: np.ndarray, native_paths) -> np.ndarray:
        return smooth_by_native_category(self.raw_scores(vectors), native_paths, self.min_support)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


def choose_scope_threshold(in_scope_scores, max_flag_rate: float) -> float:
    """The smallest threshold flagging at most `max_flag_rate` of these in-scope scores (flag = score > it)."""
    scores = np.sort(np.asarray(in_scope_scores, float))
    if not len(scores):
        raise ScopeTrainingError("no in-scope validation row to choose the out-of-scope threshold on")
    keep = int(np.ceil((1.0 - max_flag_rate) * len(scores))) - 1  # the highest score left unflagged
    return float(scores[min(max(keep, 0), len(scores) - 1)])


class _AnchorVectors:
    """Each anchor name embedded once (the final detector and the per-shop ones share them)."""

    def __init__(self, anchors: Anchors, embed):
        names = sorted({n for d in (anchors.out_names, anchors.in_names) for v in d.values() for n in v})
        self.anchors, self.index = anchors, {n: i for i, n in enumerate(names)}
        self.vectors = embed(names)[0] if names else np.zeros((0, 0), np.float32)

    def detector(self, sources, top_k: int, min_support: int) -> ScopeDetector:
        out_names, in_names = self.anchors.pick(sources)
        if not out_names or not in_names:
            raise ScopeTrainingError(f"{len(out_names)} out-of-scope and {len(in_names)} in-scope anchors: both are "
                                     "needed (give the Google taxonomy, or a training shop whose mapping sends rows "
                                     "to 'unmapped: out of scope')")
        pick = lambda names: self.vectors[[self.index[n] for n in names]]  # noqa: E731
        return ScopeDetector(pick(out_names), pick(in_names), top_k=top_k, min_support=min_support)


def _shop_validation(detector: ScopeDetector, table: pd.DataFrame, vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """(validation in-scope scores, summary) of one training shop scored as if new."""
    from sklearn.metrics import roc_auc_score

    scores = detector.scores(vectors, table["native_path"])
    scope = table["scope"].to_numpy()
    val_in = scores[(table["split"].to_numpy() == "val") & (scope == SCOPE_IN)]
    known = np.isin(scope, [SCOPE_IN, SCOPE_OUT])
    y = scope[known] == SCOPE_OUT
    auroc = float(roc_auc_score(y, scores[known])) if 0 < y.sum() < len(y) else None
    return val_in, {"val_in_scope": len(val_in), "out_of_scope": int(y.sum()), "auroc_as_new": auroc}


def fit_scope_detector(anchors: Anchors, embed, training: dict, training_vectors: dict,
                       max_flag_rate: float = MAX_FLAG_RATE, top_k: int = TOP_K,
                       min_support: int = MIN_SUPPORT) -> ScopeDetector:
    """The detector on every anchor, its threshold chosen on the training shops' validation in-scope rows, each
    shop scored with the base anchors and the *other* training shops' native names (see the module docstring).
    `training[shop]` is a labelled table (training.label_training_shop), `training_vectors[shop]` its rows'
    vectors, `embed` a TextEmbedder."""
    shops = sorted(training)
    vectors = _AnchorVectors(anchors, embed)
    val_scores, per_shop = [], {}
    for shop in shops:
        inner = vectors.detector(["base", *[s for s in shops if s != shop]], top_k, min_support)
        val_in, per_shop[shop] = _shop_validation(inner, training[shop], training_vectors[shop])
        val_scores.append(val_in)
    detector = vectors.detector(["base", *shops], top_k, min_support)
    detector.threshold = choose_scope_threshold(np.concatenate(val_scores) if val_scores else [], max_flag_rate)
    detector.info = {"threshold": round(detector.threshold, 6), "max_flag_rate": max_flag_rate, "top_k": top_k,
                     "min_support": min_support, "anchors": anchors.counts(), "training_shops": per_shop}
    return detector
