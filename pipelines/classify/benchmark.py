"""Strategies and baselines on one catalogue: training data assembly, baseline runs, the benchmark report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.features.matrices import assemble


def training_data(catalogue: pd.DataFrame, manifests: dict, work: Path):
    features, available = assemble(catalogue, manifests, work)
    labels = [tuple(p) for p in catalogue["category_path"]]
    return features, available, labels, catalogue["split"].to_numpy(), catalogue["platform"].to_numpy()


def run_baselines(catalogue: pd.DataFrame, features: dict, available: dict, taxonomy, seed: int = 0) -> dict:
    import time

    from pipelines.classify.baselines import hiclass_lcppn, tfidf_svm
    from pipelines.features.store import text_of
    from pipelines.classify.metrics import evaluate

    labels = [tuple(p) for p in catalogue["category_path"]]
    split, platforms = catalogue["split"].to_numpy(), catalogue["platform"].to_numpy()
    texts = [text_of(t, d) for t, d in zip(catalogue["title"], catalogue["description"])]
    x = np.concatenate([features[m] for m in ("text", "joint") if m in features], 1)
    rows = {s: np.flatnonzero(split == s) for s in ("val", "test")}
    out = {}
    for name, fit in (("baseline_tfidf_svm", lambda: tfidf_svm(texts, labels, split, seed)),
                      ("baseline_hiclass_lcppn", lambda: hiclass_lcppn(x, labels, split, taxonomy.depth, seed))):
        _, seconds, predict = fit()
        res = {"train_seconds": seconds}
        for s, r in rows.items():
            t0 = time.perf_counter()
            pred = predict(r)
            if s == "test":
                res["infer_ms_per_item"] = 1000 * (time.perf_counter() - t0) / max(len(r), 1)
                res["per_platform"] = {p: evaluate([labels[i] for i in r[platforms[r] == p]],
                                                   [pred[j] for j in np.flatnonzero(platforms[r] == p)], taxonomy)
                                       for p in sorted(set(platforms[r]))}
            res[s] = evaluate([labels[i] for i in r], pred, taxonomy)
        out[name] = res
    return out


COLUMNS = ["hP", "hR", "hF1", "strict_hF1", "acc_L1", "acc_L2", "acc_L3", "consistency", "ECE"]


def write_report(rows: dict, out_dir: Path, meta: dict) -> tuple[Path, Path]:
    """rows[name] = {'val':{...}, 'test':{...}, 'per_platform':{p:{...}}, 'train_seconds', 'infer_ms_per_item'}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2, default=float))
    lines = [f"# prodcat benchmark ({meta.get('data', '')})", "",
             f"Test split (grouped), {meta.get('n_test', '?')} products; metrics in %. hP/hR/hF1 score a prediction "
             "at the depth the shop's label is known; strict_hF1 also counts levels below a coarse label as errors.",
             "", "| model | " + " | ".join(COLUMNS) + " | train s | infer ms/item |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["test"].get("hF1", 0)):
        t = r["test"]
        cells = [f"{100 * t[c]:.2f}" if c in t and c != "ECE" else (f"{t[c]:.4f}" if c in t else "-") for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['train_seconds']:.1f} | {r['infer_ms_per_item']:.3f} |")
    lines += ["", "## Per platform (test hF1 %)", "", "| model | " + " | ".join(meta.get("platforms", [])) + " |",
              "|---|" + "---|" * len(meta.get("platforms", []))]
    for name, r in sorted(rows.items()):
        pp = r.get("per_platform", {})
        lines.append(f"| {name} | " + " | ".join(f"{100 * pp[p]['hF1']:.2f}" if p in pp and pp[p] else "-"
                                                   for p in meta.get("platforms", [])) + " |")
    for section in meta.get("sections", []):
        lines += ["", section]
    md = out / "benchmark.md"
    md.write_text("\n".join(lines) + "\n")
    return out / "benchmark.json", md
