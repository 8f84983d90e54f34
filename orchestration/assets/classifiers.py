"""Fused hierarchical classifiers per strategy, the baselines, and the benchmark report (MLflow-tracked)."""
import json
import logging

import pandas as pd
from dagster import (AllPartitionMapping, AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, AssetIn,
                     DataVersion, MetadataValue, Output, StaticPartitionsDefinition, asset, asset_check)

from orchestration.resources import ProdcatSettings
from pipelines.classify.train import STRATEGIES

strategy_partitions = StaticPartitionsDefinition(STRATEGIES)
# every strategy trains on every platform's embeddings
EMBEDDING_INS = {"catalogue": AssetIn("catalogue"),
                 **{m: AssetIn(f"{m}_embeddings", partition_mapping=AllPartitionMapping())
                    for m in ("text", "image", "joint", "lexical")}}

for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(name).setLevel(logging.ERROR)


def _metrics_row(res) -> dict:
    return {"val": res.val, "test": res.test, "per_platform": res.per_platform, "train_seconds": res.train_seconds,
            "infer_ms_per_item": res.infer_ms_per_item, "epochs": res.epochs, "run_id": res.run_id}


@asset(partitions_def=strategy_partitions, group_name="classifiers", code_version="1", ins=EMBEDDING_INS,
       description="Hierarchical classifier with dynamic masking for one fusion strategy; logged to MLflow; the best "
                   "validation hF1 so far holds the registry alias `champion`.")
def classifiers(context: AssetExecutionContext, settings: ProdcatSettings, catalogue: pd.DataFrame, text: dict,
                image: dict, joint: dict, lexical: dict) -> Output[pd.DataFrame]:
    from pipelines.classify.benchmark import training_data
    from pipelines.classify.manifest import feature_provenance
    from pipelines.classify.registry import log_run, register_champion
    from pipelines.classify.train import strategy_config, train_classifier
    from pipelines.taxonomy.tree import load_taxonomy

    strategy, run = context.partition_key, settings.value
    taxonomy = load_taxonomy(run.taxonomy_path)
    features, available, labels, split, platforms = training_data(
        catalogue, {"text": text, "image": image, "joint": joint, "lexical": lexical}, run.work())
    res = train_classifier(strategy, features, available, labels, split, taxonomy, run.work("models", strategy),
                           seed=run.seed, platforms=platforms, threads=run.threads,
                           provenance=feature_provenance(run, strategy_config(strategy)["modalities"]))
    run_id = log_run(res, strategy_config(strategy) | {"seed": run.seed}, tracking_uri=run.registry_uri,
                     taxonomy=taxonomy, labels=labels)
    promoted = register_champion(run_id, res.val["hF1"], tracking_uri=run.registry_uri)
    row = pd.DataFrame([{"strategy": strategy, "model_dir": str(res.model_dir), "run_id": run_id,
                         "champion": promoted, "metrics": json.dumps(_metrics_row(res), default=float)}])
    plots = sorted(res.model_dir.glob("confusion_L*.png"))
    return Output(row, data_version=DataVersion(run_id), metadata={
        "val_hF1": round(res.val["hF1"], 4), "test_hF1": round(res.test["hF1"], 4),
        "test_consistency": res.test["consistency"], "train_seconds": round(res.train_seconds, 1),
        "mlflow_run": run_id, "promoted_to_champion": promoted,
        **{f"confusion_{p.stem}": MetadataValue.md(f"![{p.stem}](file://{p})") for p in plots},
    })


@asset(group_name="classifiers", code_version="2", ins=EMBEDDING_INS,
       description="Baselines on the same split, each an MLflow run: TF-IDF + LinearSVC (flat, title . description) "
                   "and HiClass LCPPN + LR (frozen embeddings with availability flags).")
