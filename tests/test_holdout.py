"""Leave-one-platform-out on the sample: partition lineage, staleness after a shop changes, metrics, report."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance, MultiPartitionKey

from orchestration.runners import run_in_process
from pipelines.settings import PLATFORMS, Settings


def _cell(holdout, strategy):
    return MultiPartitionKey({"holdout": holdout, "strategy": strategy})


@pytest.fixture(scope="module")
def holdout_world(sample_work, tmp_path_factory):
    """A private copy of the materialised sample (so editing a raw export cannot disturb other tests), with its
    own instance: every shop's training side, and the `text` strategy evaluated on every unseen shop."""
    from orchestration.definitions import build_definitions

    root = tmp_path_factory.mktemp("holdout")
    shutil.copytree(sample_work["raw"], root / "raw")
    shutil.copytree(sample_work["work"], root / "work")
    defs = build_definitions(Settings(data_root=str(root / "raw"), work_dir=str(root / "work")))
    instance = DagsterInstance.ephemeral()
    for selection in [("normalized_products",), ("text_embeddings", "image_embeddings"), ("joint_embeddings",),
                      ("holdout_training_set",)]:
        for key in PLATFORMS:
            run_in_process(defs, selection, instance, key)
    cells = [_cell(h, "text") for h in PLATFORMS] + [_cell("flipkart", "image")]
    for key in cells:
        run_in_process(defs, ("holdout_evaluations",), instance, key)
    return {"defs": defs, "instance": instance, "root": root, "cells": cells}


def _result(world, holdout, strategy):
    path = world["root"] / "work" / "assets" / "holdout_evaluations" / f"{_cell(holdout, strategy)}.parquet"
    return json.loads(pd.read_parquet(path)["result"].iloc[0])


def test_partition_mapping_trains_on_the_other_shops(holdout_world):
    """Shops are dynamic partitions: a training side reads every registered shop and keeps the others' rows only;
    an evaluation cell reads its own shop's products only."""
    from dagster import partition_loading_context

    graph = holdout_world["defs"].resolve_asset_graph()
    up = graph.get_parent_partition_keys_for_child
    with partition_loading_context(dynamic_partitions_store=holdout_world["instance"]):
        for h in PLATFORMS:
            parents = up(h, AssetKey("normalized_products"), AssetKey("holdout_training_set")).partitions_subset
            assert set(parents.get_partition_keys()) == set(PLATFORMS)
            summary = pd.read_parquet(holdout_world["root"] / "work" / "assets" / "holdout_training_set" / f"{h}.parquet")
            assert set(json.loads(summary["training_platforms"].iloc[0])) == set(PLATFORMS) - {h}
            evals = up(_cell(h, "early"), AssetKey("normalized_products"), AssetKey("holdout_evaluations"))
            assert set(evals.partitions_subset.get_partition_keys()) == {h}  # evaluated on its own products only


def test_unseen_shop_metrics_and_missing_modalities(holdout_world):
    from pipelines.ingest.catalogue import read_products

    work = holdout_world["root"] / "work"
    for h in PLATFORMS:
        res = _result(holdout_world, h, "text")
        products = read_products(work / "assets" / "normalized_products" / f"{h}.parquet")
        assert res["n_holdout"] == len(products) and res["all"]["n"] == len(products)
        assert res["test"]["n"] == int((products["split"] == "test").sum())
        assert res["all"]["consistency"] == 1.0  # masked decoding: valid paths even on an unseen shop
        assert 0.3 < res["all"]["hF1"] <= 1.0  # well above chance over ~80 leaves, honest, not perfect
        train = pd.read_parquet(work / "holdout" / h / "training_set" / "rows.parquet")
        assert h not in set(train["platform"]) and set(train["split"]) <= {"train", "val"}
    # Flipkart has no images: the image model still answers (learned prior), and says it did
    img = _result(holdout_world, "flipkart", "image")
    assert img["holdout_modalities"]["image"] == 0.0 and img["all"]["fallback_rate"] == 1.0
    assert img["all"]["consistency"] == 1.0 and img["all"]["hF1"] < _result(holdout_world, "flipkart", "text")["all"]["hF1"]


def _stale(world):
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    resolver = CachingStaleStatusResolver(world["instance"], world["defs"].resolve_asset_graph(),
                                          LoadingContextForTest(world["instance"]))
    training = {h: resolver.get_status(AssetKey("holdout_training_set"), h).value for h in PLATFORMS}
    cells = {str(c): resolver.get_status(AssetKey("holdout_evaluations"), c).value for c in world["cells"]}
    return training, cells


