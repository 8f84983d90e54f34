"""`prodcat adapt measure`: zero-label adaptation, leave-one-platform-out (issue 18's first target).

For each benchmark shop in turn, as if it were new:
  1. the other shops' products (their hand mappings allowed) and the held-out shop's export read *without* its
     mapping (onboard.products.read_shop_unlabelled: no label column; build_adapt_views refuses one) give the
     feature views once;
  2. every variant of the ablation is trained on them (per-shop centring on/off x self-training rounds): the new
     shop's products are predicted after each, and only the predicted paths are kept;
  3. only then is the held-out shop's hand mapping read, to score: hF1 at the label's known depth (a prediction
     deeper than the hand path is cut to its depth) and per-level accuracy on its *grouped test split* (the
     split column normalisation assigns by product group), and on all its mapped products beside it.
Writes <out>/adaptation.json, adaptation.md and the "adaptation" section of the benchmark report.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipelines.adapt.adapted import AdaptConfig
from pipelines.adapt.pseudo_labels import PseudoLabelConfig

SECTION = "adaptation"
TARGETS = {"mean_test_hF1": 0.92, "every_shop_test_hF1": 0.88, "active_1pct_mean_test_hF1": 0.95}
# routing under shift (shift_routing.py), on every holdout: routed hF1 at most this many points below stage 2
# alone, and the products flagged needs_review hold at least this share of the routed answer's errors
TARGETS |= {"routed_within_points": 0.2, "review_holds_errors": 0.5}
DEFAULT_CENTRES = ((), ("text",))  # the ablation's centring settings (each with 0..rounds self-training rounds)


@dataclass(frozen=True)
class AdaptMeasureConfig:
    centres: tuple = DEFAULT_CENTRES
    rounds: int = 2
    pseudo: PseudoLabelConfig = PseudoLabelConfig()
    max_epochs: int | None = None
    augment: tuple = (False, True)  # title-style augmentation (augment.py) off and/or on: each value doubles the ablation
    label_fractions: tuple = (0.005, 0.01, 0.02, 0.05)  # the labelling curves' budgets (active.py); () = off
    fusions: tuple = ("early", "late")  # lexical + text fusion of the ablation's models (early and/or late)

    @property
    def primary(self) -> AdaptConfig:
        """The strategy reported as "after": onboarding's default (AdaptConfig()) when the ablation holds it, else
        every ingredient on (the last centring setting, every round)."""
        default = AdaptConfig(pseudo=self.pseudo)
        if default.name in {v.name for v in variant_configs(self)}:
            return default
        return AdaptConfig(tuple(self.centres[-1]) if self.centres else (), self.rounds, self.pseudo,
                           augment_titles=bool(self.augment and self.augment[-1]), fusion=self.fusions[-1])


class BadCentres(ValueError):
    """A --centres value naming no known view."""


def parse_centres(text: str, views=("lexical", "text")) -> tuple:
    """'none,text,text+lexical' -> ((), ('text',), ('text', 'lexical'))."""
    out = []
    for item in [t.strip() for t in str(text).split(",") if t.strip()]:
        names = () if item == "none" else tuple(v.strip() for v in item.split("+"))
        bad = [n for n in names if n not in views]
        if bad:
            raise BadCentres(f"--centres {text!r}: {bad} is not a view ({', '.join(views)}) nor 'none'")
        out.append(names)
    if not out:
        raise BadCentres(f"--centres {text!r}: give at least one setting, e.g. none,text")
    return tuple(out)


def parse_fusions(text: str) -> tuple:
    """'early,late' -> ('early', 'late'): the fusions of the ablation (the paper's early-vs-late claim re-tested)."""
    from pipelines.onboard.classifier import FUSIONS

    items = tuple(dict.fromkeys(t.strip().lower() for t in str(text).split(",") if t.strip()))
    if not items or any(i not in FUSIONS for i in items):
        raise ValueError(f"--fusion {text!r}: give {' or '.join(FUSIONS)} or both, comma-separated")
    return items


def parse_augment(text: str) -> tuple:
    """'off,on' -> (False, True): the title-augmentation settings of the ablation."""
    values = {"off": False, "on": True}
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not items or any(i not in values for i in items):
        raise ValueError(f"--augment {text!r}: give off, on or off,on")
    return tuple(dict.fromkeys(values[i] for i in items))


def variant_configs(cfg: AdaptMeasureConfig) -> list[AdaptConfig]:
    """Every (augmentation, centring, rounds) cell of the ablation; its `name` is the key in the report."""
    return [AdaptConfig(tuple(c), r, cfg.pseudo, augment_titles=bool(a), fusion=f) for f in cfg.fusions
            for a in cfg.augment for c in cfg.centres for r in range(cfg.rounds + 1)]


def predict_variants(views, cfg: AdaptMeasureConfig, taxonomy, out: Path, settings) -> tuple[dict, object]:
    """({variant name: {paths, pseudo, info}} on the held-out shop's products, the primary strategy's AdaptRound):
    label-free. Routing under shift and the labelling curves start from that round."""
    from pipelines.adapt.adapted import adaptation_rounds

    found, primary = {}, None
    for fusion, augment, centre in [(f, a, c) for f in cfg.fusions for a in cfg.augment for c in cfg.centres]:
        chain = AdaptConfig(tuple(centre), cfg.rounds, cfg.pseudo, augment_titles=bool(augment), fusion=fusion)
        folder = ("centre-" + "+".join(centre) if centre else "no-centre") + ("-augment-titles" if augment else "") \
            + ("" if fusion == "late" else f"-{fusion}-fusion")
        for step in adaptation_rounds(views, chain, taxonomy, out / folder,
                                      seed=settings.seed, threads=settings.threads, max_epochs=cfg.max_epochs):
            name = replace(chain, self_train_rounds=step.round).name
            found[name] = {"paths": [tuple(p) for p in step.new_prediction.paths], "pseudo": step.pseudo,
                           "info": step.fitted.info}
            if name == cfg.primary.name:
                primary = step
    return found, primary


def score_paths(hand: list, paths: list, mask: np.ndarray, depth: int) -> dict:
    """hF1 at the label's known depth + per-level accuracy over the products in `mask` (hand-mapped ones)."""
    from pipelines.classify.metrics import hierarchical_prf, per_level

    rows = np.flatnonzero(mask)
    true, pred = [hand[i] for i in rows], [paths[i] for i in rows]
    if not rows.size:
        return {"n": 0}
    prf = hierarchical_prf(true, pred, truncate=True)
    levels = per_level(true, pred, depth)
    exact = float(np.mean([tuple(p[:len(t)]) == tuple(t) for t, p in zip(true, pred)]))
    return {"n": int(rows.size), "hF1": round(prf["hF1"], 4), "exact_at_label_depth": round(exact, 4),
            **{k: round(v, 4) for k, v in levels.items() if k.startswith("acc_")},
            **{k: v for k, v in levels.items() if k.startswith("n_L")}}


def hand_scoring_rows(holdout: str, products, taxonomy, mappings_dir=None) -> tuple:
    """(hand path per product, mapped in scope, the rows scored, which: 'test' - the grouped test split - when the
    shop has one, else 'all' mapped products) from the shop's hand mapping, read after every prediction is made."""
    from pipelines.ingest.mapping import load_mapping
    from pipelines.onboard.evaluate import hand_labels
    from pipelines.onboard.training import SCOPE_IN
    from pipelines.settings import MAPPINGS_DIR

    mapping = load_mapping(Path(mappings_dir or MAPPINGS_DIR) / f"{holdout}.csv", taxonomy)
    labels = hand_labels([list(n) for n in products["native_path"]], mapping)
    mapped = (labels["scope"] == SCOPE_IN).to_numpy()
    split = products["split"].astype(str).to_numpy() if "split" in products else np.full(len(mapped), "")
    test = mapped & (split == "test")
    return (labels["hand_path"].tolist(), mapped) + ((test, "test") if test.any() else (mapped, "all"))


def score_variants(holdout: str, products, found: dict, taxonomy, routes: dict | None = None,
                   stage2: str | None = None) -> dict:
    """The scoring step, the first to read the held-out shop's hand mapping. `routes`: shift_routing_outcomes,
    scored against `stage2` (the primary variant) on the same products."""
    hand, mapped, rows, where = hand_scoring_rows(holdout, products, taxonomy)
    scored = {"scored_on": where,
              "variants": {name: {"test": score_paths(hand, v["paths"], rows, taxonomy.depth),
                                  "all": score_paths(hand, v["paths"], mapped, taxonomy.depth),
                                  "pseudo": v["pseudo"], "classifier": v["info"]} for name, v in found.items()}}
    if routes and stage2 in found:
        from pipelines.adapt.shift_routing import score_routing

        scored["routing"] = score_routing(hand, rows, routes, found[stage2]["paths"]) | {
            "router": routes["router"]}
    return scored


def measure_adaptation_holdout(holdout: str, shops: list, settings, out_dir, cfg: AdaptMeasureConfig,
                               modalities=("lexical", "text")) -> dict:
    from pipelines.adapt.augment import AugmentConfig
    from pipelines.adapt.views import build_adapt_views
    from pipelines.onboard.embedding import TextEmbedder
    from pipelines.onboard.products import read_shop_unlabelled, require_products
    from pipelines.onboard.training import load_training_shops
    from pipelines.settings import MAPPINGS_DIR
    from pipelines.taxonomy.tree import load_taxonomy

    t0 = time.perf_counter()
    out = Path(out_dir) / holdout
    taxonomy = load_taxonomy(settings.taxonomy_path)
    embed = TextEmbedder.from_settings(settings) if "text" in modalities else None
    training = [s for s in shops if s != holdout]
    tables = load_training_shops(training, settings.raw_dir, taxonomy, MAPPINGS_DIR)
    products = require_products(read_shop_unlabelled(holdout, settings.raw_dir(holdout), verify_images=False)).products
    # the restyled copies are computed once, when any variant of the ablation trains on them
    views = build_adapt_views(tables, products, holdout, embed, modalities,
                              augment=AugmentConfig() if any(cfg.augment) else None)
    found, primary = predict_variants(views, cfg, taxonomy, out, settings)
    routes = None
    if primary is not None:  # routing under shift: stage 1 + thresholds from the unlabelled products, label-free
        from pipelines.adapt.shift_routing import shift_routing_outcomes

        routes = shift_routing_outcomes(views, primary, cfg.primary.centre, taxonomy, out / "shift-stage1", settings,
                                        max_epochs=cfg.max_epochs)
    scored = score_variants(holdout, products, found, taxonomy, routes, cfg.primary.name)
    if cfg.label_fractions and primary is not None:  # the labelling curves start where zero-label adaptation ends
        from pipelines.adapt.active import measure_label_curves

        scored["curves"] = measure_label_curves(views, primary, products, holdout, cfg.label_fractions, taxonomy,
                                                out / "curves", settings, adapt_cfg=cfg.primary,
                                                max_epochs=cfg.max_epochs)
    return {"holdout": holdout, "training_shops": training, "products": len(products), **scored,
            "seconds": round(time.perf_counter() - t0, 1)}


def summarise_adaptation(cells: list, cfg: AdaptMeasureConfig) -> dict:
    """Mean test hF1 per variant over the holdouts, and the targets for the primary strategy."""
    names = list(cells[0]["variants"]) if cells else []
    mean = {n: round(float(np.mean([c["variants"][n]["test"].get("hF1", 0.0) for c in cells])), 4) for n in names}
    primary = cfg.primary.name
    per_shop = {c["holdout"]: c["variants"].get(primary, {}).get("test", {}).get("hF1") for c in cells}
    met = {"mean_test_hF1": bool(mean.get(primary, 0.0) >= TARGETS["mean_test_hF1"]),
           "every_shop_test_hF1": all(v is not None and v >= TARGETS["every_shop_test_hF1"] for v in per_shop.values())}
    from pipelines.adapt.active import curve_summary

    curves = curve_summary(cells, TARGETS["active_1pct_mean_test_hF1"])
    if curves:
        met["active_1pct_mean_test_hF1"] = curves["active_1pct_met"]
    from pipelines.adapt.shift_routing import routing_summary

    routing = routing_summary(cells, TARGETS)
    met |= routing["met"]
    return {"before": "none", "after": primary, "mean_test_hF1": mean, "primary_per_shop": per_shop, "met": met,
            "curves": curves, "routing": routing,
            "chosen_on_other_holdouts": chosen_on_other_holdouts(cells)}


def chosen_on_other_holdouts(cells: list) -> dict:
    """Per holdout, the strategy with the best mean test hF1 on the *other* holdouts and its score here: a
    strategy choice that never reads this shop's test labels (those holdouts' models did train on this shop's
    labelled products, which a training shop's labels may do)."""
    if len(cells) < 2:
        return {}
    picks = {}
    for cell in cells:
        others = [c for c in cells if c is not cell]
        best = max(cell["variants"], key=lambda n: (np.mean([c["variants"][n]["test"].get("hF1", 0.0)
                                                             for c in others]), n == "none"))
        picks[cell["holdout"]] = {"strategy": best, "test_hF1": cell["variants"][best]["test"].get("hF1")}
    scores = [p["test_hF1"] or 0.0 for p in picks.values()]
    return {"per_shop": picks, "mean_test_hF1": round(float(np.mean(scores)), 4),
            "min_test_hF1": round(float(np.min(scores)), 4)}


def holdout_cells(holdouts: list, shops: list, settings, out: Path, cfg: AdaptMeasureConfig, modalities,
                  jobs: int = 1) -> list:
    """measure_adaptation_holdout per held-out shop, in order; with jobs > 1 that many at once, each in its own
    (spawned) process with one torch thread - the holdouts share nothing but the embedding store, whose writes
    are atomic."""
    if jobs <= 1 or len(holdouts) <= 1:
        return [measure_adaptation_holdout(h, shops, settings, out, cfg, modalities) for h in holdouts]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    one_thread = settings.with_(threads=1)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(measure_adaptation_holdout, h, shops, one_thread, out, cfg, modalities)
                   for h in holdouts]
        return [f.result() for f in futures]


