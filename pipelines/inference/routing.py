"""The routing threshold between stage 1 and stage 2, chosen on validation, and the accuracy/cost trade-off report.

Products whose calibrated stage-1 path probability is below the threshold go to stage 2 (the champion). The
threshold is the smallest routed share whose validation hF1 is within `routing.max_drop` of stage 2 alone
(stage1.yaml); the test split then shows the whole sweep from all-stage-1 to all-stage-2. routing.json, beside
stage 1, holds the threshold, its target, the validation and test figures, the abstention summary and stage 2's
temperatures keyed by the stage-2 weights' sha256.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipelines.inference.calibration import Stage, abstain, calibrate, weights_sha


# ---- hF1 from per-row counts (every candidate threshold in O(1)) ------------------------------------------------

def hf1_counts(true: list, pred: list) -> np.ndarray:
    """Per row (overlap, |pred|, |true|) of Kiritchenko hF1, prediction read at the label's depth (as
    pipelines.classify.metrics.hierarchical_prf(truncate=True)); node identity is the full path, so overlap = common
    prefix."""
    out = np.zeros((len(true), 3), np.int64)
    for i, (t, p) in enumerate(zip(true, pred)):
        t, p = tuple(t), tuple(p)[:len(t)]
        common = 0
        while common < len(p) and p[common] == t[common]:
            common += 1
        out[i] = common, len(p), len(t)
    return out


def hf1(counts: np.ndarray) -> float:
    overlap, n_pred, n_true = counts.sum(0) if counts.ndim == 2 else counts
    hp, hr = overlap / max(n_pred, 1), overlap / max(n_true, 1)
    return float(2 * hp * hr / (hp + hr)) if hp + hr else 0.0


def routed_counts(prob1: np.ndarray, counts1: np.ndarray, counts2: np.ndarray, threshold: float) -> np.ndarray:
    routed = np.asarray(prob1) < threshold
    return np.where(routed[:, None], counts2, counts1)


def candidate_thresholds(prob1: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus 0 (route nothing) and just above 1 (route everything)."""
    u = np.unique(np.asarray(prob1, np.float64))
    return np.concatenate([[0.0], (u[:-1] + u[1:]) / 2 if len(u) > 1 else [], [1.0 + 1e-6]])


def choose_threshold(prob1, counts1, counts2, max_drop: float) -> dict:
    """The smallest routed share whose hF1 is within `max_drop` of stage 2 alone (routing everything always
    qualifies). Cumulative counts make every candidate O(1)."""
    prob1 = np.asarray(prob1, np.float64)
    order = np.argsort(prob1, kind="stable")
    gain = np.concatenate([np.zeros((1, 3), np.int64), np.cumsum(counts2[order] - counts1[order], 0)])
    base = counts1.sum(0)
    target = hf1(counts2) - max_drop
    sorted_prob = prob1[order]
    for thr in candidate_thresholds(prob1):
        k = int(np.searchsorted(sorted_prob, thr, side="left"))  # rows with prob < thr
        score = hf1(base + gain[k])
        if score >= target - 1e-12:
            return {"threshold": float(thr), "routed_share": k / max(len(prob1), 1), "hF1_routed": score,
                    "hF1_stage1": hf1(counts1), "hF1_stage2": hf1(counts2), "max_drop": max_drop, "n": len(prob1)}
    raise RuntimeError(f"no threshold reaches stage 2's hF1 {hf1(counts2):.6f} - {max_drop}: routing everything "
                       "always should; the counts are inconsistent")


def tradeoff(prob1, counts1, counts2, thresholds, ms1: float, ms2: float) -> list[dict]:
    """Per threshold: routed fraction, hF1, estimated ms/item = stage-1 cost + routed share x stage-2 cost."""
    rows = []
    for thr in sorted(set(float(t) for t in thresholds)):
        share = float(np.mean(np.asarray(prob1) < thr)) if len(prob1) else 0.0
        rows.append({"threshold": thr, "routed_share": share, "hF1": hf1(routed_counts(prob1, counts1, counts2, thr)),
                     "ms_per_item": ms1 + share * ms2})
    return rows


# ---- fitting the threshold ----------------------------------------------------------------------------------------

def _subsets(features: dict, available: dict, split) -> tuple[dict, dict]:
    split = np.asarray(split)
    rows = {s: np.flatnonzero(split == s) for s in ("val", "test")}
    sub = {s: ({m: features[m][r] for m in features}, {m: available[m][r] for m in available}) for s, r in rows.items()}
    return rows, sub


