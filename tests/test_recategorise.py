"""Recategorisation: metrics on known answers, the cascade, a real small run on the sample through Dagster
(SimCLR -> UMAP -> cascade HDBSCAN -> proposals, report), and accepting proposals into a new taxonomy version."""
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from pipelines.recategorise.candidates import candidate_nodes, dispersion_rows
from pipelines.recategorise.clustering import cascade_cluster, refine_clusters, scaled_cascade
from pipelines.recategorise.config import load_recategorise_config
from pipelines.recategorise.evaluation import (cluster_metrics, evaluate_clusters, kmeans_labels, label_agreement,
                                               purity, purity_by_granularity)
from pipelines.recategorise.nodes import load_raw_products
from pipelines.recategorise.representation import centre_per_platform, l2_rows

SMALL = {"simclr": {"epochs": 2, "image_views": 2, "image_size": 64, "batch_size": 64, "max_train_products": 150},
         "umap": {"n_neighbors": 15, "view_neighbors": 15}, "proposals": {"grid": 8, "thumb": 48}}


def test_config_is_the_models_yaml_with_nested_overrides():
    # the YAML lives in models/configs/ (after the move into pipelines/recategorise/ the path pointed at
    # pipelines/models/configs/, which does not exist); overrides merge key by key and are not mutated
    overrides = {"simclr": {"epochs": 2}, "umap": {"n_neighbors": 15}}
    cfg = load_recategorise_config(overrides)
    assert cfg["simclr"]["epochs"] == 2 and cfg["simclr"]["image_encoder"] == "efficientnet-lite0"
    assert cfg["umap"] == {**load_recategorise_config()["umap"], "n_neighbors": 15}
    cfg["simclr"]["epochs"] = 99
    assert overrides == {"simclr": {"epochs": 2}, "umap": {"n_neighbors": 15}}
    assert load_recategorise_config()["simclr"]["epochs"] == 30


def test_label_agreement_measures_how_consistent_native_labels_are():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (40, 4)), rng.normal(5, 0.1, (40, 4))])
    platforms = np.array(["x"] * 80)
    clean = pd.Series(["a"] * 40 + ["b"] * 40)
    assert label_agreement(x, platforms, clean)["overall"]["agreement"] == 1.0
    noisy = clean.copy()
    noisy[rng.choice(80, 16, replace=False)] = "c"  # a fifth relabelled at random: their neighbours disagree
    agree = label_agreement(x, platforms, noisy)
    assert agree["x"]["n"] == 80 and 0.75 <= agree["overall"]["agreement"] <= 0.85
    # each shop against its own neighbours; unlabelled products are left out
    two = label_agreement(np.vstack([x, x]), np.array(["x"] * 80 + ["y"] * 80),
                          pd.Series(list(clean) + [None] * 40 + ["b"] * 40))
    assert two["y"] == {"n": 40, "agreement": 1.0} and two["overall"]["n"] == 120


def test_metrics_on_known_answers():
    truth = np.array(["a"] * 5 + ["b"] * 3 + ["c"] * 2)
    perfect = np.array([2] * 5 + [0] * 3 + [1] * 2)  # cluster ids need not match label names
    m = cluster_metrics(truth, perfect)
    assert (m["purity"], m["nmi"], m["ari"]) == (1.0, 1.0, 1.0)
    one = cluster_metrics(truth, np.zeros(10, int))  # everything in one cluster: purity = majority share
    assert one["purity"] == one["majority_share"] == 0.5 and one["nmi"] == 0.0 and one["ari"] == 0.0
    # per shop against its own vocabulary; overall purity counts each shop's majority label per cluster
    platforms = np.array(["x"] * 6 + ["y"] * 4)
    labels = pd.Series(["s"] * 3 + ["t"] * 3 + ["u"] * 4)
    pred = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1, 1])
    ev = evaluate_clusters(platforms, labels, pred)
    assert ev["x"]["purity"] == pytest.approx(5 / 6, abs=1e-4) and ev["y"]["purity"] == 1.0
    assert ev["overall"]["purity"] == pytest.approx(9 / 10, abs=1e-4)
    assert ev["overall"]["nmi"] == pytest.approx(0.6 * ev["x"]["nmi"] + 0.4 * ev["y"]["nmi"], abs=1e-4)
    # noise (-1) left out on request, unlabelled products always
    labels[9] = None
    ev = evaluate_clusters(platforms, labels, np.array([0, 0, 0, -1, 1, 1, 0, 0, 1, 1]), drop_noise=True)
    assert ev["overall"]["n"] == 8


