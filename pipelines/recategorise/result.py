"""What recategorising one node produces: assignments, proposals, metrics, noise, failures, timings."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipelines.taxonomy.tree import path_str


@dataclass
class RecategoriseResult:
    node: tuple
    products: pd.DataFrame  # platform, product_id, title, native_label, cluster (-1 noise), cluster_assigned, x, y
    clusters: pd.DataFrame  # cluster_id, name, terms, size, share, cohesion, lineage, depth, native purity, ...
    metrics: dict           # method (all / clustered) vs baselines, per platform and overall
    noise: dict
    failures: pd.DataFrame  # products left out, with the reason
    timings: dict
    plots: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    report_path: str | None = None

    def proposals(self) -> list[dict]:
        return [{"cluster_id": int(r.cluster_id), "name": r.name, "size": int(r.size), "cohesion": r.cohesion,
                 "terms": list(r.terms), "samples": list(r.samples), "image_grid": r.image_grid}
                for r in self.clusters.itertuples()]

    def summary(self) -> dict:
        """The JSON-able record of the node (result.json, and one entry of recategorisation.json)."""
        return {"node": path_str(self.node), "products": int(len(self.products)), "noise": self.noise,
                "n_clusters": int(len(self.clusters)), "metrics": self.metrics, "timings": self.timings,
                "failures": int(len(self.failures)), "plots": self.plots, "report": self.report_path,
                "steps": self.steps, "proposals": self.proposals()}