def measure_adaptation(settings, out_dir, shops=None, *, cfg: AdaptMeasureConfig = AdaptMeasureConfig(),
                       modalities=("lexical", "text"), holdouts=None, benchmark_md=None, jobs: int = 1) -> dict:
    """Every shop of `holdouts` (default: all registered benchmark shops with an export) adapted to as new (`jobs`
    at a time); writes adaptation.json + adaptation.md in `out_dir` and the 'adaptation' section of `benchmark_md`
    (default <work>/report/benchmark.md). -> the report dict."""
    from pipelines.adapt.measure_report import adaptation_section
    from pipelines.reports.sections import publish_measurement
    from pipelines.onboard.training import measured_shops

    shops = measured_shops(settings, shops)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = holdout_cells(list(holdouts or shops), shops, settings, out, cfg, modalities, jobs)
    report = {"data_root": str(settings.data_root), "targets": TARGETS, "modalities": list(modalities),
              "config": {"centres": [list(c) for c in cfg.centres], "rounds": cfg.rounds,
                         "augment": [bool(a) for a in cfg.augment], "fusions": list(cfg.fusions),
                         "pseudo": cfg.pseudo.__dict__, "max_epochs": cfg.max_epochs, "primary": cfg.primary.name,
                         "label_fractions": list(cfg.label_fractions)},
              "summary": summarise_adaptation(cells, cfg), "shops": {c["holdout"]: c for c in cells}}
    report["files"] = publish_measurement(
        SECTION, report, adaptation_section(report), out, benchmark_md or settings.work("report") / "benchmark.md",
        {k: v for k, v in report.items() if k != "shops"})
    return report