def test_nt_xent_rewards_matching_views():
    import math

    import torch

    from models.simclr import nt_xent

    z = torch.eye(8)  # 8 products, views identical and orthogonal to every other product: positive logit 1/0.2,
    # the 14 negatives 0 -> loss log(1 + 14 e^-5)
    assert nt_xent(z, z, temperature=0.2).item() == pytest.approx(math.log(1 + 14 * math.exp(-5)), abs=1e-4)
    shuffled = nt_xent(z, z[torch.randperm(8, generator=torch.Generator().manual_seed(0))], 0.2).item()
    assert shuffled > 1.0
    flat = nt_xent(torch.ones(8, 4), torch.ones(8, 4)).item()  # all views alike: chance over 2N-1 candidates
    assert flat == pytest.approx(math.log(15), abs=1e-4)


def test_cascade_finds_nested_groups_and_kmeans_baseline_on_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [0.9, 0], [10, 10], [10, -10]], dtype=float)  # two close groups inside one
    truth = np.repeat(np.arange(4), 60)
    x = (centres[truth] + rng.normal(scale=0.15, size=(240, 2))).astype(np.float32)
    blobs = {"min_cluster_size": 15, "min_samples": 5, "max_share": 0.4, "min_cohesion": 0.0, "reembed": False}
    cc = scaled_cascade(load_recategorise_config()["cascade"] | blobs, len(x))
    casc = cascade_cluster(x, x, cc)
    found = casc["labels"]
    assert (found < 0).mean() < 0.2 and casc["steps"][0]["cluster"] == "node"
    clustered = found >= 0
    assert purity(truth[clustered], found[clustered]) > 0.95
    assert len(set(found[clustered])) >= 4
    km = kmeans_labels(x, 4)
    assert cluster_metrics(truth, km)["purity"] > 0.95


def test_refinement_moves_products_to_the_nearest_centre_and_keeps_noise_reported():
    rng = np.random.default_rng(0)
    centres = l2_rows(rng.normal(size=(3, 8)))
    truth = np.repeat(np.arange(3), 50)
    x = centres[truth] + rng.normal(scale=0.1, size=(150, 8))
    seeded = truth.copy()
    seeded[[0, 1, 2, 50, 51]] = [1, 2, 1, 0, 2]  # density boundaries put a few products in a neighbour's cluster
    seeded[[100, 101, 102]] = -1                   # and call a few noise
    casc = {"labels": seeded, "lineage": {0: "0", 1: "1", 2: "2/0"}, "depth": {0: 0, 1: 0, 2: 1}, "steps": []}
    out = refine_clusters(x, casc)
    assert purity(truth, out["assigned"]) == 1.0 and out["refine"]["converged"]
    assert (out["labels"][[100, 101, 102]] == -1).all() and (out["assigned"] >= 0).all()
    assert out["refine"]["moved_share"] == pytest.approx(5 / 147, abs=1e-4)
    assert [out["lineage"][out["assigned"][i]] for i in (0, 50, 149)] == ["0", "1", "2/0"]
    # a cluster of two strays from different groups (centre between them) empties out: dropped, ids stay compact
    casc = {"labels": np.where(np.isin(np.arange(150), [3, 53]), 3, seeded),
            "lineage": {0: "0", 1: "1", 2: "2", 3: "3"}, "depth": {0: 0, 1: 0, 2: 0, 3: 0}, "steps": []}
    out = refine_clusters(x, casc)
    assert out["refine"]["dropped_clusters"] == 1 and sorted(set(out["assigned"])) == [0, 1, 2]
    assert set(out["lineage"].values()) == {"0", "1", "2"}


