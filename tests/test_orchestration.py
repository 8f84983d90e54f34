"""Dagster definitions materialise into a temp dir, checks block, and lineage/data versions behave."""
import shutil

import pandas as pd
import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, materialize

from orchestration.definitions import build_definitions
from orchestration.partitions import register_shops_of
from orchestration.runners import run_in_process
from pipelines.settings import SAMPLE_DIR, Settings


@pytest.fixture
def defs_tmp(tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(SAMPLE_DIR, data)
    return build_definitions(Settings(data_root=str(data), work_dir=str(tmp_path / "work"))), data, tmp_path


def test_definitions_load():
    from orchestration.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_export", "normalized_products", "catalogue", "splits", "text_embeddings", "image_embeddings",
            "joint_space", "joint_embeddings", "lexical_space", "lexical_embeddings", "baselines", "classifiers",
            "benchmark_report"} <= keys


def test_catalogue_materialises_with_blocking_gx_checks(defs_tmp):
    defs, data, tmp = defs_tmp
    instance = DagsterInstance.ephemeral()
    for p in ["myntra", "hm", "flipkart"]:
        res = run_in_process(defs, ("normalized_products",), instance, p)
        checks = res.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks), [c.metadata for c in checks]
    res = run_in_process(defs, ("catalogue", "splits",), instance)
    assert all(c.passed for c in res.get_asset_check_evaluations())
    table = res.output_for_node("catalogue")
    assert set(table["platform"]) == {"myntra", "hm", "flipkart"}
    assert table["uid"].is_unique
    assert (tmp / "work" / "assets" / "catalogue" / "all.parquet").exists()
    assert (tmp / "work" / "normalized" / "hm" / "coverage.json").exists()


def test_broken_export_fails_the_blocking_check(defs_tmp):
    defs, data, tmp = defs_tmp
    # every H&M image removed: the product table is still produced but the GX image expectation must block
    shutil.rmtree(data / "hm" / "images")
    instance = DagsterInstance.ephemeral()
    register_shops_of(defs, instance)  # shops are dynamic partitions
    assets = list(defs.assets) + list(defs.asset_checks)
    res = materialize(assets, selection=AssetSelection.assets("normalized_products"), instance=instance,
                      resources=defs.resources, partition_key="hm", raise_on_error=False)
    evals = res.get_asset_check_evaluations()
    assert evals and not all(e.passed for e in evals)


def _data_version(instance, key, partition=None):
    from dagster import AssetKey

    records = instance.fetch_materializations(AssetKey(key), limit=10).records
    tags = [r.asset_materialization.tags for r in records if r.asset_materialization.partition == partition]
    return tags[0]["dagster/data_version"], len(tags)


def test_embeddings_are_cached_and_keep_their_data_version(sample_work):
    defs, instance = sample_work["defs"], sample_work["instance"]
    before, n_before = _data_version(instance, "text_embeddings", "hm")
    res = run_in_process(defs, ("text_embeddings",), instance, "hm")
    mat = res.get_asset_materialization_events()[0].materialization
    assert mat.metadata["computed"].value == 0 and mat.metadata["cached"].value > 500  # warm: all from the store
    after, n_after = _data_version(instance, "text_embeddings", "hm")
    assert n_after == n_before + 1 and after == before  # same content -> same version: downstream not stale


def test_classifier_asset_trains_logs_and_checks_against_baselines(sample_work):
    """Also defect 4: the registry follows the definitions' work dir (no environment variable set here)."""
    import json

    from pipelines.settings import ROOT

    default_registry = ROOT / "work" / "sample" / "mlruns.db"
    before = default_registry.stat().st_mtime if default_registry.exists() else None
    defs, instance = sample_work["defs"], sample_work["instance"]
    run_in_process(defs, ("baselines",), instance)
    res = run_in_process(defs, ("classifiers",), instance, "text")
    table = res.output_for_node("classifiers")
    metrics = json.loads(table["metrics"].iloc[0])
    assert metrics["test"]["consistency"] == 1.0 and table["champion"].iloc[0]
    checks = res.get_asset_check_evaluations()
    assert [c.check_name for c in checks] == ["beats_best_baseline"]
    figures = checks[0].metadata
    assert checks[0].passed == (figures["val_hF1"].value > figures["best_baseline_val_hF1"].value)
    assert (sample_work["work"] / "mlruns.db").is_file()
    after = default_registry.stat().st_mtime if default_registry.exists() else None
    assert after == before, "a champion was registered in the default work dir"



