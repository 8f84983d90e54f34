"""Leave-one-platform-out evaluation: train on every other shop, evaluate on the shop the model has never seen.

    build_training_set(products, manifests, holdout, out_dir, cfg)   -> the training side of one holdout, saved
    evaluate_holdout(train_dir, products, manifests, strategy, ...)  -> metrics on the unseen shop (all + test split)
    few_shot_curve(train_dir, products, manifests, strategy, ...)    -> hF1 after adding 1%, 5%, ... of its groups
    holdout_matrix(cells, in_distribution)                           -> hF1 matrix, generalisation gaps, markdown

`products[p]` is a shop's normalised table, `manifests[m][p]` its (uid, ok) embedding manifest for modality m
(row order of work/embeddings/<m>/<p>.npy). The lexical view (TF-IDF SVD + stacked SVM expert) learns from labels,
so each holdout refits it on the training shops only: the unseen shop's labels never reach any model.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

CONFIG_PATH = Path(__file__).resolve().parents[1] / "models" / "configs" / "holdout.yaml"
FROZEN = ("text", "image", "joint")  # label-free embeddings, shared with the in-distribution models


def load_config(path=None) -> dict:
    return yaml.safe_load(Path(path or CONFIG_PATH).read_text())


def training_platforms(holdout: str, platforms) -> list[str]:
    return [p for p in platforms if p != holdout]


# ---- domain shift helper: shop-specific title styles ----------------------------------------------------------

_GENDER = {"women's": "women", "womens": "women", "ladies": "women", "men's": "men", "mens": "men",
           "boy's": "boys", "girl's": "girls", "unisex": "unisex"}
_NOISE = re.compile(r"\b(pack of \d+|set of \d+|combo|\d+\s*(pcs|pieces|ml|gm|g|cm|mm|inch))\b")


def normalise_title(title: str, brand: str = "") -> str:
    """One title style for every shop: lower case, brand removed (Myntra and Flipkart lead with it, H&M never
    names it), gender words unified, pack/size noise dropped. Applied to the lexical view of every shop alike."""
    t = str(title or "").lower()
    b = str(brand or "").lower().strip()
    if b and len(b) > 1:
        t = t.replace(b, " ")
    t = _NOISE.sub(" ", t)
    words = [_GENDER.get(w, w) for w in re.findall(r"[a-z0-9][a-z0-9'&-]*", t)]
    return " ".join(words)


def lexical_texts(table: pd.DataFrame, normalise: bool) -> list[str]:
    from pipelines.features.store import text_of

    titles = ([normalise_title(t, b) for t, b in zip(table["title"], table["brand"].fillna(""))] if normalise
              else table["title"].tolist())
    return [text_of(t, d) for t, d in zip(titles, table["description"])]


# ---- the training side of one holdout ---------------------------------------------------------------------------

def _with_uid(table: pd.DataFrame) -> pd.DataFrame:
    table = table.reset_index(drop=True)
    return table.assign(uid=table["platform"] + ":" + table["product_id"].astype(str))


def build_training_set(products: dict, manifests: dict, holdout: str, out_dir, cfg: dict | None = None) -> dict:
    """Rows of the training shops (their train + val splits), their embedding manifests, and a lexical view fitted
    on their train rows (out-of-fold expert scores on those rows). Saved under out_dir; -> summary."""
    from pipelines.features import lexical

    cfg = cfg or load_config()
    train_shops = sorted(p for p in products if p != holdout)
    if not train_shops:
        raise ValueError(f"holdout {holdout!r}: no other platform to train on")
    table = _with_uid(pd.concat([products[p] for p in train_shops], ignore_index=True))
    table = table[table["split"].isin(["train", "val"])].reset_index(drop=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit = table["split"] == "train"
    texts = lexical_texts(table, cfg["normalise_titles"])
    t0 = time.perf_counter()
    fit_texts = [t for t, f in zip(texts, fit) if f]
    svd = lexical.fit_lexical(fit_texts)
    expert, classes, oof = lexical.fit_expert(fit_texts, table.loc[fit, "category_path"].tolist(),
                                              (table.loc[fit, "platform"] + table.loc[fit, "group_id"]).tolist())
    lexical.save({"svd": svd, "expert": expert}, out)
    scores = lexical.expert_scores(expert, texts)
    scores[fit.to_numpy()] = oof  # a training row must not see an expert that saw it
    np.save(out / "lexical.npy", np.concatenate([lexical.transform(svd, texts), scores], 1))
    table[["uid", "platform", "product_id", "group_id", "split", "category_path"]].to_parquet(out / "rows.parquet",
                                                                                             index=False)
    for m in FROZEN:
        pd.concat([manifests[m][p].assign(platform=p) for p in train_shops],
                  ignore_index=True)[["uid", "ok", "platform"]].to_parquet(out / f"manifest_{m}.parquet", index=False)
    summary = {"holdout": holdout, "training_platforms": train_shops, "rows": len(table), "train_rows": int(fit.sum()),
               "lexical_seconds": round(time.perf_counter() - t0, 1), "normalise_titles": cfg["normalise_titles"],
               "classes": len(classes)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _training_features(train_dir: Path, work: Path):
    from pipelines.features.matrices import assemble

    rows = pd.read_parquet(train_dir / "rows.parquet")
    manifests = {}
    for m in FROZEN:
        man = pd.read_parquet(train_dir / f"manifest_{m}.parquet")
        manifests[m] = {p: g.drop(columns="platform").reset_index(drop=True) for p, g in man.groupby("platform")}
    features, available = assemble(rows, manifests, work)
    features["lexical"] = np.load(train_dir / "lexical.npy")
    available["lexical"] = np.ones(len(rows), bool)
    return rows, features, available


def _holdout_features(train_dir: Path, table: pd.DataFrame, manifests: dict, work: Path, cfg: dict):
    from pipelines.features import lexical
    from pipelines.features.matrices import assemble

    features, available = assemble(table, {m: {table["platform"].iloc[0]: manifests[m]} for m in FROZEN}, work)
    fitted = lexical.load(train_dir)
    texts = lexical_texts(table, cfg["normalise_titles"])
    features["lexical"] = np.concatenate([lexical.transform(fitted["svd"], texts),
                                          lexical.expert_scores(fitted["expert"], texts)], 1)
    available["lexical"] = np.array([bool(t.strip()) for t in texts])
    return features, available


def _concat(a: dict, b: dict) -> dict:
    return {m: np.concatenate([a[m], b[m]]) for m in a}


# ---- one cell: strategy x holdout ------------------------------------------------------------------------------

def _not_applicable(strategy_cfg: dict, available: dict) -> str:
    """Why a strategy cannot learn anything on this training side (e.g. image-only with no images), or ''."""
    if not any(available[m].any() for m in strategy_cfg["modalities"]):
        return f"training platforms have no {'/'.join(strategy_cfg['modalities'])} vectors"
    return ""


def _scores(labels, paths, prob, fallback, taxonomy) -> dict:
    from pipelines.classify.metrics import evaluate

    if not len(labels):
        return {}
    return evaluate(labels, paths, taxonomy, confidence=prob) | {"fallback_rate": float(np.mean(fallback)),
                                                                 "n": len(labels)}


def evaluate_holdout(train_dir, holdout_products: pd.DataFrame, holdout_manifests: dict, strategy: str, work,
                     taxonomy, out_dir, cfg: dict | None = None, seed: int = 0, extra_train: np.ndarray | None = None,
                     max_epochs: int | None = None) -> dict:
    """Train `strategy` on the training side, predict every mapped product of the unseen shop.
    -> {all: metrics, test: metrics (its grouped test split), n_train, missing_modalities, ...}.
    `extra_train` (bool per holdout row) moves those rows into training (few-shot adaptation); they are then
    excluded from evaluation, which reads the test split only."""
    from pipelines.classify.train import predict, strategy_config, train_classifier

    cfg = cfg or load_config()
    train_dir, work = Path(train_dir), Path(work)
    scfg = strategy_config(strategy)
    rows, feats, avail = _training_features(train_dir, work)
    table = _with_uid(holdout_products)
    h_feats, h_avail = _holdout_features(train_dir, table, holdout_manifests, work, cfg)
    labels = [tuple(p) for p in rows["category_path"]]
    split = rows["split"].to_numpy()
    if extra_train is not None and extra_train.any():
        feats = _concat(feats, {m: v[extra_train] for m, v in h_feats.items()})
        avail = _concat(avail, {m: v[extra_train] for m, v in h_avail.items()})
        labels += [tuple(p) for p in table.loc[extra_train, "category_path"]]
        split = np.concatenate([split, np.full(int(extra_train.sum()), "train")])
    result = {"holdout": table["platform"].iloc[0], "strategy": strategy, "n_train": int((split == "train").sum()),
              "n_holdout": len(table),
              "holdout_modalities": {m: round(float(h_avail[m].mean()), 4) for m in scfg["modalities"]},
              "training_modalities": {m: round(float(avail[m].mean()), 4) for m in scfg["modalities"]}}
    why = _not_applicable(scfg, avail)
    if why:
        return result | {"not_applicable": why, "all": {}, "test": {}}
    t0 = time.perf_counter()
    res = train_classifier(strategy, {m: feats[m] for m in scfg["modalities"]},
                           {m: avail[m] for m in scfg["modalities"]}, labels, split, taxonomy, out_dir, seed=seed,
                           max_epochs=max_epochs)
    paths, _, prob, fallback = predict(res.model_dir, {m: h_feats[m] for m in scfg["modalities"]},
                                       {m: h_avail[m] for m in scfg["modalities"]}, return_fallback=True)
    true = [tuple(p) for p in table["category_path"]]
    test = (table["split"] == "test").to_numpy()
    evaluate_all = np.ones(len(table), bool) if extra_train is None else ~extra_train
    pick = lambda mask: _scores([true[i] for i in np.flatnonzero(mask)], [paths[i] for i in np.flatnonzero(mask)],
                                prob[mask], fallback[mask], taxonomy)
    result |= {"all": pick(evaluate_all), "test": pick(test & evaluate_all), "val_in_distribution": res.val,
               "train_seconds": round(time.perf_counter() - t0, 1), "epochs": res.epochs}
    (Path(out_dir) / "holdout_metrics.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def few_shot_rows(table: pd.DataFrame, fraction: float, seed: int = 0) -> np.ndarray:
    """A deterministic `fraction` of the holdout shop's train-split product groups (whole groups, so no variant of
    a labelled product leaks into the test split, which is grouped the same way)."""
    from pipelines.ingest.splits import stable_unit

    train = (table["split"] == "train").to_numpy()
    u = np.array([stable_unit(f"fewshot{seed}:{p}:{g}") for p, g in zip(table["platform"], table["group_id"])])
    return train & (u < fraction / 0.8)  # the train split holds 80% of groups


def few_shot_curve(train_dir, holdout_products, holdout_manifests, strategy, work, taxonomy, out_dir,
                   fractions=(0.0, 0.01, 0.05), cfg=None, seed: int = 0) -> list[dict]:
    """hF1 on the unseen shop's test split after adding each fraction of its labelled products to training."""
    table = _with_uid(holdout_products)
    curve = []
    for f in fractions:
        extra = few_shot_rows(table, f, seed) if f > 0 else np.zeros(len(table), bool)
        r = evaluate_holdout(train_dir, holdout_products, holdout_manifests, strategy, work, taxonomy,
                             Path(out_dir) / f"fewshot_{f:g}", cfg, seed, extra_train=extra)
        curve.append({"fraction": f, "labelled_products": int(extra.sum()), "test_hF1": r["test"].get("hF1"),
                      "test_n": r["test"].get("n", 0)})
    return curve