def _test_at_threshold(p1t, c1t, c2t, threshold: float) -> dict:
    return {"routed_share": float(np.mean(p1t < threshold)) if len(p1t) else 0.0,
            "hF1_routed": hf1(routed_counts(p1t, c1t, c2t, threshold)),
            "hF1_stage1": hf1(c1t), "hF1_stage2": hf1(c2t), "n": len(p1t)}


def _abstention_summary(pred1, pred2, test_labels: list, threshold: float, thresholds) -> dict:
    """On test, routed as chosen: the share flagged needs_review and hF1 on flagged vs not flagged rows."""
    routed = pred1.prob < threshold
    paths = [pred2.paths[i] if routed[i] else pred1.paths[i] for i in range(len(pred1.prob))]
    conf = np.where(routed[:, None], pred2.conf, pred1.conf) if len(pred1.prob) else pred2.conf
    _, review = abstain(paths, conf, thresholds or [0.0] * 3)

    def hf1_on(mask):
        idx = np.flatnonzero(mask)
        return hf1(hf1_counts([test_labels[i] for i in idx], [paths[i] for i in idx]))

    return {"review_share": float(review.mean()) if len(review) else 0.0, "hF1_not_flagged": hf1_on(~review),
            "hF1_flagged": hf1_on(review), "thresholds": list(thresholds or [])}


def fit_routing(stage1_dir, stage2_dir, features: dict, available: dict, labels: list, split, settings,
                measure_items: int = 256, texts=None, image_paths=None) -> dict:
    """Calibrate stage 2 on validation, choose the routing threshold on validation, and sweep thresholds from
    all-stage-1 to all-stage-2 on test. Writes routing.json next to stage 1. `texts`/`image_paths` (catalogue
    rows) let it time both stages from raw text on a few test rows (cold cache) for the ms/item column."""
    from pipelines.classify.train import load_model
    from pipelines.inference.stage1 import load_stage1, stage1_config

    s1_dir = Path(stage1_dir)
    cfg = json.loads((s1_dir / "model.json").read_text())["cfg"]
    full_cfg = stage1_config() | {k: v for k, v in cfg.items() if k in ("routing", "abstain")}
    stage1, model2 = load_stage1(s1_dir), load_model(stage2_dir)
    rows, sub = _subsets(features, available, split)
    cal2 = calibrate(model2, *sub["val"], [labels[i] for i in rows["val"]])
    stage2 = Stage(model2, cal2["temperatures"])
    preds = {(st, s): stage.predict(*sub[s]) for st, stage in (("1", stage1), ("2", stage2)) for s in rows}
    counts = {(st, s): hf1_counts([labels[i] for i in rows[s]], preds[(st, s)].paths) for st, s in preds}
    routing_cfg = full_cfg.get("routing", {})
    chosen = choose_threshold(preds[("1", "val")].prob, counts[("1", "val")], counts[("2", "val")],
                              float(routing_cfg.get("max_drop", 0.002)))
    ms1, ms2 = measure_costs(stage1, stage2, settings, texts, image_paths, rows["test"], measure_items)
    val_prob = preds[("1", "val")].prob
    sweep = [0.0, 1.0 + 1e-6, chosen["threshold"], *np.quantile(val_prob, np.linspace(0.05, 0.95, 19))] \
        if len(val_prob) else [0.0, 1.0 + 1e-6]
    p1t, c1t, c2t = preds[("1", "test")].prob, counts[("1", "test")], counts[("2", "test")]
    abst = _abstention_summary(preds[("1", "test")], preds[("2", "test")], [labels[i] for i in rows["test"]],
                               chosen["threshold"], full_cfg.get("abstain"))
    routing = {"threshold": chosen["threshold"], "target": routing_cfg, "val": chosen,
               "test": _test_at_threshold(p1t, c1t, c2t, chosen["threshold"]),
               "target_met_val": bool(chosen["routed_share"] <= float(routing_cfg.get("max_share", 1.0))),
               "stage2": {"weights_sha256": weights_sha(stage2_dir), "strategy": model2.cfg.get("name"),
                          "calibration": cal2},
               "ms_per_item": {"stage1": ms1, "stage2": ms2}, "abstention_test": abst,
               "tradeoff_test": tradeoff(p1t, c1t, c2t, sweep, ms1, ms2)}
    (s1_dir / "routing.json").write_text(json.dumps(routing, indent=2))
    return routing


