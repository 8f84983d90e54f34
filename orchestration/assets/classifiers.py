"""Fused hierarchical classifiers per strategy, the baselines, and the benchmark report (MLflow-tracked)."""
import json
import logging

import pandas as pd
from dagster import (AllPartitionMapping, AssetCheckResult, AssetExecutionContext, AssetIn, DataVersion,
                     MetadataValue, Output, StaticPartitionsDefinition, asset, asset_check)

from orchestration.resources import ProdcatSettings
from pipelines import settings as config
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
    from pipelines.taxonomy.tree import load_taxonomy
    from pipelines.classify.train import log_run, register_champion, strategy_config, train_classifier

    strategy, work, seed = context.partition_key, settings.work(), settings.seed
    taxonomy = load_taxonomy()
    features, available, labels, split, platforms = training_data(
        catalogue, {"text": text, "image": image, "joint": joint, "lexical": lexical}, work)
    res = train_classifier(strategy, features, available, labels, split, taxonomy, settings.work("models", strategy),
                           seed=seed, platforms=platforms)
    run_id = log_run(res, strategy_config(strategy) | {"seed": seed}, taxonomy=taxonomy, labels=labels)
    promoted = register_champion(run_id, res.val["hF1"])
    row = pd.DataFrame([{"strategy": strategy, "model_dir": str(res.model_dir), "run_id": run_id,
                         "champion": promoted, "metrics": json.dumps(_metrics_row(res), default=float)}])
    plots = sorted(res.model_dir.glob("confusion_L*.png"))
    return Output(row, data_version=DataVersion(run_id), metadata={
        "val_hF1": round(res.val["hF1"], 4), "test_hF1": round(res.test["hF1"], 4),
        "test_consistency": res.test["consistency"], "train_seconds": round(res.train_seconds, 1),
        "mlflow_run": run_id, "promoted_to_champion": promoted,
        **{f"confusion_{p.stem}": MetadataValue.md(f"![{p.stem}](file://{p})") for p in plots},
    })


@asset(group_name="classifiers", code_version="1", ins=EMBEDDING_INS,
       description="Baselines on the same split: TF-IDF + LinearSVC (flat, titles) and HiClass LCPPN + LR (embeddings).")
def baselines(settings: ProdcatSettings, catalogue: pd.DataFrame, text: dict, image: dict, joint: dict,
              lexical: dict) -> Output[pd.DataFrame]:
    from pipelines.classify.benchmark import run_baselines, training_data
    from pipelines.taxonomy.tree import load_taxonomy

    features, available, *_ = training_data(catalogue, {"text": text, "image": image, "joint": joint}, settings.work())
    results = run_baselines(catalogue, features, available, load_taxonomy(), seed=settings.seed)
    table = pd.DataFrame([{"name": k, "metrics": json.dumps(v, default=float)} for k, v in results.items()])
    return Output(table, metadata={f"{k}_test_hF1": round(v["test"]["hF1"], 4) for k, v in results.items()}
                  | {f"{k}_val_hF1": round(v["val"]["hF1"], 4) for k, v in results.items()})


@asset_check(asset=classifiers, partitions_def=strategy_partitions, additional_ins={"baselines": AssetIn("baselines")},
             description="The model beats the best baseline on validation hF1.")
def beats_best_baseline(classifiers: pd.DataFrame, baselines: pd.DataFrame) -> AssetCheckResult:
    model = json.loads(classifiers["metrics"].iloc[0])["val"]["hF1"]
    best = max(json.loads(m)["val"]["hF1"] for m in baselines["metrics"])
    return AssetCheckResult(passed=model > best, metadata={"val_hF1": model, "best_baseline_val_hF1": best,
                                                           "margin_points": round(100 * (model - best), 2)})


@asset(group_name="reports", code_version="1",
       ins={"classifiers": AssetIn("classifiers"), "baselines": AssetIn("baselines"), "catalogue": AssetIn("catalogue")},
       description="benchmark.json + benchmark.md: every strategy and baseline, overall and per platform (test split).")
def benchmark_report(settings: ProdcatSettings, classifiers: dict, baselines: pd.DataFrame,
                     catalogue: pd.DataFrame) -> Output[pd.DataFrame]:
    from pipelines.classify.benchmark import write_report

    rows = {f"model_{k}": json.loads(v["metrics"].iloc[0]) for k, v in classifiers.items()}
    rows |= {r["name"]: json.loads(r["metrics"]) for _, r in baselines.iterrows()}
    meta = {"data": str(settings.raw_dir("").resolve()), "platforms": sorted(catalogue["platform"].unique()),
            "n_test": int((catalogue["split"] == "test").sum()), "n_train": int((catalogue["split"] == "train").sum())}
    _, md = write_report(rows, settings.work("report"), meta)
    table = pd.DataFrame([{"name": k, "test_hF1": v["test"]["hF1"], "val_hF1": v["val"]["hF1"]}
                          for k, v in rows.items()])
    return Output(table, metadata={"report": MetadataValue.md(md.read_text()), "path": str(md)})
