"""Leave-one-platform-out: a training side per unseen shop, one evaluation per unseen shop x strategy, a report.

Lineage is exact: holdout p trains on the other shops' products and embeddings (a StaticPartitionMapping from each
shop to the holdouts that train on it) and evaluates on p's own (identity on the `holdout` dimension), so a change
in one shop reaches only the partitions that read it, and unchanged data versions recompute nothing."""
import base64
import hashlib
import json
from pathlib import Path

import pandas as pd
from dagster import (AllPartitionMapping, AssetExecutionContext, AssetIn, DataVersion, MetadataValue,
                     MultiPartitionsDefinition, MultiToSingleDimensionPartitionMapping, Output, asset)

from orchestration.assets.classifiers import strategy_partitions
from orchestration.partitions import platform_partitions
from orchestration.resources import ProdcatSettings

FROZEN = ("text", "image", "joint")
holdout_partitions = MultiPartitionsDefinition({"holdout": platform_partitions, "strategy": strategy_partitions})
# upstream shop q -> every holdout that trains on it (all but q itself)
# holdout p trains on every other shop: with shops as dynamic partitions that is "all shops" here, and the asset
# drops p's own rows (build_training_set); a change in p re-runs p's training side, whose data version (a content
# hash) then stays the same, so p's evaluation cells stay fresh
TRAINS_ON = AllPartitionMapping()
SAME_HOLDOUT = MultiToSingleDimensionPartitionMapping(partition_dimension_name="holdout")


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@asset(partitions_def=platform_partitions, group_name="holdout", code_version="1",
       ins={"products": AssetIn("normalized_products", partition_mapping=TRAINS_ON),
            **{m: AssetIn(f"{m}_embeddings", partition_mapping=TRAINS_ON) for m in FROZEN}},
       description="Training side for an unseen shop: the other shops' train/val rows, their embedding manifests "
                   "and a lexical view (TF-IDF SVD + SVM expert) refitted on them only.")
def holdout_training_set(context: AssetExecutionContext, settings: ProdcatSettings, products: dict, text: dict,
                         image: dict, joint: dict) -> Output[pd.DataFrame]:
    from pipelines.classify.holdout import build_training_set

    holdout = context.partition_key
    out = settings.work("holdout", holdout, "training_set")
    summary = build_training_set(products, {"text": text, "image": image, "joint": joint}, holdout, out)
    version = _digest(out / "rows.parquet", out / "lexical.npy", *(out / f"manifest_{m}.parquet" for m in FROZEN))
    return Output(pd.DataFrame([{"holdout": holdout, "dir": str(out), **{k: json.dumps(v) if isinstance(v, list)
                                                                        else v for k, v in summary.items()}}]),
                  data_version=DataVersion(version),
                  metadata={"training_platforms": ", ".join(summary["training_platforms"]), "rows": summary["rows"],
                            "lexical_seconds": summary["lexical_seconds"]})


@asset(partitions_def=holdout_partitions, group_name="holdout", code_version="1",
       ins={"training_set": AssetIn("holdout_training_set", partition_mapping=SAME_HOLDOUT),
            "products": AssetIn("normalized_products", partition_mapping=SAME_HOLDOUT),
            **{m: AssetIn(f"{m}_embeddings", partition_mapping=SAME_HOLDOUT) for m in FROZEN}},
       description="One strategy trained without a shop, evaluated on all of that shop's mapped products and on "
                   "its grouped test split.")
