"""The adapted classifier: the onboarding classifier (onboard/classifier.py: lexical view + MiniLM, late fusion)
trained with the new shop's unlabelled products in view.

    classifier = adapt_shop_classifier(tables, new_products, "acme", taxonomy, out_dir, embed=embed)
    classifier.classify(titles, descriptions)        # the TwoStage.classify contract, as onboarding expects

AdaptConfig switches each ingredient (the ablation turns them on and off): `centre` (per-shop standardisation of
the named views, centring.py) and `self_train_rounds` (pseudo_labels.py). Early stopping, temperatures and the
pseudo-label threshold read the *training* shops' validation rows only; the new shop gives unlabelled vectors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.adapt.pseudo_labels import PseudoLabelConfig
from pipelines.adapt.shift_routing import ShiftRoutingConfig
from pipelines.onboard.classifier import ShopClassifier


@dataclass(frozen=True)
class AdaptConfig:
    """Default: the strategy the leave-one-platform-out ablation (`prodcat adapt measure`, reports/adaptation)
    picks for every benchmark shop from the *other* two holdouts' test hF1 - one self-training round, title-style
    augmentation, early fusion - so a new shop gets the strategy chosen without any of its labels. Centring is off:
    shops' category mixes differ, so a shop's mean vector carries category evidence that centring removes."""

    centre: tuple = ()  # views centred per shop (e.g. ("text",)); () = off
    self_train_rounds: int = 1  # 0 = off
    pseudo: PseudoLabelConfig = PseudoLabelConfig()
    augment_titles: bool = True  # restyled copies of the training shops' train rows join training (augment.py)
    fusion: str = "early"  # how the lexical and text views are fused (onboard_strategy: late or early)

    @property
    def name(self) -> str:
        parts = (["centre-" + "+".join(self.centre)] if self.centre else []) + \
                ([f"self-train-x{self.self_train_rounds}"] if self.self_train_rounds else []) + \
                (["augment-titles"] if self.augment_titles else []) + \
                ([f"{self.fusion}-fusion"] if self.fusion != "late" else [])
        return ", ".join(parts) or "none"


NO_ADAPTATION = AdaptConfig(centre=(), self_train_rounds=0, augment_titles=False)


class BadAdaptConfig(ValueError):
    """An AdaptConfig naming a view the classifier does not read, or a negative round count."""


@dataclass
class AdaptedClassifier(ShopClassifier):
    """A ShopClassifier for one new shop: its features are centred by that shop's unlabelled means."""

    centre_means: dict = field(default_factory=dict)  # {view: the new shop's mean vector}
    # routing under shift (shift_routing.py): a calibration.Stage over the uncentred lexical view answers where its
    # path probability is >= route_below, this classifier's stage the rest
    stage1: object | None = None
    route_below: float | None = None
    review_below: float | None = None

    def classify(self, titles, descriptions, image_paths=None, num_workers: int | None = 0,
                 progress: bool = False):
        from pipelines.adapt.shift_routing import classify_routed
        from pipelines.onboard.classifier import _texts

        texts = _texts(titles, descriptions)
        if self.stage1 is None or self.route_below is None or not texts:
            return super().classify(titles, descriptions, image_paths, num_workers, progress)
        return classify_routed(self, texts)

    def features(self, texts: list[str]) -> tuple[dict, dict]:
        from pipelines.adapt.centring import UNIT_NORM_VIEWS, centre_rows

        features, available = super().features(texts)
        for view, mean in self.centre_means.items():
            features[view] = centre_rows(features[view], available[view], mean, view in UNIT_NORM_VIEWS)
        return features, available


def centred_views(views, centre) -> tuple[dict, dict, dict]:
    """(training features, new-shop features, {view: new shop's mean}) with `centre`'s views centred per shop."""
    from pipelines.adapt.centring import UNIT_NORM_VIEWS, centre_by_shop, centre_rows, shop_mean

    unknown = sorted(set(centre) - set(views.modalities))
    if unknown:
        raise BadAdaptConfig(f"cannot centre {unknown}: the classifier reads {views.modalities}")
    train, new, means = dict(views.train_features), dict(views.new_features), {}
    for view in centre:
        unit = view in UNIT_NORM_VIEWS
        train[view], _ = centre_by_shop(train[view], views.train_available[view], views.train_shop, unit)
        means[view] = shop_mean(new[view], views.new_available[view], views.new_shop)
        new[view] = centre_rows(new[view], views.new_available[view], means[view], unit)
    return train, new, means