def test_centring_per_shop_lets_types_cluster_across_shops():
    # two product types sold by two shops whose photo style shifts every product the same way (larger than the
    # type difference): without centring the clusters are the shops, with it they are the types
    rng = np.random.default_rng(0)
    types, shops = np.tile(np.repeat([0, 1], 30), 2), np.repeat(["a", "b"], 60)
    x = np.where(types[:, None] == 0, 1.0, -1.0) * np.eye(6)[0] + (shops == "b")[:, None] * 5 * np.eye(6)[1]
    x = x + rng.normal(scale=0.1, size=x.shape)
    centred = centre_per_platform(x, shops)
    assert np.allclose([centred[shops == s].mean(0) for s in "ab"], 0, atol=1e-5)
    assert purity(types, kmeans_labels(x, 2)) == 0.5 and purity(types, kmeans_labels(centred, 2)) == 1.0
    # granularity: more clusters never lose purity on these blobs, k capped at 2 products per cluster
    by_k = purity_by_granularity(centred, shops, pd.Series(types), 2, [1, 4, 100])
    assert [r["k"] for r in by_k] == [2, 8, 60] and by_k[0]["purity"] == by_k[-1]["purity"] == 1.0


def test_candidate_scores_and_dispersion_sample():
    from pipelines.settings import SAMPLE_DIR
    from pipelines.taxonomy.tree import load_taxonomy

    products = load_raw_products(SAMPLE_DIR)
    rows = dispersion_rows(products, 5)
    per_node = products.iloc[rows]["category_path"].map(tuple).value_counts()
    assert per_node.max() <= 5 and len(per_node) == products["category_path"].map(tuple).nunique()
    rng = np.random.default_rng(0)
    emb = np.full((len(products), 8), np.nan, np.float32)
    emb[rows] = rng.normal(size=(len(rows), 8))
    cand = candidate_nodes(products, emb, load_taxonomy())
    shallow = cand[cand["configured_shallow"]]
    assert set(shallow["node"]) == {"Footwear > Shoes", "Accessories > Bags"} and shallow["candidate"].all()
    assert cand["score"].between(0, 1).all()
    assert cand.loc[cand["size"] >= 2, "dispersion"].notna().all()  # one product has no dispersion


@pytest.fixture(scope="module")
def dagster_run(tmp_path_factory):
    """recategorisation_clusters for both shallow nodes of the sample, then recategorisation_report (real run)."""
    from dagster import AssetSelection, DagsterInstance

    from orchestration.definitions import build_definitions
    from pipelines.settings import SAMPLE_DIR, Settings

    work = tmp_path_factory.mktemp("recat") / "work"
    catalogue = load_raw_products(SAMPLE_DIR)
    catalogue.insert(0, "uid", catalogue["platform"] + ":" + catalogue["product_id"].astype(str))
    (work / "assets" / "catalogue").mkdir(parents=True)
    catalogue.to_parquet(work / "assets" / "catalogue" / "all.parquet", index=False)  # upstream, not re-run
    defs = build_definitions(Settings(data_root=SAMPLE_DIR, work_dir=work))
    assets, resources = list(defs.assets) + list(defs.asset_checks), dict(defs.resources)
    instance = DagsterInstance.ephemeral()
    from dagster import materialize

    run_config = {"ops": {"recategorisation_clusters": {"config": {"overrides": json.dumps(SMALL)}}}}
    results = {}
    for key in ("Footwear>Shoes", "Accessories>Bags"):
        res = materialize(assets, selection=AssetSelection.assets("recategorisation_clusters"), instance=instance,
                          resources=resources, partition_key=key, run_config=run_config)
        results[key] = res.get_asset_materialization_events()[0].materialization
    few = {"ops": {"recategorisation_report": {"config": {"overrides": '{"candidates": {"dispersion_sample": 10}}'}}}}
    report = materialize(assets, selection=AssetSelection.assets("recategorisation_report"), instance=instance,
                         resources=resources, run_config=few)
    return {"work": work, "clusters": results, "report": report, "catalogue": catalogue}


