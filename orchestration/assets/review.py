"""The reviewers' answers as a table of labels (issue 20): the `catalogue` asset applies them, so the weekly
retraining and the adaptation step learn from what the catalogue team corrected, with lineage."""
import pandas as pd
from dagster import DataVersion, MetadataValue, Output, asset

from orchestration.io import ParquetIOManager
from orchestration.resources import ProdcatSettings
from pipelines.ingest import catalogue as cat


@asset(group_name="catalogue", code_version="1",
       description="Latest review decision per product (platform, product_id, category_path, out_of_scope, reviewer, "
                   "model_version), read from the append-only decision table (<work>/review/decisions.db).")
def reviewed_labels(settings: ProdcatSettings) -> Output[pd.DataFrame]:
    from pipelines.review.labels import review_accuracy_by_version
    from pipelines.review.labels import reviewed_labels as labels_from_decisions
    from pipelines.review.store import read_decisions, review_db_path
    from pipelines.taxonomy.tree import load_taxonomy

    url = f"sqlite:///{review_db_path(settings.value.work_dir)}"
    decisions = read_decisions(url, load_taxonomy(settings.taxonomy_path))
    table = labels_from_decisions(decisions)
    per_shop = table.groupby("platform").size().to_dict() if len(table) else {}
    accuracy = review_accuracy_by_version(decisions)
    return Output(table, data_version=DataVersion(cat.content_hash(table)), metadata={
        "rows": len(table), "decisions": len(decisions), "out_of_scope": int(table["out_of_scope"].sum()),
        "per_shop": MetadataValue.json({k: int(v) for k, v in per_shop.items()}), "database": url,
        "accuracy_by_model_version": MetadataValue.md(accuracy.to_markdown(index=False) if len(accuracy) else
                                                      "no reviewed product yet")})


class ReviewedLabelsInput(ParquetIOManager):
    """How `catalogue` reads `reviewed_labels`: the materialised table, or - before it was ever materialised (a
    fresh work dir, the catalogue materialised on its own) - no reviewed labels, said in the log."""

    def load_input(self, context):
        if not self._path(context, None).exists():
            from pipelines.review.labels import REVIEWED_COLUMNS

            context.log.warning("reviewed_labels was never materialised here: the catalogue applies no review")
            return pd.DataFrame(columns=REVIEWED_COLUMNS)
        return super().load_input(context)