def test_stage_plan_follows_the_graph_and_covers_every_asset():
    from orchestration.definitions import defs
    from orchestration.main_job import asset_names, stage_plan

    plan = stage_plan(defs)
    position = {a: i for i, stage in enumerate(plan) for a in stage.assets}
    assert sorted(position) == asset_names(defs)  # every asset exactly once
    graph = defs.resolve_asset_graph()
    for key in graph.toposorted_asset_keys:
        for parent in graph.get(key).parent_keys:
            if parent.to_user_string() in position:
                assert position[parent.to_user_string()] < position[key.to_user_string()], (parent, key)
    for stage in plan:  # one run per partition key: a stage never mixes partitionings
        assert len({id(graph.get(AssetKey(a)).partitions_def) for a in stage.assets}) == 1


def test_only_with_unknown_or_partial_names(capsys):
    """Defect 9: an unknown name is an error naming the assets; a partial selection runs just what it names."""
    from orchestration.cli import main
    from orchestration.definitions import defs
    from orchestration.main_job import check_asset_names, stage_plan

    assert main(["run", "--only", "holdout_report,no_such_asset"]) == 2
    err = capsys.readouterr().err
    assert "unknown asset name(s) no_such_asset" in err and "holdout_evaluations" in err
    plan = stage_plan(defs, AssetSelection.assets(*check_asset_names(defs, ["holdout_fewshot", "splits"])))
    assert [s.assets for s in plan] == [("splits",), ("holdout_fewshot",)]


def test_main_job_is_a_registered_job_that_runs_the_graph(defs_tmp):
    defs, data, tmp = defs_tmp
    job = defs.resolve_job_def("main_job")
    instance = DagsterInstance.ephemeral()
    config = {"ops": {"run_every_stage": {"config": {"only": "normalized_products,catalogue,splits"}}}}
    assert job.execute_in_process(run_config=config, instance=instance).success
    runs = instance.get_runs()
    assert len(runs) == 1 + 3 + 1 + 1  # the driver, normalized_products per shop, catalogue, splits
    assert (tmp / "work" / "assets" / "splits" / "all.parquet").is_file()


def test_changed_settings_change_exactly_the_code_versions_that_read_them(tmp_path):
    base = Settings(data_root=SAMPLE_DIR, work_dir=tmp_path)

    def versions(settings):
        graph = build_definitions(settings).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}

    before, reseeded = versions(base), versions(base.with_(seed=1))
    assert {k for k in before if before[k] != reseeded[k]} == {
        "baselines", "classifiers", "holdout_evaluations", "holdout_fewshot", "stage1_model", "shop_adaptation"}
    other_encoder = versions(base.with_(text_encoder="roberta-base"))
    assert {k for k in before if before[k] != other_encoder[k]} == {"text_embeddings", "shop_adaptation"}


def test_taxonomy_path_survives_the_accept_subcommand():
    """Defect 8: `prodcat taxonomy --path X accept ...` keeps X (the subparser's default used to overwrite it)."""
    from orchestration import cli
    from orchestration.cli_parser import build_parser

    args = build_parser(cli).parse_args(["taxonomy", "--path", "custom.yaml", "accept", "--report", "r", "--node",
                                         "Footwear > Shoes", "--clusters", "1", "--out", "o"])
    assert args.path == "custom.yaml" and args.action == "accept"
    args = build_parser(cli).parse_args(["taxonomy", "accept", "--report", "r", "--node", "n", "--clusters", "1",
                                         "--out", "o", "--path", "after.yaml"])
    assert args.path == "after.yaml"


