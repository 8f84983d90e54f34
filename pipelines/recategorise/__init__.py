"""Recategorisation: find taxonomy nodes that hide finer categories, cluster their products, propose sub-nodes.

Method (arXiv 2508.20013): SimCLR representation (models/simclr.py) -> UMAP clustering space -> cascade HDBSCAN
(clusters too large or too loose are re-clustered, recursively, until a stopping rule) -> centroid refinement.
Native fine labels the shared taxonomy dropped (Myntra articleType, H&M product_type_name, a Flipkart tree level)
only evaluate the clusters, against k-means on the raw frozen embeddings with the same number of clusters.

Modules, in the order a run uses them:
    config          load_recategorise_config: models/configs/recategorise.yaml + overrides
    nodes           node paths and slugs, the products at a node, the shops' native fine labels
    candidates      which nodes hide sub-categories (size, dispersion, native sub-labels)
    representation  frozen embeddings, SimCLR features, raw text features, per-shop centring
    clustering      UMAP + cascade HDBSCAN + centroid refinement
    evaluation      purity / NMI / ARI per shop, k-means baselines, granularity, native-label agreement
    proposals       cluster names (c-TF-IDF), typical products, the proposal table
    plots           image grids and the 2-D UMAP view
    report          report.html per node, recategorisation.json / .md and index.html over the nodes
    run             recategorise_node (one node) and run_recategorisation (the shallow nodes of a data root)
"""
from pipelines.recategorise.config import load_recategorise_config
from pipelines.recategorise.result import RecategoriseResult
from pipelines.recategorise.run import recategorise_node, run_recategorisation

__all__ = ["load_recategorise_config", "RecategoriseResult", "recategorise_node", "run_recategorisation"]
