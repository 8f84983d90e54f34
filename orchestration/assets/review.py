"""The reviewers' answers as a table of labels (issue 20): the `catalogue` asset applies them, so the weekly
retraining and the adaptation step learn from what the catalogue team corrected, with lineage."""
import pandas as pd
from dagster import DataVersion, MetadataValue, Output, asset

from orchestration.resources import ProdcatSettings
from pipelines.ingest import catalogue as cat


@asset(group_name="catalogue", code_version="1",
       description="Latest review decision per product (platform, product_id, category_path, out_of_scope, reviewer, "
                   "model_version), read from the append-only decision table (<work>/review/decisions.db).")
def reviewed_labels(settings: ProdcatSettings) -> Output[pd.DataFrame]:
    from pipelines.review.labels import reviewed_labels as labels_from_decisions
    from pipelines.review.store import DecisionStore, default_review_db
    from pipelines.taxonomy.tree import load_taxonomy

    url = default_review_db(settings.value.work_dir)
    store = DecisionStore(url, load_taxonomy(settings.taxonomy_path))
    try:
        decisions = store.decisions()
    finally:
        store.close()
    table = labels_from_decisions(decisions)
    per_shop = table.groupby("platform").size().to_dict() if len(table) else {}
    return Output(table, data_version=DataVersion(cat.content_hash(table)), metadata={
        "rows": len(table), "decisions": len(decisions), "out_of_scope": int(table["out_of_scope"].sum()),
        "per_shop": MetadataValue.json({k: int(v) for k, v in per_shop.items()}), "database": url})
