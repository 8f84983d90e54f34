"""`prodcat onboard measure`: issue 17's first two targets, leave-one-platform-out.

For each benchmark shop in turn, as if it were new (the third target, the feed round trip, is roundtrip.py):
  1. the other shops (exports + hand mappings) train a classifier (classifier.py: lexical view refitted on them,
     MiniLM vectors from the store, late fusion, temperatures on their validation rows) and the out-of-scope
     detector (scope.py: its threshold on their validation rows);
  2. the held-out shop is read from its raw export through its feed contract, *without* its mapping: the frame that
     reaches onboard_products has no label column (it would raise LabelLeak);
  3. only then are its predictions and proposal scored against its hand mapping (evaluate.py).
Writes <out>/<shop>/{predictions.csv, mapping.proposed.csv}, <out>/onboarding.json and onboarding.md, and the
"onboarding" section of the benchmark report (pipelines/reports/sections.publish_measurement).
"""
from __future__ import annotations

import time
from pathlib import Path

from pipelines.onboard.classifier import ONBOARD_MODALITIES
from pipelines.onboard.evaluate import TARGETS, score_mapping_proposal, score_scope_detection, targets_met
from pipelines.onboard.mapping_proposal import ProposalConfig

SECTION = "onboarding"
NAME_WEIGHT_ABLATION = 0.5  # the other variant reported beside the primary one (see mapping_proposal's docstring)


def _train_side(holdout: str, shops: list, settings, taxonomy, embed, out: Path, modalities, google_taxonomy,
                max_epochs):
    """(classifier, detector) from the shops other than `holdout`."""
    from pipelines.inference.features import embedding_texts
    from pipelines.onboard.classifier import fit_shop_classifier
    from pipelines.onboard.scope import build_anchors, fit_scope_detector
    from pipelines.onboard.training import load_training_shops, mapped_rows
    from pipelines.settings import MAPPINGS_DIR

    training = load_training_shops([s for s in shops if s != holdout], settings.raw_dir, taxonomy, MAPPINGS_DIR)
    classifier = fit_shop_classifier(mapped_rows(training), taxonomy, out / "model", embed=embed,
                                     modalities=modalities, seed=settings.seed, threads=settings.threads,
                                     max_epochs=max_epochs)
    vectors = {s: embed(embedding_texts(t["title"], t["description"]))[0] for s, t in training.items()}
    detector = fit_scope_detector(build_anchors(taxonomy, training, google_taxonomy), embed, training, vectors)
    return classifier, detector


def onboard_holdout(holdout: str, settings, classifier, detector, embed, out: Path, cfg: ProposalConfig):
    """The label-free part: the held-out shop's export, unlabelled, onboarded. -> (export, predictions, proposal)."""
    from pipelines.files import atomic_write_csv
    from pipelines.onboard.mapping_proposal import write_mapping_proposal
    from pipelines.onboard.products import read_shop_unlabelled, require_products
    from pipelines.onboard.run import onboard_products

    export = require_products(read_shop_unlabelled(holdout, settings.raw_dir(holdout), verify_images=False))
    predictions, proposal = onboard_products(export.products, classifier, detector, embed, cfg)
    atomic_write_csv(predictions, out / "predictions.csv")
    write_mapping_proposal(proposal, out)
    return export, predictions, proposal


def ablation_proposal(export, predictions, classifier, cfg: ProposalConfig) -> tuple[ProposalConfig, object]:
    """The proposal with the other name-vote setting (products only <-> products + the native name's vote), from
    the same classification: label-free, like the primary one."""
    from dataclasses import replace

    from pipelines.onboard.run import classify_native_names, proposal_from_predictions

    other = replace(cfg, name_weight=0.0 if cfg.name_weight else NAME_WEIGHT_ABLATION)
    names = (classify_native_names(classifier, export.products["native_path"], other.min_support)
             if other.name_weight else None)
    return other, proposal_from_predictions(export.products, predictions, other, names)


