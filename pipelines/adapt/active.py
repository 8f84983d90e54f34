"""The fewest labels that finish the job: an active-learning loop next to a random few-shot curve (issue 18).

A person labels whole product groups of the new shop (colour and size variants share a category, so one answer
covers the group). The question is which groups, and how many, lift the adapted classifier to where it should be:

    for point in label_curve(views, start_round, candidates, oracle, (0.005, 0.01, 0.02, 0.05), "active", ...):
        point["fraction"], point["groups_labelled"], point["paths"]   # a model retrained at each budget

  - random: a seeded permutation of the candidate groups; each budget takes its first ceil(f x groups), so the
    labelled sets are nested (the usual few-shot curve);
  - active: the current model's predictions pick the next groups (a real loop: every step retrains and re-predicts)
    by the order onboarding's label-first list uses (onboard/label_first.rank_for_labelling): most uncertain first
    (the weakest per-level calibrated confidence of the predicted path), one per group, round-robin over the
    predicted level-2 nodes, and optionally no group nearly identical to one already picked (cosine of a view).

Each budget trains from scratch (adapted._train_stage) on the training shops' rows + the start round's
pseudo-labelled products of the new shop outside the labelled groups + the labelled groups' products with the
person's answers. Early stopping and temperatures still read the training shops' validation rows only; the labelled
groups are the one place the new shop's labels enter, and only those the oracle was asked for. A group the person
answers with no label ("not in the taxonomy") counts as effort and adds no row.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

STRATEGIES = ("random", "active")
DEFAULT_LABEL_FRACTIONS = (0.005, 0.01, 0.02, 0.05)
NEAR_DUPLICATE_COSINE = 0.98  # above it two groups' representative products say the same thing


class BadLabelFractions(ValueError):
    """A --label-fractions value that is not a share in (0, 1]."""


def parse_label_fractions(text: str) -> tuple:
    """'0.005,0.01' -> (0.005, 0.01); '' -> () (the curves are off)."""
    items = [t.strip() for t in str(text or "").split(",") if t.strip()]
    try:
        out = tuple(sorted({float(t) for t in items}))
    except ValueError as err:
        raise BadLabelFractions(f"--label-fractions {text!r}: give shares such as 0.005,0.01,0.02") from err
    bad = [f for f in out if not 0 < f <= 1]
    if bad:
        raise BadLabelFractions(f"--label-fractions {text!r}: {bad} not in (0, 1] (a share of the shop's groups)")
    return out


def candidate_groups(groups, mask) -> list[str]:
    """The groups every product of which is in `mask` (e.g. the shop's 'train' split), sorted: what may be labelled."""
    groups, mask = np.asarray(groups).astype(str), np.asarray(mask, bool)
    outside = set(groups[~mask].tolist())
    return sorted(set(groups[mask].tolist()) - outside)


def pick_random_groups(pool: list, k: int, seed: int = 0) -> list[str]:
    """The first `k` of one seeded permutation of `pool`: a larger k keeps every group a smaller one picked."""
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:max(int(k), 0)]]


