"""`prodcat onboard`: a new shop's feed in; predictions, out-of-scope flags, a proposed mapping table and a report out.

    summary = onboard_shop("acme", "exports/acme.tsv", None, "work/onboard/acme", settings)

The feed goes through its format's reader and normalisation's row checks without a mapping (products.py); every
product is classified by the champion (pipelines/inference/two_stage.TwoStage, routed as `prodcat classify` does,
or any object with its classify() contract); the out-of-scope detector (scope.py), trained on the registered shops
and their mappings, flags what belongs nowhere in the taxonomy; the proposal (mapping_proposal.py) and the report
(report.py) are built from those. Rows in = products + quarantined, checked. `onboard_products` is the label-free
core the leave-one-platform-out measurement runs too: it refuses a frame holding a label column.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.onboard.mapping_proposal import ProposalConfig, propose_mapping, write_mapping_proposal
from pipelines.onboard.products import require_unlabelled
from pipelines.taxonomy.tree import path_str

PREDICTIONS_FILE = "predictions.csv"
QUARANTINE_FILE = "quarantine.csv"
PRODUCTS_FILE = "products.parquet"  # the feed's texts and image paths, for the review page (pipelines/review)
PRODUCT_COLUMNS = ["product_id", "group_id", "title", "description", "brand", "image_path", "native_path"]


def prediction_table(products: pd.DataFrame, result: pd.DataFrame, scores: np.ndarray, oos: np.ndarray,
                     depth: int) -> pd.DataFrame:
    """One row per product: its path (empty when out of scope), the model's full path, calibrated confidences,
    the routing stage, needs_review, out_of_scope, the detector's score and the model's runners-up."""
    from pipelines.inference.export import alternative_columns

    out = pd.DataFrame({"product_id": products["product_id"].astype(str).to_numpy(),
                        "title": products["title"].to_numpy(),
                        "native_path": [path_str(n) for n in products["native_path"]],
                        "category_path": ["" if o else path_str(p) for p, o in zip(result["category_path"], oos)],
                        "model_path": [path_str(p) for p in result["full_path"]]})
    for lvl in range(depth):
        out[f"conf_L{lvl + 1}"] = result[f"conf_L{lvl + 1}"].to_numpy().astype(float).round(4)
    out["stage"] = result["stage"].to_numpy()
    out["needs_review"] = result["needs_review"].to_numpy(bool)
    out["out_of_scope"] = np.asarray(oos, bool)
    out["scope_score"] = np.round(np.asarray(scores, float), 4)
    return out.join(alternative_columns(result.get("alternatives"), len(out)))



def classify_native_names(classifier, native_paths, min_support: int) -> dict:
    """{native_key: predicted full path} of every native category with `min_support` products, its name (its
    levels joined) classified as if it were a product title: the shop's own word for what the products are."""
    from pipelines.onboard.mapping_proposal import native_categories

    cats = [(key, levels) for key, (levels, rows) in native_categories(native_paths).items()
            if len(rows) >= min_support]
    if not cats:
        return {}
    names = [" ".join(levels) for _, levels in cats]
    result = classifier.classify(names, [""] * len(names), [None] * len(names))
    return {key: tuple(path) for (key, _), path in zip(cats, result["full_path"])}


def proposal_from_predictions(products: pd.DataFrame, predictions: pd.DataFrame, cfg: ProposalConfig,
                              name_paths: dict | None = None) -> pd.DataFrame:
    """The proposal again from a prediction_table (another ProposalConfig on the same classification)."""
    from pipelines.taxonomy.tree import parse_path

    result = predictions.assign(full_path=[parse_path(p) for p in predictions["model_path"]])
    return propose_mapping(products.reset_index(drop=True), result, cfg, name_paths)


