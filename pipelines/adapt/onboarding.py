"""The adapted classifier of a shop the champion never trained on: one function for the per-shop `shop_adaptation`
asset, `prodcat onboard` and `prodcat classify --shop NEW`, so all three answer with the same model.

    classifier = adapted_for_shop("acme", products, settings)   # adapts, or loads <work>/adapt/acme when current
    classifier = onboarding_classifier("acme", feed, None, settings)   # None when acme is a training shop

Training shops are the labelled ones (labelled_shops: a contract, an export and a hand mapping), the new shop left
out; the new shop gives only its unlabelled products (require_unlabelled). The result is saved in <work>/adapt/<shop>/
(store.py) under a fingerprint of its inputs (the new shop's texts and groups, the training shops' labelled rows,
the adaptation config, the text encoder): the same inputs load the saved model instead of adapting again.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from pipelines.adapt.adapted import AdaptConfig

TABLE_COLUMNS = ("title", "description", "group_id", "split", "category_path")


def labelled_shops(settings) -> list[str]:
    """Shops the champion can train on: registered (a column contract and an export under the data root) and with
    a hand mapping; the benchmark shops first."""
    from pipelines.ingest.shops import registered_shops

    return [s for s in registered_shops(settings.data_root, settings.shops_dir)
            if (Path(settings.mappings_dir) / f"{s}.csv").exists()]


def adapt_store(settings):
    """The embedding store adapted classifiers read and write (<work>/adapt/.store; '.' is never in a shop name):
    their restyled titles and new shops' texts stay out of the embedding assets' store, an output of another
    pipeline stage (DVC's `embeddings`), which adapting a shop must not change."""
    return settings.work("adapt", ".store")


def adaptation_fingerprint(products, tables: dict, cfg: AdaptConfig, modalities, encoder: str) -> str:
    """What the adapted model was made from: changes when the new shop's products, a training shop's labelled
    rows, the adaptation config or the encoder do."""
    from pipelines.ingest.catalogue import content_hash

    h = hashlib.sha256(repr((cfg, tuple(modalities), encoder)).encode())
    h.update(content_hash(products[["title", "description", "group_id"]]).encode())
    for shop, table in sorted(tables.items()):
        h.update(f"{shop}:{content_hash(table[[c for c in TABLE_COLUMNS if c in table.columns]])}".encode())
    return h.hexdigest()[:16]


def adapted_for_shop(shop: str, products, settings, *, training_shops=None, cfg: AdaptConfig = AdaptConfig(),
                     modalities=("lexical", "text"), max_epochs: int | None = None, out_dir=None):
    """The AdaptedClassifier for `shop`'s unlabelled `products`, trained on the labelled shops but `shop`;
    loaded from `out_dir` (default <work>/adapt/<shop>) when it was made from the same inputs."""
    from pipelines.adapt.adapted import adapt_shop_classifier
    from pipelines.adapt.store import adapted_meta, load_adapted, save_adapted
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.training import load_training_shops
    from pipelines.taxonomy.tree import load_taxonomy

    training = [s for s in (training_shops or labelled_shops(settings)) if s != shop]
    if not training:
        raise ValueError(f"no labelled shop to adapt {shop!r} from: give a shop a contract, an export under "
                         f"{settings.data_root} and a mapping in {settings.mappings_dir}")
    taxonomy = load_taxonomy(settings.taxonomy_path)
    tables = load_training_shops(training, settings.raw_dir, taxonomy, settings.mappings_dir, settings.shops_dir)
    embed = TextEmbedder.from_settings(settings, adapt_store(settings)) if "text" in modalities else None
    fingerprint = adaptation_fingerprint(products, tables, cfg, modalities, settings.text_encoder)
    out = Path(out_dir) if out_dir else settings.work("adapt", shop)
    meta = adapted_meta(out)
    if meta is not None and meta["fingerprint"] == fingerprint:
        return load_adapted(out, embed, settings.text_encoder)
    classifier = adapt_shop_classifier(tables, products, shop, taxonomy, out / "training", embed=embed, cfg=cfg,
                                       modalities=modalities, seed=settings.seed, threads=settings.threads,
                                       max_epochs=max_epochs)
    classifier.mode = "adapted"
    save_adapted(classifier, out, fingerprint, settings.text_encoder)
    return classifier


def onboarding_classifier(shop: str, feed, fmt, settings, *, training_shops=None, cfg: AdaptConfig = AdaptConfig(),
                          modalities=("lexical", "text"), max_epochs: int | None = None, out_dir=None):
    """The adapted classifier for `shop`'s feed; None when `shop` is a labelled shop (the champion trained on it:
    nothing to adapt to). The feed is read without images: adaptation reads text."""
    from pipelines.onboard.products import read_feed_unlabelled, require_products

    if shop in (training_shops or labelled_shops(settings)):
        return None
    products = require_products(read_feed_unlabelled(shop, feed, fmt, verify_images=False)).products
    return adapted_for_shop(shop, products, settings, training_shops=training_shops, cfg=cfg, modalities=modalities,
                            max_epochs=max_epochs, out_dir=out_dir)


def classify_classifier(shop: str, export_dir, settings, **kwargs):
    """For `prodcat classify --shop`: the adapted classifier when `shop` is not a labelled shop - the one saved in
    <work>/adapt/<shop> (by the asset or onboarding) when there is one, else adapted now to this export's products;
    None for a labelled shop (the champion answers)."""
    from pipelines.adapt.store import load_adapted
    from pipelines.ingest.shops import get_adapter
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.products import read_shop_unlabelled, require_products

    if shop in labelled_shops(settings):
        return None
    get_adapter(shop, settings.shops_dir)  # an unknown shop is refused here (BadExport), before any folder is made
    embed = TextEmbedder.from_settings(settings, adapt_store(settings))
    saved = load_adapted(settings.work("adapt", shop), embed, settings.text_encoder)
    if saved is not None:
        return saved
    products = require_products(read_shop_unlabelled(shop, export_dir, verify_images=False,
                                                     shops_dir=settings.shops_dir)).products
    return adapted_for_shop(shop, products, settings, **kwargs)


def adapt_registered_shop(shop: str, settings, **kwargs) -> dict:
    """The per-shop asset's work: `shop`'s export read without its mapping, the classifier adapted to it (saved in
    <work>/adapt/<shop>), its products classified; only then, when the shop has a hand mapping (a benchmark shop
    adapted to as if new: leave-one-platform-out), that mapping is read to score its grouped test split."""
    from pipelines.onboard.products import read_shop_unlabelled, require_products

    products = require_products(read_shop_unlabelled(shop, settings.raw_dir(shop), verify_images=False,
                                                     shops_dir=settings.shops_dir)).products
    classifier = adapted_for_shop(shop, products, settings, **kwargs)
    result = classifier.classify(products["title"].tolist(), products["description"].tolist())
    info = classifier.info
    summary = {"shop": shop, "products": len(products), "training_shops": info.get("training_shops"),
               "adaptation": info.get("adaptation"), "pseudo_share": (info.get("pseudo_labels") or {}).get("share"),
               "stage2_share": round(float((result["stage"] == 2).mean()), 4) if len(result) else 0.0,
               "needs_review_share": round(float(result["needs_review"].mean()), 4) if len(result) else 0.0,
               "out": str(kwargs.get("out_dir") or settings.work("adapt", shop))}
    return summary | {"test": score_against_mapping(shop, products, result["full_path"].tolist(), settings)}


def score_against_mapping(shop: str, products, paths: list, settings) -> dict:
    """hF1 at the label's depth on the shop's grouped test split (all mapped products when it has none), from its
    hand mapping; {} for a shop without one (a new shop: nothing to score against)."""
    from pipelines.adapt.measure import hand_scoring_rows, score_paths
    from pipelines.taxonomy.tree import load_taxonomy

    if not (Path(settings.mappings_dir) / f"{shop}.csv").exists():
        return {}
    taxonomy = load_taxonomy(settings.taxonomy_path)
    hand, _, rows, _ = hand_scoring_rows(shop, products, taxonomy, settings.mappings_dir)
    return score_paths(hand, [tuple(p) for p in paths], rows, taxonomy.depth)