def _skip_near_duplicates(rows: list, vectors: np.ndarray, avoid: np.ndarray, k: int, max_cosine: float) -> list:
    """`rows` in order, leaving out those nearly identical to a row already taken or to `avoid`; the left-out ones
    fill the end when too few remain."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    avoid = avoid / np.maximum(np.linalg.norm(avoid, axis=1, keepdims=True), 1e-12)
    taken = np.zeros((len(avoid) + k, unit.shape[1]), unit.dtype)
    taken[:len(avoid)] = avoid
    n, kept, skipped = len(avoid), [], []
    for r in rows:
        if len(kept) == k:
            break
        if n and float((taken[:n] @ unit[r]).max()) >= max_cosine:
            skipped.append(r)
            continue
        kept.append(r)
        taken[n], n = unit[r], n + 1
    return kept + skipped[:k - len(kept)]


def pick_uncertain_groups(prediction, groups, pool, k: int, *, labelled=(), vectors=None,
                          max_cosine: float = NEAR_DUPLICATE_COSINE) -> list[str]:
    """The `k` groups of `pool` (minus `labelled`) to label next from `prediction` (calibration.Prediction on every
    product, row-aligned with `groups`), by onboard.label_first.rank_for_labelling; with `vectors` ([n, d], one
    view of every product) a group nearly identical to a labelled or already picked one waits its turn."""
    import pandas as pd

    from pipelines.onboard.label_first import rank_for_labelling, weakest_confidence
    from pipelines.taxonomy.tree import path_str

    groups = np.asarray(groups).astype(str)
    open_groups = set(pool) - set(labelled)
    eligible = np.array([g in open_groups for g in groups], bool)
    table = pd.DataFrame({"row": np.arange(len(groups)), "group_id": groups,
                          "node": [path_str(tuple(p)[:2]) for p in prediction.paths],
                          "uncertainty": 1.0 - weakest_confidence(prediction.conf)})[eligible]
    ranked = rank_for_labelling(table, None if vectors is not None else k, key="row")
    rows = ranked["row"].tolist()
    if vectors is not None:
        avoid = np.asarray(vectors)[np.isin(groups, list(labelled))]
        rows = _skip_near_duplicates(rows, np.asarray(vectors, np.float32), avoid.astype(np.float32), k, max_cosine)
    return [str(groups[r]) for r in rows[:k]]


class HandLabelOracle:
    """The simulated person of the measurement: answers with the held-out shop's hand labels, read lazily and only
    for the groups asked. A group's answer is its products' most common in-scope hand path; () when none is in
    scope (the person says "not in the taxonomy"). `asked` records every question, in order."""

    def __init__(self, holdout: str, products, taxonomy):
        self.holdout, self.products, self.taxonomy = holdout, products, taxonomy
        self.groups = products["group_id"].astype(str).to_numpy()
        self.asked: list[str] = []
        self._mapping = None

    def __call__(self, group_ids) -> dict:
        from pipelines.ingest.mapping import load_mapping
        from pipelines.onboard.evaluate import hand_labels
        from pipelines.onboard.training import SCOPE_IN
        from pipelines.settings import MAPPINGS_DIR

        group_ids = [str(g) for g in group_ids]
        self.asked.extend(group_ids)
        if self._mapping is None:
            self._mapping = load_mapping(MAPPINGS_DIR / f"{self.holdout}.csv", self.taxonomy)
        rows = np.flatnonzero(np.isin(self.groups, group_ids))
        labels = hand_labels([list(self.products["native_path"].iloc[i]) for i in rows], self._mapping)
        votes = {g: Counter() for g in group_ids}
        for i, path, scope in zip(rows, labels["hand_path"], labels["scope"]):
            if scope == SCOPE_IN and path:
                votes[self.groups[i]][tuple(path)] += 1
        return {g: (min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else ()) for g, c in votes.items()}


def curve_rows(groups, labelled: dict, pseudo_rows, pseudo_labels) -> tuple[np.ndarray, list]:
    """(bool per new-shop product: a training row, its label): the labelled groups' products with their answers
    (none for an empty answer), and outside them the start round's pseudo-labelled products."""
    groups = np.asarray(groups).astype(str)
    in_labelled = np.isin(groups, list(labelled))
    answered = np.array([bool(labelled.get(g)) for g in groups], bool) & in_labelled
    mask = answered | (np.asarray(pseudo_rows, bool) & ~in_labelled)
    labels = [tuple(labelled[g]) if a else (tuple(p) if m else ()) for g, a, p, m in
              zip(groups, answered, pseudo_labels, mask)]
    return mask, labels


def _start_pseudo(start, n: int) -> tuple[np.ndarray, list]:
    rows = np.asarray(start.pseudo_rows, bool)
    if len(rows) != n:  # round 0 holds no pseudo-labels
        return np.zeros(n, bool), [()] * n
    return rows, list(start.pseudo_labels)