# ---- the report -------------------------------------------------------------------------------------------------

def holdout_matrix(cells: list[dict], in_distribution: dict) -> dict:
    """cells: evaluate_holdout results; in_distribution[strategy][platform] = test hF1 of the model trained on all
    shops. -> {matrix: {strategy: {holdout: hF1}}, gap: {strategy: mean in-dist - mean holdout}, mean: {...}}."""
    strategies = sorted({c["strategy"] for c in cells})
    holdouts = sorted({c["holdout"] for c in cells})
    get = {(c["strategy"], c["holdout"]): c for c in cells}
    matrix = {s: {h: get[(s, h)]["test"].get("hF1") if (s, h) in get else None for h in holdouts}
              for s in strategies}
    matrix_all = {s: {h: get[(s, h)]["all"].get("hF1") if (s, h) in get else None for h in holdouts}
                  for s in strategies}
    levels = {s: {h: [get[(s, h)]["test"].get(f"acc_L{i}") for i in (1, 2, 3)] if (s, h) in get else None
                  for h in holdouts} for s in strategies}
    mean, gap = {}, {}
    for s in strategies:
        vals = [v for v in matrix[s].values() if v is not None]
        mean[s] = float(np.mean(vals)) if vals else None
        ind = [in_distribution.get(s, {}).get(h) for h in holdouts]
        ind = [v for v in ind if v is not None]
        gap[s] = float(np.mean(ind)) - mean[s] if ind and mean[s] is not None else None
    return {"holdouts": holdouts, "strategies": strategies, "matrix_test": matrix, "matrix_all": matrix_all,
            "levels_test": levels, "mean": mean, "gap": gap, "in_distribution": in_distribution}


