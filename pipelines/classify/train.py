"""Train, save, load and evaluate hierarchical classifiers (the baselines: baselines.py; MLflow runs and the
`champion` alias: registry.py).

A model directory holds model.safetensors (weights), model.json (strategy config, input dims, the taxonomy node
list and depth it was trained on, and the manifest of what made its input vectors: manifest.py), metrics.json, and
the test predictions (test_rows.npy, test_predictions.json).
No pickles, no Lightning checkpoints: the best epoch's weights are kept in memory and written once.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from pipelines.classify.registry import log_run
from pipelines.settings import ROOT

STRATEGY_DIR = ROOT / "models" / "configs" / "strategies"
STRATEGIES = ["text", "image", "joint", "early", "late", "attention"]


def strategy_config(name_or_cfg) -> dict:
    if isinstance(name_or_cfg, dict):
        return dict(name_or_cfg)
    path = STRATEGY_DIR / f"{name_or_cfg}.yaml"
    if not path.exists():
        raise ValueError(f"unknown strategy {name_or_cfg!r}; known: {', '.join(p.stem for p in STRATEGY_DIR.glob('*.yaml'))}")
    return yaml.safe_load(path.read_text())


@dataclass
class TrainResult:
    model_dir: Path
    strategy: str
    val: dict
    test: dict
    train_seconds: float
    infer_ms_per_item: float
    epochs: int
    run_id: str = ""
    per_platform: dict = field(default_factory=dict)
    best_epoch: int = -1
    test_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    test_paths: list = field(default_factory=list)
    test_confidence: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    test_fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def check_inputs(features: dict, available: dict, modalities, n: int | None = None) -> int:
    """Every modality present, aligned, 2-D, with finite values on its available rows. -> number of rows."""
    for m in modalities:
        if m not in features or m not in available:
            raise ValueError(f"modality {m!r} missing: features has {sorted(features)}, available has {sorted(available)}")
        x, a = np.asarray(features[m]), np.asarray(available[m])
        if x.ndim != 2 or a.ndim != 1 or len(x) != len(a) or a.dtype != bool:
            raise ValueError(f"{m}: features must be [N, d] and available bool [N]; got {x.shape} and "
                             f"{a.shape} {a.dtype}")
        n = len(x) if n is None else n
        if len(x) != n:
            raise ValueError(f"{m}: {len(x)} rows, expected {n} (all modalities must be row-aligned)")
        bad = np.flatnonzero(a & ~np.isfinite(x).all(1))
        if len(bad):
            raise ValueError(f"{m}: {len(bad)} available rows hold NaN/inf (first: row {bad[0]}); mark them "
                             "unavailable or fix the embeddings")
    return n or 0


def label_indices(hierarchy, labels: list) -> np.ndarray:
    bad = [p for p in labels if not 0 < len(p) <= hierarchy.depth or tuple(p) not in hierarchy.index[len(p) - 1]]
    if bad:
        raise ValueError(f"{len(bad)} labels are not taxonomy paths, e.g. {bad[:3]}")
    return np.array([hierarchy.encode(p) for p in labels], dtype=np.int64)


class KeepBest:
    """Lightning callback holding the best epoch's weights in memory (instead of checkpoint files)."""

    def __new__(cls, monitor: str, mode: str):
        import lightning as L

        class _KeepBest(L.Callback):
            def __init__(self):
                self.best, self.epoch, self.state = None, -1, None

            def on_validation_end(self, trainer, module):
                if trainer.sanity_checking or monitor not in trainer.callback_metrics:
                    return
                value = float(trainer.callback_metrics[monitor])
                if self.best is None or (value > self.best if mode == "max" else value < self.best):
                    self.best, self.epoch = value, trainer.current_epoch
                    self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

        return _KeepBest()


