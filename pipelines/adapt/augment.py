"""Training-time augmentation of title style: restyled copies of the training shops' labelled train rows.

Why: a new shop writes titles its own way. Myntra and Flipkart lead with the brand, H&M never names it, others name
it anywhere; some titles are three words, some carry a paragraph of description. A classifier that only saw each
training shop in its own style reads the style as evidence (a leading brand means "this shop", and the shop's
category mix comes with it). Showing it the same product in several styles, with the same label, teaches it that the
style carries no category. Every variant keeps the words that name the category (the head noun), so the copy's label
stays true: a copy whose words no longer support its label would be label noise, not augmentation.

The styles are pure functions of (title, description, brand), and the choice of styles and casing per product is
seeded by (seed, product key), so the same product gets the same copies in any order, on any run.

Feature rows of the copies (augmented_training_rows) go through the *same* fitted lexical space and embedder as the
originals. The lexical view stacks a TF-IDF + LinearSVC expert's scores; a training row gets its out-of-fold score
(lexical.fit_expert: folds by product group), so the fusion head never learns to trust an expert that saw the row.
A copy of a training row is that row in other words: scored by the full expert (which trained on its source) it would
leak the same way. So a copy is scored by exactly the fold model that scored its source: the same GroupKFold split of
the same fit rows, refitted here (five more expert fits, paid only when augmentation is asked for).
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

STYLES = ("brand_first", "brand_removed", "short", "no_description")
# The lexical TF-IDF and MiniLM (an uncased tokenizer) both lowercase, so a casing-only copy would be the same
# feature row again (a reweighting, not a new style): casing is layered on a structural style instead, so a cased
# encoder would see it, and copies equal to their source or a sibling once lowercased are dropped.
CASINGS = ("as_is", "lower", "upper", "title")
_GENDER_WORDS = {"women", "men", "womens", "mens", "women's", "men's", "boys", "girls", "boy's", "girl's",
                 "unisex", "kids", "ladies", "baby"}
_EDGE = " -|,:;/"


@dataclass(frozen=True)
class AugmentConfig:
    variants: int = 2  # restyled copies per labelled train row (fewer where fewer styles change its title)
    seed: int = 0
    short_words: int = 3  # the "short" style keeps this many words (the first ones and the head noun)


class NoAugmentedRows(ValueError):
    """An AdaptConfig with augment_titles on views built without augmentation (build_adapt_views(augment=...))."""


def augment_config(augment) -> AugmentConfig | None:
    """build_adapt_views' `augment`: None/0/False = off, an int = that many variants, or an AugmentConfig."""
    if augment is None or augment is False or isinstance(augment, AugmentConfig):
        return augment or None
    if int(augment) < 0:
        raise ValueError(f"augment={augment}: the number of variants must be >= 0")
    return AugmentConfig(variants=int(augment)) if int(augment) else None


def brand_of(title: str, brand: str = "") -> str:
    """The product's brand: the brand column when given, else the words before a leading gender word (Myntra's
    "Pitaraa Women Bronze Beaded Bracelet" -> "Pitaraa"; its export has no brand column), else ''."""
    brand = str(brand or "").strip()
    if brand:
        return brand
    words = str(title or "").split()
    for i, w in enumerate(words[:4]):
        if w.lower() in _GENDER_WORDS:
            return " ".join(words[:i])
    return ""


def remove_brand(title: str, brand: str) -> str:
    """The title without the brand (whole words, any case), spaces and edge separators tidied."""
    if not brand:
        return str(title)
    out = re.sub(r"(?<!\w)" + re.escape(brand) + r"(?!\w)", " ", str(title), flags=re.IGNORECASE)
    return " ".join(out.split()).strip(_EDGE)


def brand_first(title: str, brand: str) -> str:
    """The brand moved to the front, or added there where the title never names it (H&M's style -> Myntra's)."""
    return f"{brand} {remove_brand(title, brand)}".strip() if brand else str(title)


