"""Per-shop zero-label adaptation: for each shop, the classifier adapted to it as if it were new (trained on the
labelled shops but it, from its unlabelled products). For a shop without a hand mapping this is the model `prodcat
classify --shop` and `prodcat onboard` answer with (they load the same folder, <work>/adapt/<shop>); for a benchmark
shop it is the leave-one-platform-out adaptation, scored on its grouped test split after the model is saved."""
import json

import pandas as pd
from dagster import AllPartitionMapping, AssetDep, AssetExecutionContext, DataVersion, MetadataValue, Output, asset

from orchestration.partitions import platform_partitions
from orchestration.resources import ProdcatSettings


@asset(partitions_def=platform_partitions, group_name="holdout", code_version="1",
       # after text_embeddings, and with its own embedding store (onboarding.adapt_store): adapting a shop never
       # changes the vectors the in-distribution models read, nor the embedding stage's outputs
       deps=[AssetDep(name, partition_mapping=AllPartitionMapping()) for name in ("raw_export", "text_embeddings")],
       description="The classifier adapted to this shop from its unlabelled products (self-training on the other, "
                   "labelled shops), saved for classify/onboard; test hF1 when the shop has a hand mapping.")
def shop_adaptation(context: AssetExecutionContext, settings: ProdcatSettings) -> Output[pd.DataFrame]:
    from pipelines.adapt.onboarding import adapt_registered_shop
    from pipelines.adapt.store import adapted_meta

    summary = adapt_registered_shop(context.partition_key, settings.value)
    fingerprint = adapted_meta(summary["out"])["fingerprint"]
    test = summary["test"]
    return Output(pd.DataFrame([{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in summary.items()}]),
                  data_version=DataVersion(fingerprint),
                  metadata={"training_shops": ", ".join(summary["training_shops"] or []),
                            "products": summary["products"], "pseudo_labelled_share": summary["pseudo_share"],
                            "stage2_share": summary["stage2_share"], "needs_review_share": summary["needs_review_share"],
                            "test_hF1": test.get("hF1"), "scored": MetadataValue.json(test),
                            "model_dir": MetadataValue.path(summary["out"])})