def onboard_products(products: pd.DataFrame, classifier, detector, embed, cfg: ProposalConfig = ProposalConfig(),
                     progress: bool = False, num_workers: int | None = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions, proposal) for an unlabelled products table: classify, flag, propose (with the native names'
    vote when cfg.name_weight > 0). Reads no label (LabelLeak if the frame holds one)."""
    from pipelines.inference.export import classify_products
    from pipelines.inference.features import embedding_texts

    require_unlabelled(products, "onboard_products")
    products = products.reset_index(drop=True)
    result = classify_products(classifier, products, "onboard", progress, num_workers)
    vectors, _ = embed(embedding_texts(products["title"], products["description"]))
    scores = detector.scores(vectors, products["native_path"])
    oos = detector.flags(scores)
    predictions = prediction_table(products, result, scores, oos, classifier.depth)
    names = classify_native_names(classifier, products["native_path"], cfg.min_support) if cfg.name_weight else None
    proposal = propose_mapping(products, result.assign(out_of_scope=oos), cfg, names)
    return predictions, proposal


def training_scope_detector(embed, taxonomy, shops, raw_dir, mappings_dir, google_taxonomy=None, shops_dir=None):
    """The out-of-scope detector trained on registered `shops` (their exports and hand mappings)."""
    from pipelines.inference.features import embedding_texts
    from pipelines.onboard.scope import build_anchors, fit_scope_detector
    from pipelines.onboard.training import load_training_shops

    training = load_training_shops(shops, raw_dir, taxonomy, mappings_dir, shops_dir)
    vectors = {s: embed(embedding_texts(t["title"], t["description"]))[0] for s, t in training.items()}
    anchors = build_anchors(taxonomy, training, google_taxonomy)
    return fit_scope_detector(anchors, embed, training, vectors)


def onboarding_summary(export, predictions: pd.DataFrame, proposal: pd.DataFrame, classifier, detector) -> dict:
    decided = proposal["category_path"].map(bool)
    reasons = proposal.loc[~decided, "unmapped_reason"]
    return {"shop": export.shop, "feed": export.source, "format": export.format, "rows_in": export.rows_in,
            "products": len(predictions), "quarantined": len(export.quarantine),
            "quarantined_by_reason": export.quarantine["reason_kind"].value_counts().to_dict(),
            "out_of_scope": int(predictions["out_of_scope"].sum()),
            "needs_review": int(predictions["needs_review"].sum()),
            "with_image": int(export.products["image_path"].notna().sum()),
            "proposal": {"rows": len(proposal), "with_path": int(decided.sum()),
                         "confident": int(proposal["confident"].sum()),
                         "unmapped_by_reason": reasons.value_counts().to_dict()},
            "classifier": {"mode": getattr(classifier, "mode", ""), **getattr(classifier, "info", {})},
            "out_of_scope_threshold": round(float(detector.threshold), 6)}


def write_onboarding_outputs(out: Path, export, predictions, proposal, summary: dict) -> dict:
    """predictions.csv, quarantine.csv, mapping.proposed.csv, label_first.csv, products.parquet,
    onboarding.{md,html,json}; -> the files."""
    from pipelines.files import atomic_write_csv, atomic_write_parquet, atomic_write_text
    from pipelines.onboard.label_first import write_label_first
    from pipelines.onboard.report import write_onboarding_report

    products = export.products.reset_index(drop=True).reindex(columns=PRODUCT_COLUMNS)
    products["product_id"] = products["product_id"].astype(str)
    products["native_path"] = [path_str(n) for n in products["native_path"]]
    products["image_path"] = [str(Path(p).resolve()) if isinstance(p, str) and p and "://" not in p else p
                              for p in products["image_path"]]  # the review page serves them from any cwd
    files = {"quarantine": atomic_write_csv(export.quarantine, out / QUARANTINE_FILE),
             "products": atomic_write_parquet(products, out / PRODUCTS_FILE),
             "label_first": write_label_first(predictions, export.products.reset_index(drop=True), out),
             "predictions": atomic_write_csv(predictions, out / PREDICTIONS_FILE),
             "proposal": write_mapping_proposal(proposal, out)}
    files |= write_onboarding_report(out, summary, export.products, predictions, proposal, export.quarantine)
    summary["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_text(out / "onboarding.json", json.dumps(summary, indent=2, default=str))
    return summary


def onboard_shop(shop: str, feed, fmt: str | None, out_dir, settings, *, model_dir=None, mode: str = "routed",
                 network: bool = True, google_taxonomy=None, classifier=None, detector=None,
                 cfg: ProposalConfig = ProposalConfig(), training_shops=None, progress: bool | None = None) -> dict:
    """Onboard `shop` from `feed` (format `fmt`, or detected) into `out_dir`; -> the summary (also onboarding.json).
    The champion classifies unless `classifier` is given; the detector trains on `training_shops` (default: the
    registered benchmark shops, the new one excluded) unless `detector` is given."""
    from pipelines.files import atomic_write_csv, check_output_path
    from pipelines.ingest.image_fetch import ImageFetcher
    from pipelines.inference.two_stage import TwoStage
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.products import read_feed_unlabelled, require_products
    from pipelines.settings import MAPPINGS_DIR, PLATFORMS
    from pipelines.taxonomy.tree import load_taxonomy

    out = check_output_path(out_dir, [feed], directory=True)
    progress = (not settings.quiet) if progress is None else progress
    classifier = classifier or TwoStage.load(settings, model_dir, mode)  # a missing champion fails first
    fetcher = ImageFetcher(settings.work("images"), network=network)
    export = read_feed_unlabelled(shop, feed, fmt, verify_images=True, image_fetcher=fetcher)
    if not len(export.products):  # say why, and leave the quarantine where the user will look
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(export.quarantine, out / QUARANTINE_FILE)
        require_products(export)
    embed = TextEmbedder.from_settings(settings)
    if detector is None:
        shops = [s for s in (training_shops or PLATFORMS) if s != shop and settings.raw_dir(s).exists()]
        detector = training_scope_detector(embed, load_taxonomy(settings.taxonomy_path), shops, settings.raw_dir,
                                           MAPPINGS_DIR, google_taxonomy)
    predictions, proposal = onboard_products(export.products, classifier, detector, embed, cfg, progress,
                                             settings.loader_workers)
    out.mkdir(parents=True, exist_ok=True)
    summary = onboarding_summary(export, predictions, proposal, classifier, detector)
    return write_onboarding_outputs(out, export, predictions, proposal, summary)
