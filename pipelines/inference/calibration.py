"""Calibrated confidences for a hierarchical classifier: per-level temperatures, decoding, and abstention.

A stage's raw per-level logits are temperature-scaled, one temperature per level fitted by teacher-forced NLL on
validation, so the path probability that routes a product to stage 2 and the per-level confidences that make it
abstain mean what they say. Abstention: where a level's confidence (calibrated, conditional on the parent) is below
its threshold, the path is cut back to the last confident ancestor and flagged for review.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Prediction:
    paths: list  # best valid leaf path per row (tuples)
    conf: np.ndarray  # [N, depth] calibrated p(node | parent) along the path, NaN below a shallow leaf
    prob: np.ndarray  # [N] calibrated path probability (the routing score)
    alternatives: list | None = None  # per row [(path, calibrated path probability)], the runners-up, best first


def level_logits(model, features: dict, available: dict, batch_size: int = 4096) -> list:
    """Raw per-level logits (torch tensors [N, n_level_nodes]) of a hierarchical classifier."""
    import torch

    model.eval()
    n = len(available[model.modalities[0]])
    parts = []
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            xb = {m: torch.from_numpy(np.ascontiguousarray(features[m][s:s + batch_size], np.float32))
                  for m in model.modalities}
            ab = {m: torch.from_numpy(np.asarray(available[m][s:s + batch_size], bool)) for m in model.modalities}
            parts.append(model(xb, ab))
    if not parts:
        return [torch.zeros((0, k)) for k in model.hierarchy.sizes]
    return [torch.cat([p[lvl] for p in parts]) for lvl in range(model.hierarchy.depth)]


ALTERNATIVES = 2  # runners-up kept per prediction (the review page shows them)


def decode(model, logits: list, temperatures) -> Prediction:
    import torch

    h = model.hierarchy
    if not len(logits[0]):
        return Prediction([], np.zeros((0, h.depth), np.float32), np.zeros(0, np.float32), [])
    with torch.inference_mode():
        scaled = [z / float(t) for z, t in zip(logits, temperatures)]
        best, conf, prob = h.decode(scaled)
        alt_idx, alt_prob = h.runners_up(scaled, ALTERNATIVES)
    alternatives = [[(h.leaves[i], round(float(p), 4)) for i, p in zip(row_i, row_p)]
                    for row_i, row_p in zip(alt_idx.tolist(), alt_prob.tolist())]
    return Prediction([h.leaves[i] for i in best.tolist()], conf.numpy(), prob.numpy(), alternatives)


def _level_nll(hierarchy, logits: list, labels_idx, lvl: int, temperature: float) -> tuple[float, int]:
    import torch

    y = torch.as_tensor(labels_idx[:, lvl])
    has = y >= 0
    if not bool(has.any()):
        return 0.0, 0
    scaled = [z / (temperature if i == lvl else 1.0) for i, z in enumerate(logits)]
    cond = hierarchy.conditional_log_probs(scaled)[lvl]
    return float(-cond[has].gather(1, y[has][:, None]).sum()), int(has.sum())


def teacher_forced_nll(hierarchy, logits: list, labels_idx: np.ndarray, temperatures) -> float:
    """Mean -log p(true node | true parent) over every labelled level of every row."""
    total = count = 0
    for lvl, t in enumerate(temperatures):
        s, c = _level_nll(hierarchy, logits, labels_idx, lvl, t)
        total, count = total + s, count + c
    return total / max(count, 1)


def fit_temperatures(hierarchy, logits: list, labels_idx: np.ndarray) -> list[float]:
    """One temperature per level minimising that level's teacher-forced NLL (levels are independent: each
    conditional softmax reads only its own level's logits). T=1 is inside the search range, so NLL never rises."""
    from scipy.optimize import minimize_scalar

    temps = []
    for lvl in range(hierarchy.depth):
        if not (labels_idx[:, lvl] >= 0).any():
            temps.append(1.0)
            continue
        res = minimize_scalar(lambda log_t: _level_nll(hierarchy, logits, labels_idx, lvl, float(np.exp(log_t)))[0],
                              bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-3})
        best = float(np.exp(res.x))
        # keep T=1 unless the fit is really better (bounded search may stop at a flat edge)
        at_one = _level_nll(hierarchy, logits, labels_idx, lvl, 1.0)[0]
        temps.append(best if res.fun < at_one else 1.0)
    return temps


def label_depth_confidence(pred: Prediction, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the predicted prefix at the label's depth, whether that prefix equals the label)."""
    conf = np.array([float(np.prod(np.nan_to_num(c[:len(t)], nan=1.0))) for c, t in zip(pred.conf, labels)])
    correct = np.array([tuple(p[:len(t)]) == tuple(t) for p, t in zip(pred.paths, labels)])
    return conf, correct


def calibration_report(model, logits, labels: list, temperatures) -> dict:
    from pipelines.classify.metrics import expected_calibration_error
    from pipelines.classify.train import label_indices

    idx = label_indices(model.hierarchy, labels)
    out = {}
    for name, temps in (("before", [1.0] * model.hierarchy.depth), ("after", temperatures)):
        conf, correct = label_depth_confidence(decode(model, logits, temps), labels)
        out[f"nll_{name}"] = teacher_forced_nll(model.hierarchy, logits, idx, temps)
        out[f"ece_{name}"] = expected_calibration_error(conf, correct)
    return out


def calibrate(model, features: dict, available: dict, labels: list) -> dict:
    """Temperatures fitted on these (validation) rows + NLL/ECE before and after."""
    from pipelines.classify.train import label_indices

    logits = level_logits(model, features, available)
    temps = fit_temperatures(model.hierarchy, logits, label_indices(model.hierarchy, labels))
    return {"temperatures": temps, **calibration_report(model, logits, labels, temps), "n": len(labels)}


@dataclass
class Stage:
    """A loaded classifier with its temperatures: predict() gives calibrated paths, confidences and scores."""

    model: object
    temperatures: list

    @property
    def modalities(self) -> list:
        return list(self.model.modalities)

    def predict(self, features: dict, available: dict) -> Prediction:
        return decode(self.model, level_logits(self.model, features, available), self.temperatures)


def weights_sha(model_dir) -> str:
    """What routing.json keys stage 2's temperatures by: they belong to these weights only."""
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


def abstain(paths: list, conf: np.ndarray, thresholds) -> tuple[list, np.ndarray]:
    """Cut each path before its first level whose confidence is below that level's threshold (the last confident
    ancestor; the root, i.e. an empty path, when even level 1 is unsure) and flag it for review."""
    if not len(conf):
        return [tuple(p) for p in paths], np.zeros(0, bool)
    thr = np.asarray(thresholds, np.float64)[:conf.shape[1]]
    unsure = np.nan_to_num(np.asarray(conf, np.float64), nan=1.0) < thr[None, :]
    review = unsure.any(1)
    first = unsure.argmax(1)
    cut = [tuple(p)[:int(first[i])] if review[i] else tuple(p) for i, p in enumerate(paths)]
    return cut, review
