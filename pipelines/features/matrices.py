"""Per-platform embedding matrices stored explicitly (npy + manifest parquet) and assembled for training."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

MODALITIES = ("text", "image", "joint")


def matrix_path(work: Path, modality: str, platform: str) -> Path:
    return Path(work) / "embeddings" / modality / f"{platform}.npy"


def save_matrix(work: Path, modality: str, platform: str, matrix: np.ndarray) -> tuple[Path, str]:
    path = matrix_path(work, modality, platform)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.ascontiguousarray(matrix, dtype=np.float32))
    tmp.replace(path)
    return path, hashlib.sha256(np.ascontiguousarray(matrix, dtype=np.float32).tobytes()).hexdigest()[:16]


def load_matrix(work: Path, modality: str, platform: str) -> np.ndarray:
    return np.load(matrix_path(work, modality, platform))


def assemble(catalogue: pd.DataFrame, manifests: dict[str, dict[str, pd.DataFrame]], work: Path):
    """Align per-platform matrices to catalogue rows.

    manifests[modality][platform] is a DataFrame (uid, ok) in matrix row order. Returns features[modality]
    float32 [N, d] and available[modality] bool [N]; rows without a vector are zero but marked unavailable.
    """
    features, available = {}, {}
    for modality, per_platform in manifests.items():
        parts, oks, uids = [], [], []
        for platform, manifest in sorted(per_platform.items()):
            parts.append(load_matrix(work, modality, platform))
            oks.append(manifest["ok"].to_numpy(bool))
            uids.append(manifest["uid"].to_numpy())
        matrix, ok, uid = np.concatenate(parts), np.concatenate(oks), np.concatenate(uids)
        index = pd.Series(np.arange(len(uid)), index=uid)
        rows = index.reindex(catalogue["uid"]).to_numpy()
        present = ~np.isnan(rows)
        rows = np.where(present, rows, 0).astype(int)
        available[modality] = present & ok[rows]
        # unavailable rows are zero-filled *and* masked: models must read `available`, never these zeros
        features[modality] = np.where(available[modality][:, None], matrix[rows], 0).astype(np.float32)
    return features, available
