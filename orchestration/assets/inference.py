"""Two-stage inference: the cheap lexical stage-1 model and the routing threshold to the champion (stage 2)."""
import hashlib
import json

import pandas as pd
from dagster import AllPartitionMapping, AssetIn, DataVersion, MetadataValue, Output, asset

from orchestration.resources import ProdcatSettings

ALL = AllPartitionMapping()


@asset(group_name="inference", code_version="2",
       ins={"catalogue": AssetIn("catalogue"), "lexical": AssetIn("lexical_embeddings", partition_mapping=ALL)},
       description="Stage 1: hierarchical masked classifier on the lexical view only (no MiniLM, no images), "
                   "temperature-calibrated per level on validation; its manifest records the lexical space.")
def stage1_model(settings: ProdcatSettings, catalogue: pd.DataFrame, lexical: dict) -> Output[pd.DataFrame]:
    from pipelines.classify.benchmark import training_data
    from pipelines.inference.stage1 import train_stage1
    from pipelines.taxonomy.tree import load_taxonomy

    config = settings.value
    features, available, labels, split, platforms = training_data(catalogue, {"lexical": lexical}, config.work_dir)
    res = train_stage1(features, available, labels, split, load_taxonomy(config.taxonomy_path), config,
                       platforms=platforms)
    cal = res["calibration"]
    weights = (settings.work("models", "stage1") / "model.safetensors").read_bytes()
    digest = hashlib.sha256(weights + json.dumps(cal["temperatures"]).encode()).hexdigest()[:16]
    return Output(pd.DataFrame([{"model_dir": res["model_dir"], "val_hF1": res["val"]["hF1"],
                                 "test_hF1": res["test"]["hF1"], "calibration": json.dumps(cal)}]),
                  data_version=DataVersion(digest), metadata={
                      "val_hF1": round(res["val"]["hF1"], 4), "test_hF1": round(res["test"]["hF1"], 4),
                      "temperatures": MetadataValue.json([round(t, 3) for t in cal["temperatures"]]),
                      "val_nll_before": round(cal["nll_before"], 4), "val_nll_after": round(cal["nll_after"], 4),
                      "val_ece_before": round(cal["ece_before"], 4), "val_ece_after": round(cal["ece_after"], 4),
                      "train_seconds": round(res["train_seconds"], 1), "path": res["model_dir"]})


@asset(group_name="reports", code_version="2",
       ins={"stage1": AssetIn("stage1_model"), "classifiers": AssetIn("classifiers", partition_mapping=ALL),
            "catalogue": AssetIn("catalogue"),
            **{m: AssetIn(f"{m}_embeddings", partition_mapping=ALL) for m in ("text", "image", "joint", "lexical")}},
       deps=["benchmark_report"],
       description="Routing threshold from stage 1 to the champion, chosen on validation from the target in "
                   "stage1.yaml (routing.json beside stage 1), and the test trade-off report (tradeoff.json/.md/.png).")
def routing_threshold(settings: ProdcatSettings, stage1: pd.DataFrame, classifiers: dict, catalogue: pd.DataFrame,
                      text: dict, image: dict, joint: dict, lexical: dict) -> Output[pd.DataFrame]:
    from pipelines.classify.benchmark import training_data
    from pipelines.inference.features import embedding_texts
    from pipelines.inference.routing import fit_routing, write_tradeoff_report
    from pipelines.inference.two_stage import stage2_source
    from pipelines.reports.sections import merge_section_file

    config = settings.value
    features, available, labels, split, _ = training_data(
        catalogue, {"text": text, "image": image, "joint": joint, "lexical": lexical}, config.work_dir)
    stage2_dir, _ = stage2_source(config)
    routing = fit_routing(stage1["model_dir"].iloc[0], stage2_dir, features, available, labels, split, config,
                          texts=embedding_texts(catalogue["title"], catalogue["description"]),
                          image_paths=catalogue["image_path"].tolist())
    js, md, png = write_tradeoff_report(routing, settings.work("report"))
    benchmark_md = settings.work("report") / "benchmark.md"
    if benchmark_md.exists():
        merge_section_file(benchmark_md, "two-stage", md.read_text())
    v, t = routing["val"], routing["test"]
    return Output(pd.DataFrame([{"threshold": routing["threshold"], "routing": json.dumps(routing)}]),
                  data_version=DataVersion(hashlib.sha256(json.dumps(routing, sort_keys=True).encode())
                                           .hexdigest()[:16]),
                  metadata={"threshold": round(routing["threshold"], 5), "stage2": routing["stage2"]["strategy"],
                            "val_routed_share": round(v["routed_share"], 4), "val_hF1_routed": round(v["hF1_routed"], 4),
                            "val_hF1_stage2": round(v["hF1_stage2"], 4), "test_routed_share": round(t["routed_share"], 4),
                            "test_hF1_routed": round(t["hF1_routed"], 4), "test_hF1_stage2": round(t["hF1_stage2"], 4),
                            "test_hF1_stage1": round(t["hF1_stage1"], 4),
                            "budget_met_val": routing["target_met_val"],
                            "review_share_test": round(routing["abstention_test"]["review_share"], 4),
                            "tradeoff": MetadataValue.md(md.read_text()),
                            "curve": MetadataValue.md(f"![trade-off](file://{png})"), "path": str(js)})