def holdout_evaluations(context: AssetExecutionContext, settings: ProdcatSettings, training_set: pd.DataFrame,
                        products: pd.DataFrame, text: pd.DataFrame, image: pd.DataFrame,
                        joint: pd.DataFrame) -> Output[pd.DataFrame]:
    from pipelines.classify.holdout import evaluate_holdout
    from pipelines.taxonomy.tree import load_taxonomy

    keys, run = context.partition_key.keys_by_dimension, settings.value
    holdout, strategy = keys["holdout"], keys["strategy"]
    res = evaluate_holdout(training_set["dir"].iloc[0], products, {"text": text, "image": image, "joint": joint},
                           strategy, run.work(), load_taxonomy(run.taxonomy_path),
                           run.work("holdout", holdout, strategy), seed=run.seed, threads=run.threads)
    blob = json.dumps(res, default=float, sort_keys=True)
    test, every = res["test"], res["all"]
    return Output(pd.DataFrame([{"holdout": holdout, "strategy": strategy, "result": blob}]),
                  data_version=DataVersion(hashlib.sha256(blob.encode()).hexdigest()[:16]),
                  metadata={"test_hF1": round(test.get("hF1", float("nan")), 4),
                            "all_hF1": round(every.get("hF1", float("nan")), 4),
                            "n_holdout": res["n_holdout"], "n_train": res["n_train"],
                            "not_applicable": res.get("not_applicable", ""),
                            "holdout_modalities": MetadataValue.json(res["holdout_modalities"])})


@asset(partitions_def=platform_partitions, group_name="holdout", code_version="1",
       ins={"training_set": AssetIn("holdout_training_set"), "products": AssetIn("normalized_products"),
            **{m: AssetIn(f"{m}_embeddings") for m in FROZEN}},
       description="Few-shot adaptation to an unseen shop: test hF1 after adding 1% / 5% of its labelled groups.")
def holdout_fewshot(context: AssetExecutionContext, settings: ProdcatSettings, training_set: pd.DataFrame,
                    products: pd.DataFrame, text: pd.DataFrame, image: pd.DataFrame,
                    joint: pd.DataFrame) -> Output[pd.DataFrame]:
    from pipelines.classify.holdout import few_shot_curve, load_holdout_config
    from pipelines.taxonomy.tree import load_taxonomy

    cfg, run, holdout = load_holdout_config(), settings.value, context.partition_key
    curve = few_shot_curve(training_set["dir"].iloc[0], products, {"text": text, "image": image, "joint": joint},
                           cfg["fewshot"]["strategy"], run.work(), load_taxonomy(run.taxonomy_path),
                           run.work("holdout", holdout, "fewshot"), cfg["fewshot"]["fractions"], cfg,
                           seed=run.seed, threads=run.threads)
    table = pd.DataFrame(curve).assign(holdout=holdout, strategy=cfg["fewshot"]["strategy"])
    return Output(table, metadata={"curve": MetadataValue.md(table.to_markdown(index=False))})


@asset(group_name="reports", code_version="2",
       ins={"evaluations": AssetIn("holdout_evaluations", partition_mapping=AllPartitionMapping()),
            "fewshot": AssetIn("holdout_fewshot", partition_mapping=AllPartitionMapping()),
            "classifiers": AssetIn("classifiers", partition_mapping=AllPartitionMapping()),
            "benchmark": AssetIn("benchmark_report")},
       description="Leave-one-platform-out matrix, generalisation gaps, few-shot curve and heatmap; the "
                   "cross-platform section of benchmark.md / key of benchmark.json (replaced on a re-run).")
def holdout_report(settings: ProdcatSettings, evaluations: dict, fewshot: dict, classifiers: dict,
                   benchmark: pd.DataFrame) -> Output[pd.DataFrame]:
    from pipelines.reports.holdout import write_cross_platform_report

    cells = [json.loads(df["result"].iloc[0]) for df in evaluations.values()]
    in_dist = {}
    for strategy, df in classifiers.items():
        per = json.loads(df["metrics"].iloc[0]).get("per_platform", {})
        in_dist[strategy] = {p: m.get("hF1") for p, m in per.items() if m}
    report, md, png = write_cross_platform_report(cells, in_dist, fewshot, settings.work("report"))
    table = pd.DataFrame([{"strategy": s, "holdout": h, "test_hF1": v}
                          for s, row in report["matrix_test"].items() for h, v in row.items()])
    img = base64.b64encode(png.read_bytes()).decode()
    return Output(table, metadata={"report": MetadataValue.md(md),
                                   "heatmap": MetadataValue.md(f"![heatmap](data:image/png;base64,{img})"),
                                   "mean_unseen_hF1": MetadataValue.json(report["mean"]),
                                   "gap": MetadataValue.json(report["gap"])})