def shorten(title: str, words: int) -> str:
    """The title cut to `words` words: the first ones and the last. English product titles end with the head noun
    ("... Beaded Bracelet"); a plain cut to the first words would drop the very word the label rests on."""
    tokens = str(title).split()
    return " ".join(tokens[:max(words - 1, 1)] + tokens[-1:]) if len(tokens) > words else str(title)


def recase(title: str, casing: str) -> str:
    """`casing` of CASINGS; "title" capitalises words, not letters after an apostrophe (Women's, not Women'S)."""
    import string

    return {"as_is": str, "lower": str.lower, "upper": str.upper, "title": string.capwords}[casing](str(title))


def restyle(title: str, description: str, brand: str, style: str, short_words: int = 3) -> tuple[str, str] | None:
    """(title, description) in `style`, or None where the style does not change this product."""
    title, description = str(title or ""), str(description or "")
    if style == "brand_first":
        new = (brand_first(title, brand), description) if brand else None
    elif style == "brand_removed":
        new = (remove_brand(title, brand), description) if brand else None
    elif style == "short":
        new = (shorten(title, short_words), description)
    elif style == "no_description":
        new = (title, "") if description.strip() else None
    else:
        raise ValueError(f"unknown title style {style!r} (one of {STYLES})")
    return new if new and new[0].strip() and new != (title, description) else None


def title_variants(title: str, description: str, brand: str, key: str, cfg: AugmentConfig = AugmentConfig()) -> list:
    """Up to cfg.variants [(style, title, description)] of one product: distinct styles that change it, each with a
    casing, picked by a generator seeded by (cfg.seed, key); none equal (lowercased) to the source or each other."""
    from pipelines.features.store import text_of

    brand = brand_of(title, brand)
    rng = np.random.default_rng([cfg.seed, zlib.crc32(str(key).encode())])
    seen, out = {text_of(title, description).lower()}, []
    for style in rng.permutation(STYLES):
        casing = CASINGS[int(rng.integers(len(CASINGS)))]
        new = restyle(title, description, brand, str(style), cfg.short_words)
        if new is None or len(out) >= cfg.variants:
            continue
        new = (recase(new[0], casing), new[1])
        if text_of(*new).lower() not in seen:
            seen.add(text_of(*new).lower())
            out.append((f"{style}+{casing}", *new))
    return out


@dataclass
class AugmentedRows:
    """Restyled copies of the training shops' labelled train rows, as extra training rows of AdaptViews."""

    source: np.ndarray  # index of the copied product among AdaptViews' training products
    style: list  # "brand_first+upper", ...
    texts: list
    labels: list  # the source's hand path
    split: np.ndarray  # always 'train': a copy never enters validation or test
    groups: np.ndarray  # the source's product group
    shop: np.ndarray  # the source's shop
    features: dict  # {modality: [n_copies, d]}
    available: dict


def fold_expert_scores(fit_texts: list, fit_labels: list, fit_groups: list, texts: list, source: np.ndarray,
                       seed: int = 0) -> np.ndarray:
    """Expert scores of `texts`, each from the fold model of lexical.fit_expert's GroupKFold split that did *not*
    train on its source fit row (`source` indexes the fit rows): the model that gave the source its out-of-fold
    scores. Columns follow the full expert's classes (sorted paths); a class the fold never saw scores -2.0, as
    there."""
    from sklearn.model_selection import GroupKFold

    from pipelines.classify.baselines import tfidf_svm_model

    y = np.array([" > ".join(p) for p in fit_labels])
    column = {c: j for j, c in enumerate(sorted(set(y)))}
    scores = np.full((len(texts), len(column)), -2.0, np.float32)
    source = np.asarray(source, int)
    for fit_rows, held_out in GroupKFold(n_splits=5).split(fit_texts, y, fit_groups):
        rows = np.flatnonzero(np.isin(source, held_out))
        if not rows.size:
            continue
        model = tfidf_svm_model(seed).fit([fit_texts[i] for i in fit_rows], y[fit_rows])
        raw = model.decision_function([texts[i] for i in rows])
        raw = raw if raw.ndim == 2 else np.c_[-raw, raw]
        scores[np.ix_(rows, [column[c] for c in model.classes_])] = raw
    return scores