def heatmap(report: dict, out_png) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, h = report["strategies"], report["holdouts"]
    grid = np.array([[np.nan if report["matrix_test"][a][b] is None else 100 * report["matrix_test"][a][b]
                      for b in h] for a in s])
    fig, ax = plt.subplots(figsize=(1.4 * len(h) + 3.5, 0.45 * len(s) + 2.0))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=max(0, np.nanmin(grid) - 5) if np.isfinite(grid).any() else 0, vmax=100,
                   aspect="auto")
    ax.set_xticks(range(len(h)), h)
    ax.set_xlabel("unseen shop (trained on the others)")
    ax.set_yticks(range(len(s)), s)
    for i in range(len(s)):
        for j in range(len(h)):
            ax.text(j, i, "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="test hF1 % on the unseen shop")
    ax.set_title("Leave-one-platform-out hF1")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def report_markdown(report: dict, curves: dict, png_name: str = "holdout_heatmap.png") -> str:
    h, s = report["holdouts"], report["strategies"]
    lines = ["## Cross-platform (leave-one-platform-out)", "",
             "Each model is trained on every other shop and tested on the unseen shop's grouped test split "
             "(hF1 %, labels read at their known depth); `in-dist` is the same strategy trained on all shops, "
             "tested on that shop's test split; gap = mean in-dist - mean unseen.", "",
             "| strategy | " + " | ".join(f"unseen {x}" for x in h) + " | mean unseen | mean in-dist | gap |",
             "|---|" + "---|" * (len(h) + 3)]
    for a in sorted(s, key=lambda a: -(report["mean"][a] or 0)):
        ind = [report["in_distribution"].get(a, {}).get(x) for x in h]
        ind = [v for v in ind if v is not None]
        lines.append(f"| {a} | " + " | ".join(_pct(report["matrix_test"][a][x]) for x in h)
                     + f" | {_pct(report['mean'][a])} | {_pct(float(np.mean(ind)) if ind else None)} | "
                     + f"{_pct(report['gap'][a])} |")
    lines += ["", "Per-level accuracy on the unseen shop's test split (L1 / L2 / L3 %):", "",
              "| strategy | " + " | ".join(h) + " |", "|---|" + "---|" * len(h)]
    for a in s:
        lines.append(f"| {a} | " + " | ".join("n/a" if report["levels_test"][a][x] is None else
                                               " / ".join(_pct(v) for v in report["levels_test"][a][x])
                                               for x in h) + " |")
    lines += ["", "hF1 % on *all* mapped products of the unseen shop (train + val + test splits):", "",
              "| strategy | " + " | ".join(h) + " |", "|---|" + "---|" * len(h)]
    for a in s:
        lines.append(f"| {a} | " + " | ".join(_pct(report["matrix_all"][a][x]) for x in h) + " |")
    if curves:
        lines += ["", "Few-shot adaptation (test hF1 % on the unseen shop after adding a share of its labelled "
                  "product groups to training):", "",
                  "| holdout | strategy | " + " | ".join(f"{100 * c['fraction']:g}% (labelled products)"
                                                         for c in next(iter(curves.values()))["curve"]) + " |",
                  "|---|---|" + "---|" * len(next(iter(curves.values()))["curve"])]
        for hold, c in sorted(curves.items()):
            lines.append(f"| {hold} | {c['strategy']} | " + " | ".join(f"{_pct(p['test_hF1'])} ({p['labelled_products']})"
                                                                  for p in c["curve"]) + " |")
    if "early" in s and "late" in s:
        e, l_ = report["gap"]["early"], report["gap"]["late"]
        me, ml = report["mean"]["early"], report["mean"]["late"]
        if None not in (e, l_, me, ml):
            verdict = "supports" if me > ml else "does not support"
            lines += ["", f"Early vs late fusion on unseen shops: mean unseen hF1 early {_pct(me)} vs late {_pct(ml)}, "
                          f"gap early {_pct(e)} vs late {_pct(l_)} points: our data {verdict} the paper's claim that "
                          "early fusion generalises better to an unseen shop."]
    lines += ["", f"![leave-one-platform-out heatmap]({png_name})", ""]
    return "\n".join(lines)


SECTION = "## Cross-platform (leave-one-platform-out)"


def replace_section(text: str, section: str) -> str:
    """Put `section` (which starts with SECTION) in place of the old one, keeping any section that follows it;
    append it when there is none."""
    if SECTION not in text:
        return text.rstrip() + "\n\n" + section
    head, rest = text.split(SECTION, 1)
    nxt = rest.find("\n## ")
    tail = rest[nxt:] if nxt >= 0 else ""
    return head + section.rstrip() + "\n" + tail


def add_to_benchmark_report(cells: list[dict], in_distribution: dict, curves: dict, report_dir) -> tuple:
    """Matrix + heatmap + few-shot curves -> holdout.json/.md/.png in report_dir, and the cross-platform section of
    benchmark.md / benchmark.json (replaced, not appended twice). curves[holdout] = DataFrame(fraction,
    labelled_products, test_hF1, strategy). -> (report dict, markdown, png path)."""
    report_dir = Path(report_dir)
    report = holdout_matrix(cells, in_distribution)
    png = heatmap(report, report_dir / "holdout_heatmap.png")
    curve_rows = {}
    for hold, df in curves.items():
        zero = report["matrix_test"].get(df["strategy"].iloc[0], {}).get(hold)
        rows = [{"fraction": 0.0, "labelled_products": 0, "test_hF1": zero}] + df.to_dict("records")
        curve_rows[hold] = {"strategy": df["strategy"].iloc[0], "curve": rows}
    md = report_markdown(report, curve_rows, png.name)
    (report_dir / "holdout.md").write_text(md)
    (report_dir / "holdout.json").write_text(json.dumps({**report, "fewshot": curve_rows, "cells": cells},
                                                        indent=1, default=float))
    bench_md, bench_json = report_dir / "benchmark.md", report_dir / "benchmark.json"
    if bench_md.exists():
        bench_md.write_text(replace_section(bench_md.read_text(), md))
    if bench_json.exists():
        doc = json.loads(bench_json.read_text())
        doc["cross_platform"] = {k: report[k] for k in ("matrix_test", "matrix_all", "levels_test", "mean", "gap")}
        doc["cross_platform"]["fewshot"] = curve_rows
        bench_json.write_text(json.dumps(doc, indent=2, default=float))
    return report, md, png
