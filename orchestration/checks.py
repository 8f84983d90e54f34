"""Blocking data-quality checks: Great Expectations 1.x suites and split hygiene."""
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from orchestration.assets.catalogue import normalized_products, splits
from orchestration.partitions import platform_partitions
from orchestration.resources import ProdcatSettings
from pipelines.ingest.validate import validate_products
from pipelines.taxonomy.tree import load_taxonomy


@asset_check(asset=normalized_products, blocking=True, partitions_def=platform_partitions,
             description="GX suite: unique ids, non-empty titles, valid taxonomy paths, decodable images, split shares.")
def gx_products_suite(context, settings: ProdcatSettings, normalized_products: pd.DataFrame) -> AssetCheckResult:
    report = validate_products(normalized_products, load_taxonomy(settings.taxonomy_path), context.partition_key)
    failed = [r for r in report["results"] if not r["success"]]
    return AssetCheckResult(passed=report["success"], severity=AssetCheckSeverity.ERROR, metadata={
        "failed_expectations": len(failed),
        "results": MetadataValue.md(pd.DataFrame(report["results"]).drop(columns="unexpected_examples").to_markdown()),
    })


@asset_check(asset=splits, blocking=True, description="No product group is split across train/val/test.")
def no_group_leakage(splits: pd.DataFrame) -> AssetCheckResult:
    from pipelines.ingest.catalogue import groups_crossing_splits

    leaking = groups_crossing_splits(splits)
    return AssetCheckResult(passed=leaking.empty, metadata={"groups_crossing_splits": len(leaking)})
