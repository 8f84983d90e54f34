"""The adapted classifier for `prodcat onboard`: a shop the champion never trained on is classified by the
onboarding classifier adapted to that shop's own unlabelled products (adapted.py), not by a model that never saw
its title style.

    classifier = onboarding_classifier("acme", feed, None, settings)   # None when the shop is a training shop
    onboard_shop("acme", feed, None, out, settings, classifier=classifier)

The feed is read once here (without images: adaptation reads text), its products pass require_unlabelled.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.adapt.adapted import AdaptConfig


def onboarding_classifier(shop: str, feed, fmt, settings, *, training_shops=None, cfg: AdaptConfig = AdaptConfig(),
                          modalities=("lexical", "text"), max_epochs: int | None = None, out_dir=None):
    """The AdaptedClassifier for `shop`'s feed, trained on the registered shops with exports (the new one
    excluded); None when `shop` is one of them (the champion trained on it: nothing to adapt to)."""
    from pipelines.adapt.adapted import adapt_shop_classifier
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.products import read_feed_unlabelled, require_products
    from pipelines.onboard.training import load_training_shops
    from pipelines.settings import MAPPINGS_DIR, PLATFORMS
    from pipelines.taxonomy.tree import load_taxonomy

    registered = [s for s in (training_shops or PLATFORMS) if settings.raw_dir(s).exists()]
    if shop in registered:
        return None
    taxonomy = load_taxonomy(settings.taxonomy_path)
    products = require_products(read_feed_unlabelled(shop, feed, fmt, verify_images=False)).products
    tables = load_training_shops(registered, settings.raw_dir, taxonomy, MAPPINGS_DIR)
    embed = TextEmbedder.from_settings(settings) if "text" in modalities else None
    out = Path(out_dir) if out_dir else settings.work("adapt", shop)
    classifier = adapt_shop_classifier(tables, products, shop, taxonomy, out, embed=embed, cfg=cfg,
                                       modalities=modalities, seed=settings.seed, threads=settings.threads,
                                       max_epochs=max_epochs)
    classifier.mode = "onboard-adapted"
    return classifier