def test_dagster_assets_cluster_score_and_plot(dagster_run):
    shoes = dagster_run["clusters"]["Footwear>Shoes"]
    meta = {k: v.value for k, v in shoes.metadata.items()}
    assert meta["products"] == 194 and meta["clusters"] >= 2
    for k in ("purity", "nmi", "ari", "kmeans_purity", "kmeans_nmi", "kmeans_ari", "noise_share"):
        assert 0 <= meta[k] <= 1 or k in ("ari", "kmeans_ari"), (k, meta[k])
    assert "data:image/jpeg;base64," in meta["umap"] and "data:image/jpeg;base64," in meta["proposals"]
    node_dir = dagster_run["work"] / "recategorisation" / "footwear_shoes"
    result = json.loads((node_dir / "result.json").read_text())
    # noise is reported (the -1 rows of assignments.parquet) and the baseline used the same k as the cascade
    table = pd.read_parquet(node_dir / "assignments.parquet")
    assert result["noise"]["count"] == int((table["cluster"] == -1).sum()) and len(table) == 194
    assert (table["cluster"] >= -1).all() and (table["cluster_assigned"] >= 0).all()
    assert result["n_clusters"] == meta["clusters"] == table["cluster"].max() + 1
    assert result["metrics"]["baseline_kmeans_raw"]["all"]["overall"]["n_clusters"] == meta["clusters"]
    assert result["metrics"]["raw_features"] == "text+image"
    clusters = pd.read_csv(node_dir / "clusters.csv")
    assert clusters["size"].sum() + result["noise"]["count"] == 194 and clusters["name"].is_unique
    by_k = result["metrics"]["purity_by_k"]  # k-means purity at k x 1, 2, 4, ... (capped at 2 products a cluster)
    assert by_k[0]["k"] == meta["clusters"] and [r["k"] for r in by_k] == sorted({r["k"] for r in by_k})
    assert by_k[-1]["purity"] > by_k[0]["purity"] and "purity" in meta["purity_by_k"]
    # noise per shop is each shop's own share (the summary table's per-shop rows print it)
    by_shop = table.groupby("platform")["cluster"].apply(lambda c: round(float((c < 0).mean()), 4)).to_dict()
    assert result["noise"]["by_platform"] == by_shop and set(by_shop) == {"flipkart", "hm", "myntra"}
    assert all((node_dir / "grids" / f"cluster_{c}.png").exists() for c in clusters["cluster_id"]
               if isinstance(clusters.set_index("cluster_id").at[c, "image_grid"], str))