def _fit_best_epoch(cfg: dict, features: dict, available: dict, labels: list, split: np.ndarray, taxonomy,
                    seed: int, max_epochs: int | None):
    """Seeded, deterministic Lightning fit with early stopping on cfg['monitor'] (val_hF1 or val_loss); the best
    epoch's weights are loaded back. -> (model on CPU in eval mode, train seconds, epochs run, best epoch)."""
    import lightning as L
    import torch

    from models.classifier import EmbeddingData, HierarchicalClassifier

    L.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    dims = {m: int(features[m].shape[1]) for m in cfg["modalities"]}
    model = HierarchicalClassifier(cfg, dims, [list(nd) for nd in taxonomy.nodes], taxonomy.depth)
    labels_idx = label_indices(model.hierarchy, labels)
    data = EmbeddingData(features, available, labels_idx, split, cfg["modalities"], cfg["batch_size"], seed)
    monitor = cfg.get("monitor", "val_hF1")
    mode = "max" if monitor == "val_hF1" else "min"
    keep = KeepBest(monitor, mode)
    stop = L.pytorch.callbacks.EarlyStopping(monitor, patience=cfg["patience"], mode=mode)
    trainer = L.Trainer(max_epochs=max_epochs or cfg["epochs"], accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[stop, keep], deterministic="warn")
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=data)
    seconds = time.perf_counter() - t0
    model.load_state_dict(keep.state)
    return model.cpu().eval(), seconds, trainer.current_epoch, keep.epoch


def _score_split(result: TrainResult, model, name: str, features: dict, available: dict, labels: list,
                 split: np.ndarray, taxonomy, platforms=None):
    """Predict split `name` with the trained model and put its metrics on `result` (test also keeps the predictions,
    the inference time per item and the per-platform metrics)."""
    modalities = model.modalities
    rows = np.flatnonzero(split == name)
    x = {m: features[m][rows] for m in modalities}
    av = {m: np.asarray(available[m][rows], bool) for m in modalities}
    t0 = time.perf_counter()
    paths, conf, prob = model.predict_arrays(x, av)
    ms = 1000 * (time.perf_counter() - t0) / max(len(rows), 1)
    fallback = model.fallback(av)
    metrics = _metrics([labels[i] for i in rows], paths, prob, taxonomy)
    if metrics:
        metrics["fallback_rate"] = float(fallback.mean())
    setattr(result, name, metrics)
    if name == "test":
        result.infer_ms_per_item = ms
        result.test_rows, result.test_paths, result.test_confidence, result.test_fallback = rows, paths, conf, fallback
        if platforms is not None:
            result.per_platform = per_platform(labels, paths, prob, rows, platforms, taxonomy)


def _write_results(result: TrainResult, out: Path):
    """test_rows.npy, test_predictions.json and metrics.json beside the model files."""
    np.save(out / "test_rows.npy", result.test_rows)
    (out / "test_predictions.json").write_text(json.dumps([list(p) for p in result.test_paths]))
    (out / "metrics.json").write_text(json.dumps({"val": result.val, "test": result.test,
                                                  "per_platform": result.per_platform,
                                                  "train_seconds": result.train_seconds,
                                                  "infer_ms_per_item": result.infer_ms_per_item,
                                                  "epochs": result.epochs, "best_epoch": result.best_epoch},
                                                 indent=2))


def train_classifier(strategy, features: dict, available: dict, labels: list, split: np.ndarray, taxonomy,
                     out_dir, seed: int = 0, max_epochs: int | None = None, mlflow_tracking_uri: str | None = None,
                     platforms=None, provenance: dict | None = None, threads: int = 0) -> TrainResult:
    """Fit on split=='train', early-stop on 'val' (config `monitor`: val_hF1 or val_loss), save the best epoch,
    report val and test metrics (overall, and per platform when `platforms` is given). With a tracking URI the
    run is logged to MLflow (params, metrics, confusion plots, model files) and its id is in result.run_id.
    `provenance` (manifest.feature_provenance) records in model.json what made the input vectors. `threads`: torch
    intra-op threads (0 = the cores this process may use); identical bits across runs need the same count."""
    from pipelines.features.encoders import configure_threads

    configure_threads(threads)
    cfg = strategy_config(strategy)
    n = check_inputs(features, available, cfg["modalities"])
    split = np.asarray(split)
    if len(labels) != n or len(split) != n:
        raise ValueError(f"{n} feature rows but {len(labels)} labels and {len(split)} split values")
    model, seconds, epochs, best_epoch = _fit_best_epoch(cfg, features, available, labels, split, taxonomy, seed,
                                                         max_epochs)
    out = save_model(model, out_dir, taxonomy=taxonomy, provenance=provenance)
    result = TrainResult(out, cfg["name"], {}, {}, seconds, 0.0, epochs, best_epoch=best_epoch)
    for name in ("val", "test"):
        _score_split(result, model, name, features, available, labels, split, taxonomy, platforms)
    _write_results(result, out)
    if mlflow_tracking_uri:
        log_run(result, cfg, taxonomy=taxonomy, labels=labels, tracking_uri=mlflow_tracking_uri)
    return result


