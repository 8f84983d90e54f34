"""Train, save, load and evaluate hierarchical classifiers; MLflow tracking and the `champion` alias."""
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


def _tensors(features, available, labels_idx, rows, modalities):
    import torch

    xs = [torch.from_numpy(np.ascontiguousarray(features[m][rows])) for m in modalities]
    av = [torch.from_numpy(np.ascontiguousarray(available[m][rows])) for m in modalities]
    return torch.utils.data.TensorDataset(*xs, *av, torch.from_numpy(labels_idx[rows]))


def train_classifier(strategy, features: dict, available: dict, labels: list, split: np.ndarray, taxonomy,
                     out_dir, seed: int = 0, max_epochs: int | None = None, platforms=None) -> TrainResult:
    """Fit on split=='train', early-stop on 'val', report val and test metrics (overall and per platform)."""
    import lightning as L
    import torch

    from models.classifier import HierarchicalClassifier
    from pipelines.encoders import configure_threads

    configure_threads()
    cfg = strategy_config(strategy)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    dims = {m: int(features[m].shape[1]) for m in cfg["modalities"]}
    model = HierarchicalClassifier(cfg, dims, [list(n) for n in taxonomy.nodes], taxonomy.depth)
    labels_idx = np.array([model.hierarchy.encode(p) for p in labels], dtype=np.int64)
    split = np.asarray(split)
    train_rows, val_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    gen = torch.Generator().manual_seed(seed)
    train_dl = torch.utils.data.DataLoader(_tensors(features, available, labels_idx, train_rows, cfg["modalities"]),
                                           batch_size=cfg["batch_size"], shuffle=True, generator=gen)
    val_dl = torch.utils.data.DataLoader(_tensors(features, available, labels_idx, val_rows, cfg["modalities"]),
                                         batch_size=4096)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stop = L.pytorch.callbacks.EarlyStopping("val_loss", patience=cfg["patience"], mode="min")
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=out / "ckpt", monitor="val_loss", mode="min", save_top_k=1,
                                               save_weights_only=True, filename="best")
    trainer = L.Trainer(max_epochs=max_epochs or cfg["epochs"], accelerator="auto", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[stop, best],
                        deterministic="warn")
    t0 = time.perf_counter()
    trainer.fit(model, train_dl, val_dl)
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(torch.load(best.best_model_path, weights_only=True)["state_dict"])
    save_model(model, out)
    for f in (out / "ckpt").glob("*"):
        f.unlink()
    (out / "ckpt").rmdir()

    result = TrainResult(out, cfg["name"], {}, {}, train_seconds, 0.0, trainer.current_epoch)
    for name in ("val", "test"):
        rows = np.flatnonzero(split == name)
        t1 = time.perf_counter()
        paths, conf, prob = model.predict_arrays({m: features[m][rows] for m in cfg["modalities"]},
                                                 {m: available[m][rows] for m in cfg["modalities"]})
        if name == "test":
            result.infer_ms_per_item = 1000 * (time.perf_counter() - t1) / max(len(rows), 1)
        metrics = _metrics([labels[i] for i in rows], paths, prob, taxonomy)
        setattr(result, name, metrics)
        if name == "test" and platforms is not None:
            plat = np.asarray(platforms)[rows]
            result.per_platform = {p: _metrics([labels[i] for i in rows[plat == p]],
                                               [paths[j] for j in np.flatnonzero(plat == p)], prob[plat == p],
                                               taxonomy) for p in sorted(set(plat))}
        if name == "test":
            np.save(out / "test_rows.npy", rows)
            (out / "test_predictions.json").write_text(json.dumps([list(p) for p in paths]))
    (out / "metrics.json").write_text(json.dumps({"val": result.val, "test": result.test,
                                                  "per_platform": result.per_platform,
                                                  "train_seconds": train_seconds,
                                                  "infer_ms_per_item": result.infer_ms_per_item,
                                                  "epochs": result.epochs}, indent=2))
    return result


def _metrics(true, pred, prob, taxonomy) -> dict:
    from pipelines.metrics import evaluate

    return evaluate(true, pred, taxonomy, confidence=prob) if len(true) else {}