def test_html_reports_open_with_inline_plots(dagster_run):
    out = dagster_run["work"] / "recategorisation"
    page = (out / "footwear_shoes" / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 2  # the UMAP view and at least one image grid, embedded
    import base64

    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    index = (out / "index.html").read_text()
    for href in re.findall(r'href="([^"]+)"', index):
        assert (out / href).exists(), href
    assert "Footwear &gt; Shoes" in index and "Accessories &gt; Bags" in index
    assert not [p for p in out.rglob(".*.tmp")]  # atomic writes leave no temporary file behind
    cand = dagster_run["report"].output_for_node("recategorisation_report")
    assert cand.loc[cand["configured_shallow"], "candidate"].all() and "score" in cand


def test_recategorise_node_takes_threads_as_an_argument_not_from_the_environment(dagster_run, monkeypatch):
    # before: configure_threads() read PRODCAT_THREADS inside the pipeline; now the caller's count is used
    import torch

    from pipelines.recategorise.nodes import node_products
    from pipelines.recategorise.representation import frozen_features
    from pipelines.recategorise.run import recategorise_node

    monkeypatch.setenv("PRODCAT_THREADS", "2")
    cfg = load_recategorise_config({**SMALL, "images": False})
    node = ("Accessories", "Bags")
    products = node_products(dagster_run["catalogue"], [node])
    features = frozen_features(products, dagster_run["work"] / "store", cfg, ("text",))  # cache hits
    before = torch.get_num_threads()
    try:
        res = recategorise_node(products, node, features, cfg, threads=1, log=lambda *a: None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert len(res.products) == 172 and len(res.clusters) >= 2 and res.metrics["raw_features"] == "text"
    assert res.noise["count"] == int((res.products["cluster"] == -1).sum())


def test_accept_writes_a_new_version_and_relabels(dagster_run, tmp_path):
    from orchestration.cli import main
    from pipelines.settings import MAPPINGS_DIR, TAXONOMY_PATH
    from pipelines.taxonomy.tree import load_taxonomy, parse_path

    before = hashlib.sha256(TAXONOMY_PATH.read_bytes()).hexdigest()
    report = dagster_run["work"] / "recategorisation"
    clusters = pd.read_csv(report / "footwear_shoes" / "clusters.csv")
    ids = clusters["cluster_id"].tolist()[:2]
    out = tmp_path / "taxonomy.v2.yaml"
    args = ["taxonomy", "accept", "--report", str(report), "--node", "Footwear > Shoes", "--out", str(out),
            "--clusters", *map(str, ids), "--names", "Sneakers Proposal", "Heels Proposal"]
    assert main(args) == 0
    assert hashlib.sha256(TAXONOMY_PATH.read_bytes()).hexdigest() == before  # the old version is untouched
    old, new = load_taxonomy(), load_taxonomy(out)
    assert new.version == old.version + 1 and set(old.nodes) <= set(new.nodes)
    added = set(new.nodes) - set(old.nodes)
    assert added == {("Footwear", "Shoes", "Sneakers Proposal"), ("Footwear", "Shoes", "Heels Proposal")}
    assert all(new.is_leaf(n) for n in added) and ("Footwear", "Shoes") not in new.shallow
    for f in MAPPINGS_DIR.glob("*.csv"):  # old mappings stay valid under the new version
        targets = pd.read_csv(f)["category_path"].dropna()
        assert all(parse_path(t) in new for t in targets if t.strip()), f
    relabelled = pd.read_parquet(tmp_path / "taxonomy.v2.relabelled.parquet")
    assignments = pd.read_parquet(report / "footwear_shoes" / "assignments.parquet")
    assert len(relabelled) == len(assignments) == 194
    for cid, name in zip(ids, ["Sneakers Proposal", "Heels Proposal"]):
        moved = relabelled[relabelled["cluster"] == cid]
        assert len(moved) == int(clusters.set_index("cluster_id").at[cid, "size"])
        assert (moved["category_path"] == f"Footwear > Shoes > {name}").all() and moved["relabelled"].all()
    stay = relabelled[~relabelled["cluster"].isin(ids)]
    assert (stay["category_path"] == "Footwear > Shoes").all() and not stay["relabelled"].any()
    # immutable versions, unknown clusters: clear errors, no traceback
    assert main(args) == 2
    assert main([*args[:-6], "--out", str(tmp_path / "v3.yaml"), "--clusters", "999"]) == 2


def test_cli_rejects_an_unknown_node(tmp_path, capsys):
    from orchestration.cli import main

    assert main(["recategorise", "--data", "sample", "--out", str(tmp_path), "--node", "Footwear > Nope"]) == 2
    assert "not in the taxonomy" in capsys.readouterr().err
