"""Pictures for the taxonomy owners: a thumbnail grid per proposed cluster and the 2-D UMAP view."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def image_grid(paths: list, out_path: Path, n: int = 16, thumb: int = 96) -> Path | None:
    """Thumbnails (white-padded squares) of up to n member images in a 4-column PNG; None if none is readable."""
    from PIL import Image

    from models.simclr import pad_square
    from pipelines.ingest.images import load_image

    tiles = []
    for p in paths:
        if len(tiles) == n:
            break
        try:
            with load_image(p) as im:
                tiles.append(pad_square(im).resize((thumb, thumb)))
        except Exception:  # an unreadable member image is skipped in the grid (it was reported at load time)
            continue
    if not tiles:
        return None
    cols = min(4, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * thumb + (cols + 1) * 2, rows * thumb + (rows + 1) * 2), (200, 200, 200))
    for i, t in enumerate(tiles):
        grid.paste(t, (2 + (i % cols) * (thumb + 2), 2 + (i // cols) * (thumb + 2)))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out_path)
    return out_path


def _plot_clusters(ax, xy: np.ndarray, labels: np.ndarray, names: dict, cmap) -> None:
    noise = labels < 0
    ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="#cccccc", label=f"noise ({int(noise.sum())})")
    for c in sorted(set(labels.tolist()) - {-1}):
        m = labels == c
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(c % 20))
        cx, cy = np.median(xy[m], axis=0)
        ax.annotate(f"{c}: {names.get(c, '')}"[:28], (cx, cy), fontsize=7, ha="center",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.7, "lw": 0})


def _plot_native(ax, xy: np.ndarray, native: pd.Series, cmap) -> None:
    lab = native.fillna("(no native label)").to_numpy()
    for i, (value, _) in enumerate(pd.Series(lab).value_counts().head(19).items()):
        m = lab == value
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % 20), label=str(value)[:30])
    ax.legend(markerscale=3, fontsize=7, loc="best")


def scatter_plot(xy: np.ndarray, labels: np.ndarray, names: dict, native: pd.Series, out_path: Path,
                 title: str) -> Path:
    """2-D UMAP coloured by cluster (noise grey) beside the same points coloured by native label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 7))
    cmap = plt.get_cmap("tab20")
    _plot_clusters(axes[0], xy, labels, names, cmap)
    axes[0].set_title(f"{title}: clusters")
    _plot_native(axes[1], xy, native, cmap)
    axes[1].set_title("native fine labels (not used for clustering)")
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