@dataclass
class _Fitted:
    stage: object  # pipelines.inference.calibration.Stage
    info: dict


def _train_stage(features: dict, available: dict, labels: list, split: np.ndarray, taxonomy, out_dir, modalities,
                 seed: int, threads: int, max_epochs, fusion: str = "late") -> _Fitted:
    """Train (early stopping on 'val', the training shops' rows) and calibrate temperatures on the same rows."""
    from pipelines.onboard.classifier import onboard_strategy, train_calibrated_stage

    return _Fitted(*train_calibrated_stage(onboard_strategy(modalities, fusion), features, available, labels, split,
                                           taxonomy, out_dir, seed=seed, threads=threads, max_epochs=max_epochs))


def val_threshold(stage, features: dict, available: dict, labels: list, split: np.ndarray, precision: float) -> float:
    """The pseudo-label threshold from the training shops' validation rows (pseudo_labels.threshold_at_precision)."""
    from pipelines.adapt.pseudo_labels import threshold_at_precision

    val = np.flatnonzero(split == "val")
    pred = stage.predict({m: v[val] for m, v in features.items()}, {m: v[val] for m, v in available.items()})
    correct = [tuple(p)[:len(labels[i])] == tuple(labels[i]) for p, i in zip(pred.paths, val)]
    return threshold_at_precision(pred.prob, correct, precision)


@dataclass
class AdaptRound:
    """One step of the adaptation: round 0 is the classifier before self-training (centred or not)."""

    round: int
    fitted: _Fitted
    new_prediction: object  # calibration.Prediction on every product of the new shop
    pseudo: dict  # the pseudo-labels this round trained on (empty for round 0)
    pseudo_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # which new-shop products
    pseudo_labels: list = field(default_factory=list)  # ... and their labels (() where none)


def _with_pseudo_rows(base: tuple, new_feats: dict, new_avail: dict, mask: np.ndarray, pseudo_labels: list) -> tuple:
    feats, avail, labels, split = base
    if not mask.any():
        return base
    return ({m: np.concatenate([feats[m], new_feats[m][mask]]) for m in feats},
            {m: np.concatenate([avail[m], new_avail[m][mask]]) for m in avail},
            labels + [pseudo_labels[i] for i in np.flatnonzero(mask)],
            np.concatenate([split, np.full(int(mask.sum()), "train")]))


def training_base(views, train_features: dict) -> tuple:
    """(features, available, labels, split) of the training shops' mapped rows: what every adapted model trains on
    before the new shop's rows (pseudo-labelled or hand-labelled) are appended."""
    rows = np.flatnonzero(views.mapped & np.isin(views.split, ["train", "val", "test"]))
    return ({m: train_features[m][rows] for m in views.modalities},
            {m: views.train_available[m][rows] for m in views.modalities},
            [views.labels[i] for i in rows], views.split[rows])


def round_base(views, cfg: AdaptConfig) -> tuple:
    """(training rows as training_base, plus the restyled copies when `cfg.augment_titles`; the new shop's
    features and availability), with `cfg.centre` applied: what every model of a `cfg` adaptation starts from (its
    rounds, and the labelling curves of active.py)."""
    train, new, _ = centred_views(views, cfg.centre)
    base = training_base(views, train)
    if cfg.augment_titles:  # the restyled copies are training rows of their source shop (split 'train')
        from pipelines.adapt.augment import augmented_features

        aug_feats, aug_avail, aug_labels = augmented_features(views, cfg.centre)
        base = _with_pseudo_rows(base, aug_feats, aug_avail, np.ones(len(aug_labels), bool), aug_labels)
    return base, new, {m: views.new_available[m] for m in views.modalities}


