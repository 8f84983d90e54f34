"""Train, save, load and evaluate hierarchical classifiers and the baselines; MLflow tracking and the `champion` alias.

A model directory holds model.safetensors (weights), model.json (strategy config, input dims, the taxonomy node
list and depth it was trained on), metrics.json, and the test predictions (test_rows.npy, test_predictions.json).
No pickles, no Lightning checkpoints: the best epoch's weights are kept in memory and written once.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

STRATEGY_DIR = Path(__file__).resolve().parents[1] / "models" / "configs" / "strategies"
STRATEGIES = ["text", "image", "joint", "early", "late", "attention"]
REGISTERED_MODEL = "prodcat-classifier"
EXPERIMENT = "prodcat"


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


def train_classifier(strategy, features: dict, available: dict, labels: list, split: np.ndarray, taxonomy,
                     out_dir, seed: int = 0, max_epochs: int | None = None, mlflow_tracking_uri: str | None = None,
                     platforms=None) -> TrainResult:
    """Fit on split=='train', early-stop on 'val' (config `monitor`: val_hF1 or val_loss), save the best epoch,
    report val and test metrics (overall, and per platform when `platforms` is given). With a tracking URI the
    run is logged to MLflow (params, metrics, confusion plots, model files) and its id is in result.run_id."""
    import lightning as L
    import torch

    from models.classifier import EmbeddingData, HierarchicalClassifier
    from pipelines.features.encoders import configure_threads

    configure_threads()
    cfg = strategy_config(strategy)
    n = check_inputs(features, available, cfg["modalities"])
    split = np.asarray(split)
    if len(labels) != n or len(split) != n:
        raise ValueError(f"{n} feature rows but {len(labels)} labels and {len(split)} split values")
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
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(keep.state)
    model = model.cpu().eval()
    out = save_model(model, out_dir)

    result = TrainResult(out, cfg["name"], {}, {}, train_seconds, 0.0, trainer.current_epoch, best_epoch=keep.epoch)
    for name in ("val", "test"):
        rows = np.flatnonzero(split == name)
        x = {m: features[m][rows] for m in cfg["modalities"]}
        av = {m: np.asarray(available[m][rows], bool) for m in cfg["modalities"]}
        t1 = time.perf_counter()
        paths, conf, prob = model.predict_arrays(x, av)
        ms = 1000 * (time.perf_counter() - t1) / max(len(rows), 1)
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
            np.save(out / "test_rows.npy", rows)
            (out / "test_predictions.json").write_text(json.dumps([list(p) for p in paths]))
    (out / "metrics.json").write_text(json.dumps({"val": result.val, "test": result.test,
                                                  "per_platform": result.per_platform,
                                                  "train_seconds": train_seconds,
                                                  "infer_ms_per_item": result.infer_ms_per_item,
                                                  "epochs": result.epochs, "best_epoch": result.best_epoch},
                                                 indent=2))
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


def save_model(model, out_dir) -> Path:
    """Weights as safetensors + config JSON with the taxonomy the model was trained on (no pickles)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    (out / "model.json").write_text(json.dumps({"cfg": model.cfg, "dims": model.dims,
                                                "nodes": [list(n) for lvl in model.hierarchy.level_nodes
                                                          for n in lvl],
                                                "depth": model.hierarchy.depth}, indent=2))
    return out


def load_model(model_dir):
    from safetensors.torch import load_file

    from models.classifier import HierarchicalClassifier

    model_dir = Path(model_dir)
    if not (model_dir / "model.json").exists():
        raise FileNotFoundError(f"{model_dir} holds no prodcat model (model.json missing)")
    meta = json.loads((model_dir / "model.json").read_text())
    model = HierarchicalClassifier(meta["cfg"], meta["dims"], meta["nodes"], meta["depth"])
    model.load_state_dict(load_file(model_dir / "model.safetensors"))
    return model.eval()


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


# ---- baselines -------------------------------------------------------------------------------------------------

def train_baselines(titles: list[str], features: dict, available: dict, labels: list, split: np.ndarray, taxonomy,
                    seed: int = 0, platforms=None, mlflow_tracking_uri: str | None = None,
                    modalities=("text", "image", "joint"), out_dir=None) -> dict:
    """Both baselines on the same split: TF-IDF + LinearSVC on `titles`, HiClass LCPPN + LR on the concatenated
    available `modalities`. -> {name: {val, test, per_platform, train_seconds, infer_ms_per_item, run_id}}."""
    from pipelines.classify.baselines import concat_available, hiclass_lcppn, tfidf_svm

    split = np.asarray(split)
    modalities = [m for m in modalities if m in features]
    x = concat_available(features, available, modalities)
    fits = {"baseline_tfidf_svm": lambda: tfidf_svm(list(titles), labels, split, seed),
            "baseline_hiclass_lcppn": lambda: hiclass_lcppn(x, labels, split, taxonomy.depth, seed)}
    out = {}
    for name, fit in fits.items():
        _, seconds, predict_rows = fit()
        row = {"train_seconds": seconds, "run_id": ""}
        for s in ("val", "test"):
            rows = np.flatnonzero(split == s)
            t0 = time.perf_counter()
            pred = predict_rows(rows)
            if s == "test":
                row["infer_ms_per_item"] = 1000 * (time.perf_counter() - t0) / max(len(rows), 1)
                row["per_platform"] = ({} if platforms is None else
                                       per_platform(labels, pred, None, rows, platforms, taxonomy))
                row["test_rows"], row["test_paths"] = rows, pred
            row[s] = _metrics([labels[i] for i in rows], pred, None, taxonomy)
        if out_dir is not None:
            d = Path(out_dir) / name
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / "test_rows.npy", row["test_rows"])
            (d / "test_predictions.json").write_text(json.dumps([list(p) for p in row["test_paths"]]))
        if mlflow_tracking_uri:
            params = {"name": name, "seed": seed, "modalities": modalities if "hiclass" in name else ["titles"]}
            row["run_id"] = _log(name, params, row, labels, taxonomy, mlflow_tracking_uri)
        out[name] = row
    return out