def baselines(settings: ProdcatSettings, catalogue: pd.DataFrame, text: dict, image: dict, joint: dict,
              lexical: dict) -> Output[pd.DataFrame]:
    from pipelines.classify.baselines import run_baselines
    from pipelines.classify.benchmark import training_data
    from pipelines.features.store import text_of
    from pipelines.taxonomy.tree import load_taxonomy

    run = settings.value
    features, available, labels, split, platforms = training_data(
        catalogue, {"text": text, "image": image, "joint": joint}, run.work())
    texts = [text_of(t, d) for t, d in zip(catalogue["title"], catalogue["description"])]
    results = run_baselines(texts, features, available, labels, split, load_taxonomy(run.taxonomy_path),
                            seed=run.seed, platforms=platforms, tracking_uri=run.registry_uri)
    table = pd.DataFrame([{"name": k, "run_id": v["run_id"], "metrics": json.dumps(v, default=float)}
                          for k, v in results.items()])
    return Output(table, metadata={f"{k}_test_hF1": round(v["test"]["hF1"], 4) for k, v in results.items()}
                  | {f"{k}_val_hF1": round(v["val"]["hF1"], 4) for k, v in results.items()}
                  | {f"{k}_mlflow_run": v["run_id"] for k, v in results.items()})


@asset_check(asset=classifiers, partitions_def=strategy_partitions, additional_ins={"baselines": AssetIn("baselines")},
             description="Warns when the model does not beat the best baseline on validation hF1 (a comparison to "
                         "read, not a broken run: on the small sample TF-IDF + LinearSVC is hard to beat).")
def beats_best_baseline(classifiers: pd.DataFrame, baselines: pd.DataFrame) -> AssetCheckResult:
    model = json.loads(classifiers["metrics"].iloc[0])["val"]["hF1"]
    scores = {r["name"]: json.loads(r["metrics"])["val"]["hF1"] for _, r in baselines.iterrows()}
    name, best = max(scores.items(), key=lambda kv: kv[1])
    margin = 100 * (model - best)
    return AssetCheckResult(
        passed=model > best, severity=AssetCheckSeverity.WARN,
        description=f"val hF1 {100 * model:.2f} vs best baseline {100 * best:.2f} ({name}): {margin:+.2f} points",
        metadata={"val_hF1": round(model, 4), "best_baseline_val_hF1": round(best, 4),
                  "margin_points": round(margin, 2), "best_baseline": name})


def _merge_review_section(config, md):
    from pipelines.reports.sections import merge_section_file
    from pipelines.review.report import SECTION, review_section
    from pipelines.review.store import read_decisions, review_db_path
    from pipelines.taxonomy.tree import load_taxonomy

    decisions = read_decisions(f"sqlite:///{review_db_path(config.work_dir)}", load_taxonomy(config.taxonomy_path))
    merge_section_file(md, SECTION, review_section(decisions))


@asset(group_name="reports", code_version="3",
       ins={"classifiers": AssetIn("classifiers"), "baselines": AssetIn("baselines"), "catalogue": AssetIn("catalogue")},
       deps=["reviewed_labels"],
       description="benchmark.json + the benchmark section of benchmark.md: every strategy and baseline, overall "
                   "and per platform (test split); its review section: accuracy on reviewed products by model "
                   "version.")
def benchmark_report(settings: ProdcatSettings, classifiers: dict, baselines: pd.DataFrame,
                     catalogue: pd.DataFrame) -> Output[pd.DataFrame]:
    from pipelines.reports.benchmark import write_benchmark_report

    rows = {f"model_{k}": json.loads(v["metrics"].iloc[0]) for k, v in classifiers.items()}
    rows |= {r["name"]: json.loads(r["metrics"]) for _, r in baselines.iterrows()}
    meta = {"data": str(settings.value.data_root.resolve()), "platforms": sorted(catalogue["platform"].unique()),
            "n_test": int((catalogue["split"] == "test").sum()), "n_train": int((catalogue["split"] == "train").sum())}
    _, md = write_benchmark_report(rows, settings.work("report"), meta)
    _merge_review_section(settings.value, md)
    table = pd.DataFrame([{"name": k, "test_hF1": v["test"]["hF1"], "val_hF1": v["val"]["hF1"]}
                          for k, v in rows.items()])
    return Output(table, metadata={"report": MetadataValue.md(md.read_text()), "path": str(md)})