def label_curve(views, start, candidates_mask, oracle, fractions, strategy: str, taxonomy, out_dir, *,
                adapt_cfg=None, seed: int = 0, threads: int = 0, max_epochs: int | None = None,
                dedupe_view=None):
    """Yield, per fraction ascending, {fraction, groups_labelled, groups_answered, products_labelled, rows, labels,
    groups, picked, paths, prediction, info}: the model trained with ceil(fraction x candidate groups) groups
    labelled (see the module docstring). `start` is the AdaptRound the loop starts from (its pseudo-labels and
    predictions), `adapt_cfg` the AdaptConfig that made it (its centring and augmentation; default none);
    `oracle(group_ids) -> {group: path}` is asked only for the newly picked groups."""
    from pipelines.adapt.adapted import NO_ADAPTATION, _train_stage, _with_pseudo_rows, round_base

    if strategy not in STRATEGIES:
        raise ValueError(f"labelling strategy {strategy!r}: one of {STRATEGIES}")
    base, new, new_avail = round_base(views, adapt_cfg or NO_ADAPTATION)
    groups = np.asarray(views.new_groups).astype(str)
    pool = candidate_groups(groups, candidates_mask)
    pseudo_rows, pseudo_labels = _start_pseudo(start, len(groups))
    args = dict(taxonomy=taxonomy, modalities=views.modalities, seed=seed, threads=threads, max_epochs=max_epochs,
                fusion=(adapt_cfg or NO_ADAPTATION).fusion)
    labelled, prediction = {}, start.new_prediction
    for fraction in sorted(set(float(f) for f in fractions)):
        target = min(len(pool), math.ceil(round(fraction * len(pool), 9)))
        fresh = []
        if target > len(labelled):
            fresh = (pick_random_groups(pool, target, seed)[len(labelled):] if strategy == "random" else
                     pick_uncertain_groups(prediction, groups, pool, target - len(labelled), labelled=labelled,
                                           vectors=new[dedupe_view] if dedupe_view else None))
            answers = oracle(fresh)
            labelled.update({g: tuple(answers.get(g) or ()) for g in fresh})
        mask, labels = curve_rows(groups, labelled, pseudo_rows, pseudo_labels)
        fitted = _train_stage(*_with_pseudo_rows(base, new, new_avail, mask, labels),
                              out_dir=Path(out_dir) / strategy / f"labelled-{fraction:g}", **args)
        prediction = fitted.stage.predict(new, new_avail)
        yield {"fraction": fraction, "groups_labelled": len(labelled),
               "groups_answered": sum(bool(v) for v in labelled.values()),
               "products_labelled": int(np.isin(groups, list(labelled)).sum()), "rows": mask, "labels": labels,
               "groups": dict(labelled), "picked": list(fresh), "paths": [tuple(p) for p in prediction.paths],
               "prediction": prediction, "info": fitted.info}


def measure_label_curves(views, start, products, holdout: str, fractions, taxonomy, out_dir, settings, *,
                         adapt_cfg=None, max_epochs=None) -> dict:
    """Both curves for one held-out shop, scored like the adaptation variants (measure.score_variants): the
    candidates are the groups of its 'train' split (its test split is never labelled), the oracle its hand labels."""
    from pipelines.adapt.measure import score_variants

    oracle = HandLabelOracle(holdout, products, taxonomy)
    candidates = (products["split"].astype(str) == "train").to_numpy()
    dedupe = "text" if "text" in views.modalities else None
    curves = {"candidate_groups": len(candidate_groups(views.new_groups, candidates))}
    for strategy in STRATEGIES:
        points = list(label_curve(views, start, candidates, oracle, fractions, strategy, taxonomy, out_dir,
                                  adapt_cfg=adapt_cfg, seed=settings.seed, threads=settings.threads,
                                  max_epochs=max_epochs, dedupe_view=dedupe))
        found = {f"{p['fraction']:g}": {"paths": p["paths"], "pseudo": {}, "info": p["info"]} for p in points}
        scored = score_variants(holdout, products, found, taxonomy)["variants"]
        curves[strategy] = [{"fraction": p["fraction"], "groups_labelled": p["groups_labelled"],
                             "groups_answered": p["groups_answered"], "products_labelled": p["products_labelled"],
                             "test": scored[f"{p['fraction']:g}"]["test"], "all": scored[f"{p['fraction']:g}"]["all"],
                             "val_hF1": p["info"].get("val_hF1")} for p in points]
    curves["oracle_questions"] = len(oracle.asked)
    return curves


def curve_summary(cells: list, target: float) -> dict:
    """Mean test hF1 per strategy per fraction over the holdouts with curves, and the active 1% target."""
    cells = [c for c in cells if c.get("curves")]
    if not cells:
        return {}
    mean = {}
    for strategy in STRATEGIES:
        by_fraction = {}
        for cell in cells:
            for p in cell["curves"][strategy]:
                by_fraction.setdefault(f"{p['fraction']:g}", []).append(p["test"].get("hF1", 0.0))
        mean[strategy] = {f: round(float(np.mean(v)), 4) for f, v in by_fraction.items()}
    one = mean["active"].get("0.01")
    return {"mean_test_hF1": mean, "active_1pct_mean_test_hF1": one,
            "active_1pct_met": None if one is None else bool(one >= target)}