def test_run_summary_says_figures_warnings_and_where_to_look(tmp_path):
    import json

    from orchestration.summary import print_summary

    report = tmp_path / "report"
    report.mkdir()
    (report / "benchmark.json").write_text(json.dumps({"results": {
        "model_late": {"test": {"hF1": 0.9712}}, "baseline_tfidf_svm": {"test": {"hF1": 0.9755}}}}))
    (report / "benchmark.md").write_text("# report\n")
    adapted = tmp_path / "assets" / "shop_adaptation"
    adapted.mkdir(parents=True)
    pd.DataFrame([{"shop": "hm", "test": json.dumps({"hF1": 0.8123, "n": 40})}]).to_parquet(adapted / "hm.parquet")
    pd.DataFrame([{"shop": "acme", "test": json.dumps({})}]).to_parquet(adapted / "acme.parquet")
    lines = []
    checks = [("beats_best_baseline", "late", False, "WARN", {"val_hF1": 0.97, "best_baseline_val_hF1": 0.975}),
              ("gx_products_suite", "hm", True, "ERROR", {})]
    print_summary({"x": {}, "__checks__": checks}, Settings(work_dir=tmp_path), log=lines.append)
    text = "\n".join(lines)
    assert "best model (test hF1): late 97.12%; best baseline tfidf_svm 97.55%" in text
    assert "warning: beats_best_baseline[late] val_hF1=0.97, best_baseline_val_hF1=0.975" in text
    assert "FAILED" not in text and str(report / "benchmark.md") in text and "make ui" in text
    assert "zero-label adaptation (each shop as new, test hF1): hm 81.23%;" in text and "acme" not in text


def test_a_new_shop_is_a_partition_from_its_contract_and_export_with_no_code_change(tmp_path):
    """A fourth shop ('acme': H&M's sample export under another name) with its contract and mapping table in the
    Settings' folders becomes a dynamic partition; its normalisation runs and its leave-one-platform-out cells
    exist, without a line of code naming it."""
    from orchestration.partitions import known_shops, shop_keys
    from pipelines.settings import DATA, MAPPINGS_DIR

    raw, shops, mappings = tmp_path / "raw", tmp_path / "shops", tmp_path / "mappings"
    shops.mkdir()
    mappings.mkdir()
    shutil.copytree(SAMPLE_DIR / "hm", raw / "hm")
    for shop in ("hm", "acme"):
        (shops / f"{shop}.yaml").write_text((DATA / "shops" / "hm.yaml").read_text().replace("shop: hm", f"shop: {shop}"))
        shutil.copy(MAPPINGS_DIR / "hm.csv", mappings / f"{shop}.csv")
    assert known_shops(raw, shops) == ["hm"]  # acme has a contract but no export yet
    shutil.copytree(SAMPLE_DIR / "hm", raw / "acme")
    assert known_shops(raw, shops) == ["hm", "acme"]

    defs = build_definitions(Settings(data_root=raw, work_dir=tmp_path / "work", shops_dir=shops,
                                      mappings_dir=mappings, quiet=True))
    instance = DagsterInstance.ephemeral()
    assert register_shops_of(defs, instance) == ["hm", "acme"] and shop_keys(instance) == ["hm", "acme"]
    assert register_shops_of(defs, instance) == []  # idempotent
    summary = run_in_process(defs, ("normalized_products",), instance, "acme")
    acme = pd.read_parquet(tmp_path / "work" / "assets" / "normalized_products" / "acme.parquet")
    hm_rows = len(pd.read_csv(raw / "hm" / "articles.csv"))
    assert set(acme["platform"]) == {"acme"} and 0 < len(acme) <= hm_rows
    assert summary  # the run reported its metadata
    cells = defs.resolve_asset_graph().get(AssetKey("holdout_evaluations")).partitions_def
    from dagster import partition_loading_context

    with partition_loading_context(dynamic_partitions_store=instance):
        keys = cells.get_partition_keys()
    assert {k.keys_by_dimension["holdout"] for k in keys} == {"hm", "acme"}
