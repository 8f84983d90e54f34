"""Stage 1 of two-stage inference: a cheap hierarchical classifier over the lexical view only, calibrated.

The model is the hierarchical masked classifier of models/configs/strategies/stage1.yaml trained on the lexical
features alone (features.lexical_features), so classifying a product costs a few sparse transforms and a small MLP.
Its per-level temperatures are fitted on validation (calibration.calibrate) and kept beside it.

Files in <work>/models/stage1/: the model (model.safetensors, model.json with its manifest, metrics.json) and
calibration.json (temperatures, NLL/ECE before and after). routing.json (routing.py) is written there later and
removed whenever stage 1 is retrained: a threshold belongs to the model it was chosen for.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines.inference.calibration import Stage, calibrate

STAGE1 = "stage1"


def stage1_config() -> dict:
    from pipelines.classify.train import strategy_config

    return strategy_config(STAGE1)


def stage1_dir(settings) -> Path:
    return Path(settings.work_dir) / "models" / STAGE1


def train_stage1(features: dict, available: dict, labels: list, split, taxonomy, settings, platforms=None,
                 max_epochs: int | None = None) -> dict:
    """Train stage 1 on the lexical view into <work>/models/stage1, calibrate it on validation, write
    calibration.json; -> summary. The manifest records the lexical space the features came from."""
    from pipelines.classify.manifest import feature_provenance
    from pipelines.classify.train import load_model, train_classifier
    from pipelines.files import atomic_write_text

    cfg = stage1_config()
    out_dir = settings.work("models", STAGE1)
    (out_dir / "routing.json").unlink(missing_ok=True)  # a threshold belongs to the model it was chosen for
    res = train_classifier(cfg, features, available, labels, split, taxonomy, out_dir, max_epochs=max_epochs,
                           platforms=platforms, seed=settings.seed,
                           provenance=feature_provenance(settings, cfg["modalities"]))
    model = load_model(res.model_dir)
    val = np.flatnonzero(np.asarray(split) == "val")
    cal = calibrate(model, {m: features[m][val] for m in model.modalities},
                    {m: available[m][val] for m in model.modalities}, [labels[i] for i in val])
    atomic_write_text(Path(res.model_dir) / "calibration.json", json.dumps(cal, indent=2))
    return {"model_dir": str(res.model_dir), "val": res.val, "test": res.test, "calibration": cal,
            "train_seconds": res.train_seconds, "run_id": res.run_id, "per_platform": res.per_platform}


def load_stage1(model_dir) -> Stage:
    """The calibrated stage-1 model of `model_dir` (its model files + calibration.json), every file validated
    (model_files.BadModelFile / files.BadJSONFile name the one that is wrong)."""
    from pipelines.classify.model_files import read_calibration
    from pipelines.classify.train import load_model

    model_dir = Path(model_dir)
    if not (model_dir / "calibration.json").exists():
        raise FileNotFoundError(f"no calibrated stage-1 model in {model_dir}: materialise `stage1_model` "
                                "(prodcat run) first")
    model = load_model(model_dir)
    return Stage(model, read_calibration(model_dir, model.hierarchy.depth))