# ---- MLflow ----------------------------------------------------------------------------------------------------

def tracking_uri() -> str:
    from pipelines.settings import work_dir

    # one registry per data root: a sample model must never become the benchmark's champion
    work_dir().mkdir(parents=True, exist_ok=True)
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{work_dir() / 'mlruns.db'}")


def _artifact_root(uri: str) -> Path:
    """Artifacts next to a sqlite store (sqlite:///<dir>/x.db -> <dir>/mlartifacts), else in the work dir."""
    from pipelines.settings import work_dir

    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
    return work_dir() / "mlartifacts"


def _use(uri: str | None, experiment: str = EXPERIMENT):
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(_artifact_root(uri) / experiment).as_uri())
    mlflow.set_experiment(experiment)
    return mlflow


def _log(name: str, params: dict, row: dict, labels, taxonomy, uri, model_dir: Path | None = None) -> str:
    import tempfile

    mlflow = _use(uri)
    with mlflow.start_run(run_name=name) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({k: v for k, v in params.items() if not isinstance(v, (list, dict))} |
                          {"modalities": ",".join(params.get("modalities", []))})
        for prefix in ("val", "test"):
            mlflow.log_metrics({f"{prefix}_{k}": float(v) for k, v in row.get(prefix, {}).items()
                                if isinstance(v, (int, float)) and np.isfinite(v)})
        mlflow.log_metrics({k: float(row[k]) for k in ("train_seconds", "infer_ms_per_item") if k in row})
        for p, m in row.get("per_platform", {}).items():
            mlflow.log_metrics({f"test_{p}_hF1": float(m["hF1"])} if m else {})
        if taxonomy is not None and labels is not None and len(row.get("test_rows", [])):
            plot_dir = model_dir or Path(tmp)
            for png in confusion_plots(name, [labels[i] for i in row["test_rows"]], row["test_paths"],
                                       taxonomy.depth, plot_dir):
                mlflow.log_artifact(str(png), "plots")
        if model_dir is not None:
            mlflow.log_artifacts(str(model_dir), "model")
        return run.info.run_id


def log_run(result: TrainResult, params: dict, experiment: str = EXPERIMENT, taxonomy=None, labels=None,
            split=None, tracking_uri: str | None = None) -> str:
    """Params, metrics, per-level confusion plots and the model files, in one MLflow run. -> run id."""
    row = {"val": result.val, "test": result.test, "per_platform": result.per_platform,
           "train_seconds": result.train_seconds, "infer_ms_per_item": result.infer_ms_per_item,
           "test_rows": result.test_rows, "test_paths": result.test_paths}
    if not len(row["test_rows"]) and (result.model_dir / "test_rows.npy").exists():  # a result read back from disk
        row["test_rows"] = np.load(result.model_dir / "test_rows.npy")
        row["test_paths"] = [tuple(p) for p in json.loads((result.model_dir / "test_predictions.json").read_text())]
    result.run_id = _log(result.strategy, params | {"best_epoch": result.best_epoch, "epochs": result.epochs},
                         row, labels, taxonomy, tracking_uri, model_dir=result.model_dir)
    return result.run_id


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


def register_champion(run_id: str, val_hf1: float, tracking_uri: str | None = None) -> bool:
    """Register the run's model as a new version of `prodcat-classifier`; move alias `champion` to it only if its
    val hF1 beats the current champion's (registry aliases, not stages). The decision and both scores are recorded
    as tags on the new version and on its run (`champion_decision`). -> whether it became champion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    _use(tracking_uri)
    client = MlflowClient()
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except MlflowException:
        pass  # already registered
    source = f"{client.get_run(run_id).info.artifact_uri}/model"  # plain files (safetensors + json), not a flavor
    version = client.create_model_version(REGISTERED_MODEL, source, run_id=run_id)
    client.set_model_version_tag(REGISTERED_MODEL, version.version, "val_hF1", f"{val_hf1:.6f}")
    try:
        current = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
        best, holder = float(current.tags.get("val_hF1", "-1")), f"version {current.version}"
    except MlflowException:
        best, holder = -1.0, "none"
    promoted = val_hf1 > best
    decision = (f"promoted: val_hF1 {val_hf1:.6f}, no champion yet" if holder == "none" else
                f"{'promoted' if promoted else 'not promoted'}: val_hF1 {val_hf1:.6f} "
                f"{'>' if promoted else '<='} champion {holder} {best:.6f}")
    client.set_model_version_tag(REGISTERED_MODEL, version.version, "champion_decision", decision)
    client.set_tag(run_id, "champion_decision", decision)
    if promoted:
        client.set_registered_model_alias(REGISTERED_MODEL, "champion", version.version)
    return promoted


def champion_dir(dst: Path | None = None, tracking_uri: str | None = None) -> Path:
    """Local copy of the registered `champion` model's files."""
    mlflow = _use(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}@champion",
                                                   dst_path=str(dst) if dst else None))
