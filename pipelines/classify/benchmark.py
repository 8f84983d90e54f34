"""The training data every benchmarked model reads: the catalogue's rows aligned with their embedding matrices.

(The baselines are in baselines.py; the benchmark report in pipelines/reports/benchmark.py.)"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.features.matrices import assemble


def training_data(catalogue: pd.DataFrame, manifests: dict, work: Path):
    """-> (features {modality: [N, d]}, available {modality: bool [N]}, labels (path tuples), split, platforms), row
    i being catalogue row i; manifests[modality][platform] = (uid, ok) in matrix row order."""
    features, available = assemble(catalogue, manifests, work)
    labels = [tuple(p) for p in catalogue["category_path"]]
    return features, available, labels, catalogue["split"].to_numpy(), catalogue["platform"].to_numpy()