def copy_rows(rows, fit: np.ndarray, cfg: AugmentConfig) -> tuple[list, list, list]:
    """(source index, style, (title, description)) of every copy of the `fit` rows (labelled train rows)."""
    source, styles, texts = [], [], []
    brands = rows["brand"].fillna("") if "brand" in rows else [""] * len(rows)
    for i in np.flatnonzero(fit):
        row = rows.iloc[i]
        key = f"{row['platform']}:{row.get('product_id', i)}"
        for style, title, description in title_variants(row["title"], row["description"], brands[i], key, cfg):
            source.append(i)
            styles.append(style)
            texts.append((title, description))
    return source, styles, texts


def augmented_training_rows(rows, texts: list, labels: list, groups: list, fit: np.ndarray, space: dict,
                            cfg: AugmentConfig, modalities, embed=None) -> AugmentedRows:
    """The copies of the `fit` rows of `rows` (AdaptViews' training products: their `texts`, labels and groups)
    with their feature rows: lexical through `space` (expert scores from the source's fold model), text vectors
    through `embed` (the same content-addressed store)."""
    from pipelines.features import lexical
    from pipelines.inference.features import embedding_texts

    rows = rows.reset_index(drop=True)
    source, styles, pairs = copy_rows(rows, np.asarray(fit, bool), cfg)
    source = np.asarray(source, int)
    copy_texts = embedding_texts([t for t, _ in pairs], [d for _, d in pairs])
    fit_idx = np.flatnonzero(fit)
    position = {int(i): k for k, i in enumerate(fit_idx)}
    feats, avail = {}, {}
    if copy_texts:
        expert = fold_expert_scores([texts[i] for i in fit_idx], [labels[i] for i in fit_idx],
                                    [groups[i] for i in fit_idx], copy_texts, [position[int(i)] for i in source])
        feats["lexical"] = np.concatenate([lexical.transform(space["svd"], copy_texts), expert], 1)
    else:  # no title changed: an empty block as wide as the lexical view, so joining it is a no-op
        width = space["svd"][-2].n_components + len(space["expert"].classes_)
        feats["lexical"] = np.zeros((0, width), np.float32)
    avail["lexical"] = np.array([bool(t.strip()) for t in copy_texts], bool)
    if "text" in modalities:
        feats["text"], avail["text"] = embed(copy_texts)
    return AugmentedRows(source, styles, copy_texts, [labels[i] for i in source], np.full(len(source), "train"),
                         np.asarray([groups[i] for i in source]).astype(str),
                         rows["platform"].to_numpy().astype(str)[source], feats, avail)


def augmented_features(views, centre) -> tuple[dict, dict, list]:
    """(features, available, labels) of the views' augmented copies, ready to join the training rows; views in
    `centre` centred by their *source shop's* mean (taken over that shop's own products, as its originals are)."""
    from pipelines.adapt.centring import UNIT_NORM_VIEWS, centre_by_shop, centre_rows

    aug = views.augmented
    if aug is None:
        raise NoAugmentedRows("augment_titles needs views built with augmentation: build_adapt_views(..., augment=n)")
    feats = {m: aug.features[m] for m in views.modalities}
    for view in centre:
        _, means = centre_by_shop(views.train_features[view], views.train_available[view], views.train_shop,
                                  view in UNIT_NORM_VIEWS)
        out = np.zeros_like(feats[view], np.float32)
        for shop in sorted(set(aug.shop.tolist())):
            rows = aug.shop == shop
            out[rows] = centre_rows(feats[view][rows], aug.available[view][rows], means[shop], view in UNIT_NORM_VIEWS)
        feats[view] = out
    return feats, {m: aug.available[m] for m in views.modalities}, list(aug.labels)
