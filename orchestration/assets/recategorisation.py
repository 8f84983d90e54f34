"""Recategorisation: clusters and sub-category proposals per shallow taxonomy node, and one report over them."""
import base64
import hashlib
import io
import json
from pathlib import Path

import pandas as pd
from dagster import (AllPartitionMapping, AssetDep, AssetExecutionContext, AssetIn, Config, DataVersion,
                     MetadataValue, Output, StaticPartitionsDefinition, asset)

from orchestration.resources import ProdcatSettings
from pipelines.recategorise.candidates import scored_candidates
from pipelines.recategorise.config import load_recategorise_config
from pipelines.recategorise.nodes import node_products, node_slug
from pipelines.recategorise.report import granularity_text, recategorisation_markdown, write_recategorisation_index
from pipelines.recategorise.representation import frozen_features
from pipelines.recategorise.run import recategorise_node
from pipelines.taxonomy.tree import load_taxonomy, parse_path, path_str


def node_key(node) -> str:
    """Partition key of a node: 'Footwear>Shoes' (Dagster keys cannot hold ' > ' comfortably in URLs)."""
    return ">".join(node)


shallow_node_partitions = StaticPartitionsDefinition([node_key(n) for n in load_taxonomy().shallow])
ALL_PLATFORMS = AllPartitionMapping()


class RecategoriseConfig(Config):
    overrides: str = "{}"  # JSON overrides of models/configs/recategorise.yaml, e.g. {"simclr": {"epochs": 2}}


def _image_md(path, alt: str, width: int = 640) -> str:
    """A PNG as an inline markdown image (downscaled JPEG, base64) so the Dagster UI shows it without file access."""
    from PIL import Image

    if not isinstance(path, (str, Path)) or not Path(path).is_file():  # NaN/None: a cluster without images
        return f"_{alt}: no image_"
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((width, width))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    return f"![{alt}](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _proposals_md(clusters: pd.DataFrame, n_grids: int = 8) -> str:
    lines = ["| id | proposed name | size | cohesion | top native label (purity) | images |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(clusters.itertuples()):
        grid = _image_md(r.image_grid, f"cluster {r.cluster_id}", 160) if i < n_grids else f"`{r.image_grid}`"
        lines.append(f"| {r.cluster_id} | {r.name} | {r.size} | {r.cohesion:.3f} | {r.top_native} "
                     f"({r.native_purity}) | {grid} |")
    return "\n".join(lines)


@asset(partitions_def=shallow_node_partitions, group_name="recategorisation", code_version="3",
       ins={"catalogue": AssetIn("catalogue")},
       deps=[AssetDep("text_embeddings", partition_mapping=ALL_PLATFORMS),
             AssetDep("image_embeddings", partition_mapping=ALL_PLATFORMS)],
       description="SimCLR -> UMAP -> cascade HDBSCAN on the products of one shallow taxonomy node: proposed "
                   "sub-categories (name, size, cohesion, samples, image grid), scored against the shops' native "
                   "fine labels and against k-means on the raw embeddings with the same k.")
def recategorisation_clusters(context: AssetExecutionContext, settings: ProdcatSettings, config: RecategoriseConfig,
                              catalogue: pd.DataFrame) -> Output[pd.DataFrame]:
    cfg = load_recategorise_config(json.loads(config.overrides))
    node = parse_path(context.partition_key)
    products = node_products(catalogue, [node])
    features = frozen_features(products, settings.work("store"), cfg, threads=settings.value.threads)  # cache hits
    res = recategorise_node(products, node, features, cfg, settings.work("recategorisation", node_slug(node)),
                            log=context.log.info, threads=settings.value.threads)
    table = res.clusters.copy()
    for col in ("terms", "platforms", "native_counts", "samples"):
        table[col] = table[col].map(lambda v: json.dumps(v, default=int))
    method, base = res.metrics["method"]["all"]["overall"], res.metrics["baseline_kmeans_raw"]["all"]["overall"]
    digest = hashlib.sha256(res.products["cluster"].to_numpy().tobytes()
                            + "|".join(res.products["product_id"]).encode()).hexdigest()[:16]
    return Output(table, data_version=DataVersion(digest), metadata={
        "products": len(res.products), "clusters": len(table), "noise_share": res.noise["share"],
        "purity": method["purity"], "nmi": method["nmi"], "ari": method["ari"],
        "kmeans_purity": base["purity"], "kmeans_nmi": base["nmi"], "kmeans_ari": base["ari"],
        "native_label_knn_agreement": res.metrics["native_knn_agreement"]["overall"]["agreement"],
        "refine_moved_share": (res.metrics.get("refine") or {}).get("moved_share", 0.0),
        "purity_by_k": MetadataValue.md(granularity_text(res.metrics)),
        "seconds": res.timings["total_s"], "report": MetadataValue.path(res.report_path),
        "umap": MetadataValue.md(_image_md(res.plots.get("umap"), f"UMAP {path_str(node)}")),
        "proposals": MetadataValue.md(_proposals_md(res.clusters)),
    })


@asset(group_name="recategorisation", code_version="1",
       ins={"clusters": AssetIn("recategorisation_clusters", partition_mapping=AllPartitionMapping()),
            "catalogue": AssetIn("catalogue")},
       description="Candidate nodes (size, embedding dispersion, native sub-labels) and index.html over every "
                   "node's recategorisation report, with purity / NMI / ARI against the k-means baseline.")
def recategorisation_report(settings: ProdcatSettings, config: RecategoriseConfig, clusters: dict,
                            catalogue: pd.DataFrame) -> Output[pd.DataFrame]:
    cfg = load_recategorise_config(json.loads(config.overrides))
    out = settings.work("recategorisation")
    summary = {}
    for key in sorted(clusters):
        node = parse_path(key)
        summary[path_str(node)] = json.loads((out / node_slug(node) / "result.json").read_text())
    candidates = scored_candidates(catalogue, settings.work("store"), load_taxonomy(settings.value.taxonomy_path), cfg)
    candidates.to_csv(out / "candidates.csv", index=False)
    index = write_recategorisation_index(summary, candidates, out)
    shown = candidates[candidates["candidate"]].drop(columns=["top_native_labels"])
    return Output(candidates, metadata={
        "index": MetadataValue.path(str(index)), "candidates": int(candidates["candidate"].sum()),
        "candidate_nodes": MetadataValue.md(shown.to_markdown(index=False, floatfmt=".3f")),
        "metrics": MetadataValue.md(recategorisation_markdown(summary)),
    })
