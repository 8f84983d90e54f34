"""Raw exports -> platform-normalised products -> union catalogue -> splits."""
import hashlib
import json
import os

import pandas as pd
from dagster import (AssetExecutionContext, AssetIn, DataVersion, DataVersionsByPartition, MetadataValue, Output,
                     asset, observable_source_asset)

from orchestration.partitions import platform_partitions, shop_keys
from orchestration.resources import ProdcatSettings
from pipelines.ingest import catalogue as cat
from pipelines.ingest.normalize import normalize_platform
from pipelines.ingest.shops import get_adapter
from pipelines.taxonomy.tree import load_taxonomy


def export_fingerprint(raw_dir) -> str:
    """Hash of the export file's bytes plus the image listing (names, sizes): changes when the shop's data does."""
    h = hashlib.sha256()
    export = raw_dir / get_adapter(raw_dir.name).EXPORT_FILE
    h.update(export.read_bytes() if export.exists() else b"<missing>")
    images = raw_dir / "images"
    for root, _, files in sorted(os.walk(images)) if images.exists() else []:
        for name in sorted(files):
            h.update(f"{name}:{os.path.getsize(os.path.join(root, name))};".encode())
    return h.hexdigest()[:16]


@observable_source_asset(partitions_def=platform_partitions, group_name="catalogue",
                         description="A shop's raw export (CSV + images); data version = hash of its files.")
def raw_export(context, settings: ProdcatSettings):
    return DataVersionsByPartition({p: DataVersion(export_fingerprint(settings.raw_dir(p)))
                                    for p in shop_keys(context.instance)})


@asset(partitions_def=platform_partitions, group_name="catalogue", deps=[raw_export], code_version="1",
       description="Products of one shop in the shared taxonomy (canonical schema); quarantine + coverage beside it.")
def normalized_products(context: AssetExecutionContext, settings: ProdcatSettings) -> Output[pd.DataFrame]:
    platform = context.partition_key
    from pipelines.ingest.image_fetch import ImageFetcher

    fetcher = ImageFetcher(settings.work("images"), network=settings.fetch_images)
    result = normalize_platform(platform, settings.raw_dir(platform), taxonomy=load_taxonomy(settings.taxonomy_path),
                                image_fetcher=fetcher, shops_dir=settings.value.shops_dir,
                                mappings_dir=settings.value.mappings_dir)
    out = result.write(settings.work("normalized", platform))
    cov = result.coverage
    for warning in cov["warnings"]:  # e.g. every row quarantined: the blocking GX check then fails, this says why
        context.log.warning(f"{platform}: {warning}")
    return Output(result.products, data_version=DataVersion(cat.content_hash(result.products)), metadata={
        "rows_in": cov["rows_in"], "rows_normalised": cov["rows_normalised"],
        "rows_quarantined": cov["rows_quarantined"], "fashion_mapped_share": cov["fashion_mapped_share"],
        "coverage": MetadataValue.json(cov), "quarantine": MetadataValue.path(str(out / "quarantine.parquet")),
    })


@asset(group_name="catalogue", code_version="2",
       ins={"normalized_products": AssetIn(key="normalized_products"),
            "reviewed_labels": AssetIn(key="reviewed_labels", input_manager_key="reviewed_labels_input")},
       description="Union of every platform's normalised products, reviewers' labels applied (reviewed_labels); "
                   "uid = platform:product_id.")
def catalogue(normalized_products: dict, reviewed_labels: pd.DataFrame) -> Output[pd.DataFrame]:
    from pipelines.review.labels import apply_reviewed_labels

    reviewed = apply_reviewed_labels(cat.union_catalogue(normalized_products), reviewed_labels)
    table = reviewed.products
    counts = table.groupby(["platform", "split"]).size().unstack(fill_value=0)
    return Output(table, data_version=DataVersion(cat.content_hash(table)), metadata={
        "rows": len(table), "per_platform_split": MetadataValue.md(counts.to_markdown()),
        "categories": int(table["category_path"].map(tuple).nunique()),
        "reviewed_relabelled": reviewed.relabelled, "reviewed_confirmed": reviewed.confirmed,
        "reviewed_out_of_scope": len(reviewed.unmapped), "reviewed_not_in_catalogue": reviewed.not_in_catalogue,
    })


@asset(group_name="catalogue", code_version="1",
       description="Grouped train/val/test manifest (uid, platform, group_id, split).")
def splits(catalogue: pd.DataFrame) -> Output[pd.DataFrame]:
    manifest = cat.split_manifest(catalogue)
    shares = manifest.groupby("platform")["split"].value_counts(normalize=True).round(3)
    return Output(manifest, data_version=DataVersion(cat.content_hash(manifest)),
                  metadata={"shares": MetadataValue.json(json.loads(shares.unstack().to_json()))})
