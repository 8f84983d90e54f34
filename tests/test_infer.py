"""Two-stage inference on the sample: calibration, routing threshold, abstention, `prodcat classify`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.settings import PLATFORMS
from pipelines.inference.calibration import abstain
from pipelines.inference.export import classify_export
from pipelines.inference.routing import candidate_thresholds, hf1, hf1_counts, routed_counts
from pipelines.inference.two_stage import TwoStage
from pipelines.classify.metrics import hierarchical_prf
from pipelines.taxonomy.tree import load_taxonomy, parse_path

ROOT = Path(__file__).resolve().parents[1]


def test_calibration_reduces_val_nll_and_ece(two_stage_models):
    for cal in (two_stage_models["stage1"]["calibration"], two_stage_models["routing"]["stage2"]["calibration"]):
        assert len(cal["temperatures"]) == 3 and all(t > 0 for t in cal["temperatures"])
        assert cal["nll_after"] <= cal["nll_before"]
        assert cal["ece_after"] < cal["ece_before"], cal
    saved = json.loads((Path(two_stage_models["stage1"]["model_dir"]) / "calibration.json").read_text())
    assert saved["temperatures"] == two_stage_models["stage1"]["calibration"]["temperatures"]


def test_hf1_counts_match_metrics():
    true = [("Clothing", "Tops"), ("Footwear", "Shoes"), ("Clothing", "Tops", "Shirts")]
    pred = [("Clothing", "Tops", "Shirts"), ("Clothing", "Tops", "Shirts"), ("Clothing", "Bottoms", "Jeans")]
    assert hf1(hf1_counts(true, pred)) == pytest.approx(hierarchical_prf(true, pred, truncate=True)["hF1"])


def test_threshold_meets_target_on_val_and_is_minimal(two_stage_models, sample_training):
    from pipelines.classify.train import load_model
    from pipelines.inference.calibration import Stage
    from pipelines.inference.features import embedding_texts, lexical_features, load_lexical

    routing, t = two_stage_models["routing"], sample_training
    val = np.flatnonzero(t["split"] == "val")
    labels = [t["labels"][i] for i in val]
    s1_dir = Path(two_stage_models["stage1"]["model_dir"])
    stage1 = Stage(load_model(s1_dir), json.loads((s1_dir / "calibration.json").read_text())["temperatures"])
    stage2 = Stage(load_model(two_stage_models["stage2_dir"]), routing["stage2"]["calibration"]["temperatures"])
    feats = ({m: t["features"][m][val] for m in t["features"]}, {m: t["available"][m][val] for m in t["available"]})
    p1, p2 = stage1.predict(*feats), stage2.predict(*feats)
    c1, c2 = hf1_counts(labels, p1.paths), hf1_counts(labels, p2.paths)
    drop = routing["target"]["max_drop"]
    thr = routing["threshold"]
    routed_hf1 = hf1(routed_counts(p1.prob, c1, c2, thr))
    assert routed_hf1 == pytest.approx(routing["val"]["hF1_routed"])
    assert routed_hf1 >= hf1(c2) - drop - 1e-9
    assert np.mean(p1.prob < thr) == pytest.approx(routing["val"]["routed_share"])
    # minimal: every threshold routing fewer products misses the target
    for smaller in candidate_thresholds(p1.prob):
        if np.sum(p1.prob < smaller) < np.sum(p1.prob < thr):
            assert hf1(routed_counts(p1.prob, c1, c2, smaller)) < hf1(c2) - drop
    # the stage-1 features the classifier computes from raw text equal the lexical_embeddings asset's (val rows)
    cat = t["catalogue"].iloc[val]
    texts = embedding_texts(cat["title"], cat["description"])
    lex, ok = lexical_features(load_lexical(two_stage_models["work"]), texts)
    np.testing.assert_allclose(lex, t["features"]["lexical"][val], atol=1e-4)
    # the trade-off runs from all-stage-1 to all-stage-2
    shares = [r["routed_share"] for r in routing["tradeoff_test"]]
    assert shares[0] == 0.0 and shares[-1] == 1.0 and shares == sorted(shares)


def test_abstain_cuts_back_to_last_confident_ancestor():
    paths = [("A", "B", "C"), ("A", "B", "C"), ("A", "B", "C"), ("S", "T")]
    conf = np.array([[0.9, 0.8, 0.7], [0.9, 0.2, 0.9], [0.1, 0.9, 0.9], [0.9, 0.35, np.nan]])
    cut, review = abstain(paths, conf, [0.5, 0.4, 0.3])
    assert cut == [("A", "B", "C"), ("A",), (), ("S",)]
    assert review.tolist() == [False, True, True, True]


def test_two_stage_abstention_gives_valid_ancestors(two_stage_models, sample_training):
    taxonomy = load_taxonomy()
    clf = TwoStage.load(two_stage_models["settings"], two_stage_models["stage2_dir"], "routed")
    assert clf.info["stage2_calibrated"]
    cat = sample_training["catalogue"]
    test = cat[cat["split"] == "test"]
    out = clf.classify(test["title"].tolist(), test["description"].tolist(), test["image_path"].tolist())
    assert len(out) == len(test) and set(out["stage"]) <= {1, 2}
    assert (out["stage"] == 2).mean() == pytest.approx(two_stage_models["routing"]["test"]["routed_share"])
    thr = clf.abstain_at
    for _, r in out.iterrows():
        full, cut = tuple(r["full_path"]), tuple(r["category_path"])
        assert taxonomy.is_valid_path(full)
        assert full[:len(cut)] == cut
        if r["needs_review"]:
            assert len(cut) < len(full) and (len(cut) == 0 or taxonomy.is_valid_path(cut))
            assert r[f"conf_L{len(cut) + 1}"] < thr[len(cut)]
            assert all(r[f"conf_L{lvl + 1}"] >= thr[lvl] for lvl in range(len(cut)))
        else:
            assert cut == full


def test_classify_cli_on_raw_sample_exports(two_stage_models, tmp_path):
    from pipelines.ingest.normalize import normalize_platform

    env = {**os.environ, "PRODCAT_WORK": str(two_stage_models["work"]), "PRODCAT_DATA": str(two_stage_models["raw"]),
           "PRODCAT_QUIET": "1"}
    out = tmp_path / "myntra.csv"
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "classify", "--platform", "myntra", "--input",
                           str(ROOT / "data" / "sample" / "myntra"), "--out", str(out), "--model",
                           str(two_stage_models["stage2_dir"]), "--quiet"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = {"myntra": json.loads(proc.stdout)}
    clf = TwoStage.load(two_stage_models["settings"], two_stage_models["stage2_dir"], "routed")
    for platform in ("hm", "flipkart"):
        summaries[platform] = classify_export(platform, ROOT / "data" / "sample" / platform,
                                              tmp_path / f"{platform}.parquet", two_stage_models["settings"],
                                              classifier=clf, progress=False)
    taxonomy = load_taxonomy()
    for platform in PLATFORMS:
        s = summaries[platform]
        norm = normalize_platform(platform, ROOT / "data" / "sample" / platform, verify_images=False)
        table = pd.read_csv(s["out"]) if s["out"].endswith(".csv") else pd.read_parquet(s["out"])
        quarantine = pd.read_csv(s["quarantine_out"]) if s["out"].endswith(".csv") else pd.read_parquet(s["quarantine_out"])
        assert s["rows_in"] == s["classified"] + s["quarantined"] == len(table) + len(quarantine)
        assert s["rows_in"] == norm.coverage["rows_in"]
        assert list(table.columns) == ["product_id", "category_path", "conf_L1", "conf_L2", "conf_L3", "stage",
                                       "needs_review", "alt1_path", "alt1_score", "alt2_path", "alt2_score"]
        alternatives = [parse_path(p) for p in table["alt1_path"].tolist() + table["alt2_path"].tolist()]
        assert all(taxonomy.is_valid_path(p) for p in alternatives)  # the runners-up a reviewer may pick instead
        assert quarantine["reason"].notna().all()
        assert not any(r.startswith(("unknown native category", "unmapped")) for r in quarantine["reason"])
        paths = [parse_path(p) if isinstance(p, str) else () for p in table["category_path"]]
        assert all(p == () or taxonomy.is_valid_path(p) for p in paths)
        assert set(table["stage"]) <= {1, 2} and s["items_per_s"] > 0
        # rows normalisation quarantines for their category (no label needed here) are classified
        unlabelled = norm.quarantine["reason_kind"].isin(["unknown native category", "unmapped"]).sum()
        assert s["classified"] == len(norm.products) + unlabelled


def test_classify_rejects_bad_output_suffix(two_stage_models, tmp_path):
    env = {**os.environ, "PRODCAT_WORK": str(two_stage_models["work"]), "PRODCAT_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "classify", "--platform", "hm", "--input",
                           str(ROOT / "data" / "sample" / "hm"), "--out", str(tmp_path / "x.xlsx"), "--stage",
                           "stage1"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and ".parquet or .csv" in proc.stderr


def test_stage1_mode_honours_model(two_stage_models, tmp_path):
    """--model under --stage stage1 names the stage-1 model (it used to be ignored silently)."""
    import shutil

    copy = tmp_path / "stage1_copy"
    shutil.copytree(two_stage_models["stage1"]["model_dir"], copy)
    clf = TwoStage.load(two_stage_models["settings"], copy, "stage1")
    assert clf.info["stage1"] == str(copy) and clf.stage2 is None
    env = {**os.environ, "PRODCAT_WORK": str(two_stage_models["work"]), "PRODCAT_QUIET": "1"}
    missing = tmp_path / "no_such_model"
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "classify", "--platform", "hm", "--input",
                           str(ROOT / "data" / "sample" / "hm"), "--out", str(tmp_path / "x.csv"), "--stage",
                           "stage1", "--model", str(missing)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"no calibrated stage-1 model in {missing}" in proc.stderr