def measure_costs(stage1: Stage, stage2: Stage, settings, texts, image_paths, rows, n: int) -> tuple:
    """ms/item of stage 1 (lexical features + model) and of stage 2's extra work (text/image embeddings in a
    fresh, cold cache + joint projection + model) on up to n rows. Loading encoders is not counted (once per
    process)."""
    import tempfile

    from pipelines.inference.features import Stage2Features, lexical_features, load_lexical

    if texts is None or not len(rows) or not n:
        return float("nan"), float("nan")
    pick = np.asarray(rows)[:n]
    t_texts = [texts[i] for i in pick]
    t_images = [image_paths[i] for i in pick] if image_paths is not None else [None] * len(pick)
    space = load_lexical(settings.work_dir)
    t0 = time.perf_counter()
    lex, ok = lexical_features(space, t_texts)
    stage1.predict({"lexical": lex}, {"lexical": ok})
    ms1 = 1000 * (time.perf_counter() - t0) / len(pick)
    with tempfile.TemporaryDirectory() as store:
        feats = Stage2Features(settings, stage2.modalities, store=store)
        t0 = time.perf_counter()
        f, a = feats(t_texts, t_images)
        f["lexical"], a["lexical"] = lex, ok
        stage2.predict(f, a)
        ms2 = 1000 * (time.perf_counter() - t0) / len(pick)
    return ms1, ms2


# ---- report -------------------------------------------------------------------------------------------------------

def write_tradeoff_report(routing: dict, out_dir) -> tuple[Path, Path, Path]:
    """tradeoff.json, tradeoff.md and tradeoff.png (hF1 and ms/item against the routed share, test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = routing["tradeoff_test"]
    (out / "tradeoff.json").write_text(json.dumps(routing, indent=2))
    md = out / "tradeoff.md"
    md.write_text(tradeoff_markdown(routing) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    share = [100 * r["routed_share"] for r in rows]
    ax.plot(share, [100 * r["hF1"] for r in rows], "o-", label="routed hF1 (test)")
    ax.axhline(100 * routing["test"]["hF1_stage2"], color="grey", ls="--", label="stage 2 alone")
    ax.axvline(100 * routing["test"]["routed_share"], color="red", ls=":", label="chosen threshold")
    ax.set_xlabel("products routed to stage 2 (%)"), ax.set_ylabel("hF1 (%)")
    ax2 = ax.twinx()
    ax2.plot(share, [r["ms_per_item"] for r in rows], "s-", color="tab:orange", alpha=0.6, label="ms/item")
    ax2.set_ylabel("ms / item (cold cache)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Two-stage routing: accuracy vs cost")
    fig.tight_layout()
    png = out / "tradeoff.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return out / "tradeoff.json", md, png


def tradeoff_markdown(routing: dict) -> str:
    v, t, ms = routing["val"], routing["test"], routing["ms_per_item"]
    ab = routing["abstention_test"]
    lines = ["## Two-stage inference (stage 1 lexical, stage 2 champion)", "",
             f"Threshold {routing['threshold']:.4f} on stage 1's calibrated path probability, chosen on validation: "
             f"smallest routed share with hF1 within {100 * v['max_drop']:.2f} points of stage 2 alone "
             f"(val: {100 * v['routed_share']:.1f}% routed, hF1 {100 * v['hF1_routed']:.2f} vs stage 2 "
             f"{100 * v['hF1_stage2']:.2f}, stage 1 {100 * v['hF1_stage1']:.2f}). "
             f"Test: {100 * t['routed_share']:.1f}% routed, hF1 {100 * t['hF1_routed']:.2f} vs stage 2 "
             f"{100 * t['hF1_stage2']:.2f}, stage 1 {100 * t['hF1_stage1']:.2f}. "
             f"Budget: at most {100 * float(routing['target'].get('max_share', 1)):.0f}% routed -> "
             f"{'met' if routing['target_met_val'] else 'NOT met'} on validation.",
             "", f"Cost (ms/item, raw text in, cold embedding cache): stage 1 {ms['stage1']:.3f}, stage 2 "
             f"{ms['stage2']:.3f}. Abstention (thresholds {ab['thresholds']}): {100 * ab['review_share']:.1f}% of test "
             f"products flagged needs_review; hF1 {100 * ab['hF1_not_flagged']:.2f} on the rest vs "
             f"{100 * ab['hF1_flagged']:.2f} on the flagged ones (before cutting).", "",
             "| threshold | routed % | hF1 % | ms/item |", "|---|---|---|---|"]
    for r in routing["tradeoff_test"]:
        lines.append(f"| {r['threshold']:.4f} | {100 * r['routed_share']:.1f} | {100 * r['hF1']:.2f} | "
                     f"{r['ms_per_item']:.3f} |")
    lines += ["", "![trade-off](tradeoff.png)"]
    return "\n".join(lines)