def adaptation_rounds(views, cfg: AdaptConfig, taxonomy, out_dir, *, seed: int = 0, threads: int = 0,
                      max_epochs: int | None = None):
    """Yield AdaptRound 0 (trained on the training shops, `cfg.centre` applied) and one per self-training round
    (retrained from scratch on the training rows + that round's pseudo-labelled rows of the new shop)."""
    from pathlib import Path

    from pipelines.adapt.pseudo_labels import check_pseudo_config, select_pseudo_labels

    if cfg.self_train_rounds < 0:
        raise BadAdaptConfig(f"self_train_rounds must be >= 0, got {cfg.self_train_rounds}")
    check_pseudo_config(cfg.pseudo)
    base, new, new_avail = round_base(views, cfg)
    args = dict(taxonomy=taxonomy, modalities=views.modalities, seed=seed, threads=threads, max_epochs=max_epochs,
                fusion=cfg.fusion)
    fitted = _train_stage(*base, out_dir=Path(out_dir) / "round0", **args)
    yield AdaptRound(0, fitted, fitted.stage.predict(new, new_avail), {})
    for r in range(1, cfg.self_train_rounds + 1):
        threshold = val_threshold(fitted.stage, *base, cfg.pseudo.precision)
        previous = fitted.stage.predict(new, new_avail)
        mask, labels, summary = select_pseudo_labels(previous.paths, previous.prob, views.new_groups, threshold,
                                                     cfg.pseudo)
        fitted = _train_stage(*_with_pseudo_rows(base, new, new_avail, mask, labels),
                              out_dir=Path(out_dir) / f"round{r}", **args)
        yield AdaptRound(r, fitted, fitted.stage.predict(new, new_avail), summary, mask, labels)


def adapted_classifier(views, fitted: _Fitted, cfg: AdaptConfig, embed) -> AdaptedClassifier:
    """The classify()-contract object for the new shop (its centring means travel with it)."""
    from pipelines.inference.stage1 import stage1_config

    _, _, means = centred_views(views, cfg.centre)
    info = fitted.info | {"adaptation": cfg.name, "new_shop": views.new_shop,
                          "training_shops": sorted(set(views.train_shop.tolist()))}
    return AdaptedClassifier(fitted.stage, views.space, embed, list(stage1_config().get("abstain", [])), info,
                             centre_means=means)


def adapt_shop_classifier(tables: dict, new_products, new_shop: str, taxonomy, out_dir, *, embed=None,
                          cfg: AdaptConfig = AdaptConfig(), modalities=("lexical", "text"), seed: int = 0,
                          threads: int = 0, max_epochs: int | None = None,
                          routing: ShiftRoutingConfig | None = ShiftRoutingConfig()) -> AdaptedClassifier:
    """The entry point: training shops' labelled `tables` ({shop: products with category_path}, onboard.training)
    and the new shop's *unlabelled* products (LabelLeak if they hold a label column) -> the adapted classifier,
    routing under shift (shift_routing.py: a lexical stage 1, thresholds from the new shop's products) unless
    `routing` is None."""
    from pipelines.adapt.augment import AugmentConfig
    from pipelines.adapt.views import build_adapt_views

    views = build_adapt_views(tables, new_products, new_shop, embed, modalities,
                              augment=AugmentConfig() if cfg.augment_titles else None)
    last = None
    for last in adaptation_rounds(views, cfg, taxonomy, out_dir, seed=seed, threads=threads, max_epochs=max_epochs):
        pass
    classifier = adapted_classifier(views, last.fitted, cfg, embed)
    classifier.info["pseudo_labels"] = last.pseudo
    if routing is not None:
        from pathlib import Path

        from pipelines.adapt.shift_routing import fit_shift_router

        router = fit_shift_router(views, last, cfg.centre, taxonomy, Path(out_dir) / "stage1", config=routing,
                                  seed=seed, threads=threads, max_epochs=max_epochs)
        classifier.stage1, classifier.route_below, classifier.review_below = \
            router.stage1, router.route_below, router.review_below
        classifier.info["routing"] = router.info
    return classifier