def score_holdout(holdout: str, export, predictions, proposal, taxonomy, ablation=None) -> dict:
    """The scoring step, the first to read the held-out shop's hand mapping. `ablation`: (config, proposal) of
    the other variant, scored alongside."""
    from pipelines.ingest.mapping import load_mapping
    from pipelines.settings import MAPPINGS_DIR

    hand = load_mapping(MAPPINGS_DIR / f"{holdout}.csv", taxonomy)
    native = export.products["native_path"].tolist()
    mapping = score_mapping_proposal(proposal, native, hand)
    scope = score_scope_detection(predictions["scope_score"], predictions["out_of_scope"], native, hand)
    out = {"mapping": mapping, "scope": scope, "met": targets_met(mapping, scope)}
    if ablation is not None:
        other = score_mapping_proposal(ablation[1], native, hand)
        out["ablation"] = {"name_weight": ablation[0].name_weight,
                           **{k: other[k] for k in ("correct", "consistent", "confident_correct", "confident_share")}}
    return out


def measure_holdout(holdout: str, shops: list, settings, out_dir, *, modalities=ONBOARD_MODALITIES,
                    google_taxonomy=None, cfg: ProposalConfig = ProposalConfig(), max_epochs: int | None = None,
                    roundtrip: bool = True):
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.roundtrip import roundtrip_shop
    from pipelines.onboard.run import onboard_products
    from pipelines.taxonomy.tree import load_taxonomy

    t0 = time.perf_counter()
    out = Path(out_dir) / holdout
    out.mkdir(parents=True, exist_ok=True)
    taxonomy = load_taxonomy(settings.taxonomy_path)
    embed = TextEmbedder.from_settings(settings)
    classifier, detector = _train_side(holdout, shops, settings, taxonomy, embed, out, modalities, google_taxonomy,
                                       max_epochs)
    export, predictions, proposal = onboard_holdout(holdout, settings, classifier, detector, embed, out, cfg)
    ablation = ablation_proposal(export, predictions, classifier, cfg)
    result = score_holdout(holdout, export, predictions, proposal, taxonomy, ablation)
    if roundtrip:  # label-free like the onboarding it repeats; the held-out shop's feeds are written under out/feeds
        result["roundtrip"] = roundtrip_shop(holdout, settings, export, predictions, proposal,
                                             lambda products: onboard_products(products, classifier, detector, embed,
                                                                               cfg), out / "feeds")
        result["met"]["feed_roundtrip"] = result["roundtrip"]["met"]
    return {"holdout": holdout, "training_shops": [s for s in shops if s != holdout], "rows_in": export.rows_in,
            "products": len(predictions), "proposal_rows": len(proposal), **result,
            "classifier": classifier.info, "detector": detector.info,
            "seconds": round(time.perf_counter() - t0, 1)}


def _headline(cells: list) -> dict:
    return {c["holdout"]: {"mapping_correct": c["mapping"]["correct"],
                           "confident_correct": c["mapping"]["confident_correct"],
                           "scope_auroc": c["scope"]["auroc"], "in_scope_flag_rate": c["scope"]["in_scope_flag_rate"],
                           "feed_roundtrip": c.get("roundtrip", {}).get("met"), "met": c["met"]} for c in cells}


def measure_onboarding(settings, out_dir, shops=None, *, modalities=ONBOARD_MODALITIES, google_taxonomy=None,
                       cfg: ProposalConfig = ProposalConfig(), max_epochs: int | None = None,
                       benchmark_md=None, holdouts=None, roundtrip: bool = True) -> dict:
    """Every shop of `holdouts` (default: all of `shops`, the registered benchmark shops whose export exists)
    onboarded as new, the other shops training; writes onboarding.json + onboarding.md in `out_dir` and the 'onboarding' section of
    `benchmark_md` (default <work>/report/benchmark.md). -> the report dict."""
    from pipelines.onboard.measure_report import onboarding_section
    from pipelines.reports.sections import publish_measurement
    from pipelines.onboard.training import measured_shops

    shops = measured_shops(settings, shops)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = [measure_holdout(h, shops, settings, out, modalities=modalities, google_taxonomy=google_taxonomy,
                             cfg=cfg, max_epochs=max_epochs, roundtrip=roundtrip) for h in (holdouts or shops)]
    report = {"data_root": str(settings.data_root), "targets": TARGETS, "modalities": list(modalities),
              "google_taxonomy": str(google_taxonomy) if google_taxonomy else None,
              "proposal_config": cfg.__dict__, "shops": {c["holdout"]: c for c in cells}}
    report["files"] = publish_measurement(  # the benchmark figures' `onboarding` key holds each shop's headline
        SECTION, report, onboarding_section(report), out, benchmark_md or settings.work("report") / "benchmark.md",
        {k: v for k, v in report.items() if k != "shops"} | {"shops": _headline(cells)})
    return report