def save_model(model, out_dir) -> Path:
    """Weights as safetensors + config JSON with the taxonomy the model was trained on (no pickles)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
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


def predict(model_dir, features: dict, available: dict):
    """-> (paths, per-level confidence [N, depth], path probability [N])."""
    model = load_model(model_dir) if not hasattr(model_dir, "predict_arrays") else model_dir
    return model.predict_arrays({m: features[m] for m in model.modalities},
                                {m: available[m] for m in model.modalities})


# ---- MLflow ----------------------------------------------------------------------------------------------------

def tracking_uri() -> str:
    from pipelines.config import work_dir

    # one registry per data root: a sample model must never become the benchmark's champion
    work_dir().mkdir(parents=True, exist_ok=True)
    return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{work_dir() / 'mlruns.db'}")


def log_run(result: TrainResult, params: dict, experiment: str = "prodcat", taxonomy=None, labels=None,
            split=None) -> str:
    """Params, metrics, per-level confusion plots and the model files, in one MLflow run."""
    import mlflow

    from pipelines.config import work_dir

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(work_dir() / "mlartifacts" / experiment).as_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=result.strategy) as run:
        mlflow.log_params({k: v for k, v in params.items() if not isinstance(v, (list, dict))} |
                          {"modalities": ",".join(params.get("modalities", []))})
        for prefix, metrics in (("val", result.val), ("test", result.test)):
            mlflow.log_metrics({f"{prefix}_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))
                                and np.isfinite(v)})
        mlflow.log_metrics({"train_seconds": result.train_seconds, "infer_ms_per_item": result.infer_ms_per_item})
        if taxonomy is not None and labels is not None:
            for png in confusion_plots(result, labels, taxonomy):
                mlflow.log_artifact(str(png), "plots")
        mlflow.log_artifacts(str(result.model_dir), "model")
        result.run_id = run.info.run_id
    return result.run_id


def confusion_plots(result: TrainResult, labels: list, taxonomy) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    rows = np.load(result.model_dir / "test_rows.npy")
    preds = json.loads((result.model_dir / "test_predictions.json").read_text())
    out = []
    for lvl in range(min(2, taxonomy.depth)):  # level 3 has 80+ classes: unreadable as a picture
        pairs = [(" > ".join(labels[i][:lvl + 1]), " > ".join(p[:lvl + 1])) for i, p in zip(rows, preds)
                 if len(labels[i]) > lvl]
        names = sorted({a for a, _ in pairs} | {b for _, b in pairs})
        cm = confusion_matrix([a for a, _ in pairs], [b for _, b in pairs], labels=names, normalize="true")
        fig, ax = plt.subplots(figsize=(3 + 0.3 * len(names), 2.5 + 0.3 * len(names)))
        ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), [n.split(" > ")[-1] for n in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), [n.split(" > ")[-1] for n in names], fontsize=7)
        ax.set_title(f"{result.strategy}: level {lvl + 1} (test, row-normalised)")
        fig.tight_layout()
        path = result.model_dir / f"confusion_L{lvl + 1}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def register_champion(run_id: str, val_hf1: float) -> bool:
    """Register the run's model; move alias `champion` to it only if it beats the current champion's val hF1."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    try:
        client.create_registered_model(REGISTERED_MODEL)
    except mlflow.exceptions.MlflowException:
        pass  # already registered
    source = f"{client.get_run(run_id).info.artifact_uri}/model"  # plain files (safetensors + json), not a flavor
    version = client.create_model_version(REGISTERED_MODEL, source, run_id=run_id)
    client.set_model_version_tag(REGISTERED_MODEL, version.version, "val_hF1", f"{val_hf1:.6f}")
    try:
        current = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
        best = float(current.tags.get("val_hF1", "-1"))
    except mlflow.exceptions.MlflowException:
        best = -1.0
    if val_hf1 > best:
        client.set_registered_model_alias(REGISTERED_MODEL, "champion", version.version)
        return True
    return False


def champion_dir(dst: Path | None = None) -> Path:
    """Local copy of the registered `champion` model's files."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}@champion",
                                                   dst_path=str(dst) if dst else None))