def test_changing_one_shop_stales_only_what_reads_it(holdout_world):
    world = holdout_world
    training, cells = _stale(world)
    assert set(training.values()) == {"FRESH"} and set(cells.values()) == {"FRESH"}
    # same content again: new materialisation, same data version, nothing downstream goes stale
    run_in_process(world["defs"], ("normalized_products",), world["instance"], "myntra")
    training, cells = _stale(world)
    assert set(training.values()) == {"FRESH"} and set(cells.values()) == {"FRESH"}
    # H&M renames one product: only partitions that read H&M's products are stale
    csv = world["root"] / "raw" / "hm" / "articles.csv"
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    raw.loc[0, "prod_name"] = raw.loc[0, "prod_name"] + " renamed"
    raw.to_csv(csv, index=False)
    run_in_process(world["defs"], ("normalized_products",), world["instance"], "hm")
    training, cells = _stale(world)
    # shops are dynamic partitions, so a training side reads every shop and drops its own: all three are stale
    assert training == {"myntra": "STALE", "flipkart": "STALE", "hm": "STALE"}
    assert cells[str(_cell("hm", "text"))] == "STALE"  # H&M is that cell's unseen shop
    assert cells[str(_cell("myntra", "text"))] == "FRESH"  # reads H&M only through its (not yet rebuilt) training side
    # rebuilding H&M's own training side reads H&M's rows only to drop them: same content hash, so its data version
    # is unchanged and only the cells that read H&M's products stay stale
    run_in_process(world["defs"], ("holdout_training_set",), world["instance"], "hm")
    training, cells = _stale(world)
    assert training["hm"] == "FRESH" and cells[str(_cell("hm", "text"))] == "STALE"


def test_report_matrix_gap_and_heatmap(tmp_path):
    from pipelines.reports.holdout import write_cross_platform_report

    def cell(h, s, v):
        return {"holdout": h, "strategy": s, "test": {"hF1": v, "acc_L1": v, "acc_L2": v, "acc_L3": v},
                "all": {"hF1": v}}

    cells = [cell("hm", "early", 0.9), cell("myntra", "early", 0.8), cell("hm", "late", 0.7),
             cell("myntra", "late", 0.9)]
    in_dist = {"early": {"hm": 0.95, "myntra": 0.99}, "late": {"hm": 0.96, "myntra": 0.99}}
    (tmp_path / "benchmark.md").write_text("# bench\n")
    (tmp_path / "benchmark.json").write_text("{}")
    curves = {"hm": pd.DataFrame([{"fraction": 0.05, "labelled_products": 7, "test_hF1": 0.93, "strategy": "early"}])}
    report, md, png = write_cross_platform_report(cells, in_dist, curves, tmp_path)
    assert report["mean"]["early"] == pytest.approx(0.85) and report["gap"]["early"] == pytest.approx(0.12)
    assert report["gap"]["late"] == pytest.approx(0.175)
    assert "| early | 90.00 | 80.00 | 85.00 | 97.00 | 12.00 |" in md and "does not support" not in md
    assert png.exists() and png.stat().st_size > 2000
    (tmp_path / "benchmark.md").write_text((tmp_path / "benchmark.md").read_text() + "\n## Two-stage\nkept\n")
    write_cross_platform_report(cells, in_dist, curves, tmp_path)  # rerun replaces the section, no duplicate
    text = (tmp_path / "benchmark.md").read_text()
    assert text.count("## Cross-platform") == 1 and text.startswith("# bench")
    assert text.rstrip().endswith("## Two-stage\nkept")  # a later section survives the replacement
    assert json.loads((tmp_path / "benchmark.json").read_text())["cross_platform"]["mean"]["late"] == pytest.approx(0.8)


def test_title_normalisation_and_few_shot_rows():
    from pipelines.classify.holdout import few_shot_rows, normalise_title

    assert normalise_title("Puma Men's Grey T-shirt (Pack of 2)", "Puma") == "men grey t-shirt"
    assert normalise_title("Alisha Solid Women's Cycling Shorts", "Alisha") == "solid women cycling shorts"
    table = pd.DataFrame({"platform": "hm", "group_id": [f"g{i // 2}" for i in range(4000)],
                          "split": ["train"] * 3200 + ["test"] * 800})
    rows = few_shot_rows(table, 0.05)
    assert not rows[3200:].any()  # never a test row
    share = rows[:3200].mean()
    assert 0.04 < share < 0.09  # ~5% of all products = ~6% of train groups
    picked = table[rows]["group_id"]
    assert table[table["group_id"].isin(picked)].index.isin(np.flatnonzero(rows)).all()  # whole groups