def _metrics(true, pred, prob, taxonomy) -> dict:
    from pipelines.classify.metrics import evaluate

    return evaluate(true, pred, taxonomy, confidence=prob) if len(true) else {}


def per_platform(labels, paths, prob, rows, platforms, taxonomy) -> dict:
    plat = np.asarray(platforms)[rows]
    prob = None if prob is None else np.asarray(prob)
    return {p: _metrics([labels[i] for i in rows[plat == p]], [paths[j] for j in np.flatnonzero(plat == p)],
                        None if prob is None else prob[plat == p], taxonomy) for p in sorted(set(plat))}


def save_model(model, out_dir, taxonomy=None, provenance: dict | None = None) -> Path:
    """Weights as safetensors + model.json: config, dims, the taxonomy nodes it predicts and the manifest of what
    it was trained with (manifest.build_manifest), so classify and serve can refuse other vectors. No pickles; both
    files are written atomically (pipelines/files.py), the weights first."""
    from safetensors.torch import save

    from pipelines.classify.manifest import build_manifest
    from pipelines.files import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors",
                       save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    nodes = [list(n) for lvl in model.hierarchy.level_nodes for n in lvl]
    meta = {"cfg": model.cfg, "dims": model.dims, "nodes": nodes, "depth": model.hierarchy.depth,
            "manifest": build_manifest(model.dims, nodes, taxonomy, provenance)}
    atomic_write_text(out / "model.json", json.dumps(meta, indent=2))
    return out


def load_model(model_dir):
    """The classifier saved in `model_dir`, its files validated on the way in (model_files: a corrupt or
    inconsistent file raises BadModelFile naming it). What its manifest says it was trained with is checked by the
    callers that feed it new vectors: manifest.check_model."""
    from pipelines.classify.model_files import build_classifier, load_weights, read_model_json

    meta = read_model_json(model_dir)
    return load_weights(build_classifier(meta, model_dir), model_dir).eval()


def predict(model_dir, features: dict, available: dict, return_fallback: bool = False):
    """-> (paths, per-level confidence [N, depth] (NaN below a shallow leaf), path probability [N]) and, with
    return_fallback, a bool [N]: rows with none of the model's modalities, predicted from the learned prior.
    `model_dir` may also be a loaded model."""
    model = model_dir if hasattr(model_dir, "predict_arrays") else load_model(model_dir)
    check_inputs(features, available, model.modalities)
    for m in model.modalities:
        if features[m].shape[1] != model.dims[m]:
            raise ValueError(f"{m}: model expects {model.dims[m]}-d vectors, got {features[m].shape[1]}-d")
    avail = {m: np.asarray(available[m], bool) for m in model.modalities}
    out = model.predict_arrays({m: features[m] for m in model.modalities}, avail)
    return (*out, model.fallback(avail)) if return_fallback else out


# ---- plots logged with each run ------------------------------------------------------------------------------

def confusion_plots(name: str, true: list, pred: list, depth: int, out_dir) -> list[Path]:
    """One row-normalised confusion matrix PNG per taxonomy level (rows = labels known to that level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    out = []
    for lvl in range(depth):
        pairs = [(" > ".join(t[:lvl + 1]), " > ".join(p[:lvl + 1]) if len(p) > lvl else "(stops above)")
                 for t, p in zip(true, pred) if len(t) > lvl]
        if not pairs:
            continue
        names = sorted({a for a, _ in pairs} | {b for _, b in pairs})
        cm = confusion_matrix([a for a, _ in pairs], [b for _, b in pairs], labels=names, normalize="true")
        side = min(3 + 0.22 * len(names), 24)
        fig, ax = plt.subplots(figsize=(side, side))
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        font = 7 if len(names) < 40 else 5
        ax.set_xticks(range(len(names)), [n.split(" > ")[-1] for n in names], rotation=90, fontsize=font)
        ax.set_yticks(range(len(names)), [n.split(" > ")[-1] for n in names], fontsize=font)
        ax.set_xlabel("predicted"), ax.set_ylabel("label")
        ax.set_title(f"{name}: level {lvl + 1} (test, row-normalised)")
        fig.tight_layout()
        path = Path(out_dir) / f"confusion_L{lvl + 1}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out
