"""Two-stage inference: a cheap lexical stage 1, the multimodal champion as stage 2, confidence routing, abstention.

Stage 1 is a hierarchical masked classifier (models/configs/strategies/stage1.yaml) over the lexical view only
(pipelines/features/lexical.py: TF-IDF SVD + stacked LinearSVC scores from title/description), so a product costs a few
sparse transforms and a small MLP: no MiniLM, no image decoding. Its per-level logits are temperature-scaled
(one temperature per level, fitted by NLL on validation). Products whose calibrated path probability is below the
routing threshold go to stage 2, the registered `champion`, whose text/image/joint features are computed only for
them, through the content-addressed embedding cache and the joint heads saved by the embedding assets.

Abstention: every prediction carries per-level confidences (calibrated, conditional on the parent); where a level
is below its threshold (config `abstain`) the path is cut back to the last confident ancestor and needs_review set.

Files in <work>/models/stage1/: the model (model.safetensors, model.json, metrics.json), calibration.json
(stage-1 temperatures, NLL/ECE before and after) and routing.json (threshold, its target, the validation routed
share and hF1, stage-2 temperatures keyed by the stage-2 weights' sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

STAGE1 = "stage1"
MODES = ("routed", "stage1", "stage2")
CHUNK = 2048  # products per classify step in batch mode (bounds memory; one progress-bar tick)


def stage1_config() -> dict:
    from pipelines.classify.train import strategy_config

    return strategy_config(STAGE1)


def stage1_dir(work=None) -> Path:
    from pipelines.settings import work_dir

    return Path(work or work_dir()) / "models" / STAGE1


# ---- features -------------------------------------------------------------------------------------------------

def product_texts(titles, descriptions) -> list[str]:
    from pipelines.features.store import text_of

    return [text_of(t, d) for t, d in zip(titles, descriptions)]


def load_lexical(work) -> dict:
    from pipelines.features import lexical

    path = Path(work) / "lexical_space"
    if not (path / "lexical.skops").exists():
        raise FileNotFoundError(f"{path}/lexical.skops missing: materialise the embedding assets first (prodcat run)")
    return lexical.load(path)


def lexical_features(space: dict, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[TF-IDF SVD | lexical expert scores] per text, as the lexical_embeddings asset computes them for non-train
    rows; ok = the text is not empty."""
    from pipelines.features import lexical

    if not texts:
        return np.zeros((0, 0), np.float32), np.zeros(0, bool)
    matrix = np.concatenate([lexical.transform(space["svd"], texts), lexical.expert_scores(space["expert"], texts)], 1)
    return matrix, np.array([bool(t.strip()) for t in texts])


class Stage2Features:
    """Text, image and joint vectors for the products stage 2 sees, through the embedding cache; encoders and the
    joint heads are loaded once."""

    def __init__(self, work, encoders: dict, store=None, modalities=("text", "image", "joint")):
        from models.alignment import load_heads
        from pipelines.features.store import open_store
        from pipelines.features.encoders import load_encoder

        work = Path(work)
        self.modalities = set(modalities)
        need_text = bool(self.modalities & {"text", "joint"})
        need_image = bool(self.modalities & {"image", "joint"})
        store = Path(store or work / "store")
        self.text_encoder = load_encoder(encoders["text"]) if need_text else None
        self.image_encoder = load_encoder(encoders["image"]) if need_image else None
        self.text_store = open_store(store, self.text_encoder) if need_text else None
        self.image_store = open_store(store, self.image_encoder) if need_image else None
        self.heads = load_heads(work / "joint_space") if "joint" in self.modalities else None

    def __call__(self, texts: list[str], image_paths: list, num_workers: int | None = 0) -> tuple[dict, dict]:
        from models.alignment import joint_embed
        from pipelines.features.store import embed_images, embed_texts

        features, available = {}, {}
        if self.text_encoder is not None:
            t = embed_texts(texts, self.text_encoder, self.text_store)
            features["text"], available["text"] = np.nan_to_num(t.vectors), t.ok
        if self.image_encoder is not None:
            i = embed_images(image_paths, self.image_encoder, self.image_store, num_workers=num_workers)
            features["image"], available["image"] = np.nan_to_num(i.vectors), i.ok
        if self.heads is not None:
            j = joint_embed(self.heads, features["text"], features["image"], available["image"])
            features["joint"], available["joint"] = np.nan_to_num(j), available["text"].copy()
        return features, available


# ---- calibrated stages ----------------------------------------------------------------------------------------

@dataclass
class Prediction:
    paths: list  # best valid leaf path per row (tuples)
    conf: np.ndarray  # [N, depth] calibrated p(node | parent) along the path, NaN below a shallow leaf
    prob: np.ndarray  # [N] calibrated path probability (the routing score)


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


def decode(model, logits: list, temperatures) -> Prediction:
    import torch

    h = model.hierarchy
    if not len(logits[0]):
        return Prediction([], np.zeros((0, h.depth), np.float32), np.zeros(0, np.float32))
    with torch.inference_mode():
        best, conf, prob = h.decode([z / float(t) for z, t in zip(logits, temperatures)])
    return Prediction([h.leaves[i] for i in best.tolist()], conf.numpy(), prob.numpy())


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
    model: object
    temperatures: list

    @property
    def modalities(self) -> list:
        return list(self.model.modalities)

    def predict(self, features: dict, available: dict) -> Prediction:
        return decode(self.model, level_logits(self.model, features, available), self.temperatures)


def weights_sha(model_dir) -> str:
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


# ---- stage-1 training ------------------------------------------------------------------------------------------

def train_stage1(features: dict, available: dict, labels: list, split, taxonomy, out_dir, platforms=None,
                 max_epochs: int | None = None, tracking_uri: str | None = None, seed: int = 0) -> dict:
    """Train stage 1 on the lexical view, calibrate it on validation, write calibration.json; -> summary."""
    from pipelines.classify.train import load_model, train_classifier

    cfg = stage1_config()
    (Path(out_dir) / "routing.json").unlink(missing_ok=True)  # a threshold belongs to the model it was chosen for
    res = train_classifier(cfg, features, available, labels, split, taxonomy, out_dir, max_epochs=max_epochs,
                           platforms=platforms, mlflow_tracking_uri=tracking_uri, seed=seed)
    model = load_model(res.model_dir)
    val = np.flatnonzero(np.asarray(split) == "val")
    cal = calibrate(model, {m: features[m][val] for m in model.modalities},
                    {m: available[m][val] for m in model.modalities}, [labels[i] for i in val])
    (Path(res.model_dir) / "calibration.json").write_text(json.dumps(cal, indent=2))
    return {"model_dir": str(res.model_dir), "val": res.val, "test": res.test, "calibration": cal,
            "train_seconds": res.train_seconds, "run_id": res.run_id, "per_platform": res.per_platform}


# ---- routing ---------------------------------------------------------------------------------------------------

def hf1_counts(true: list, pred: list) -> np.ndarray:
    """Per row (overlap, |pred|, |true|) of Kiritchenko hF1, prediction read at the label's depth (as
    pipelines.classify.metrics.hierarchical_prf(truncate=True)); node identity is the full path, so overlap = common prefix."""
    out = np.zeros((len(true), 3), np.int64)
    for i, (t, p) in enumerate(zip(true, pred)):
        t, p = tuple(t), tuple(p)[:len(t)]
        common = 0
        while common < len(p) and p[common] == t[common]:
            common += 1
        out[i] = common, len(p), len(t)
    return out


def hf1(counts: np.ndarray) -> float:
    overlap, n_pred, n_true = counts.sum(0) if counts.ndim == 2 else counts
    hp, hr = overlap / max(n_pred, 1), overlap / max(n_true, 1)
    return float(2 * hp * hr / (hp + hr)) if hp + hr else 0.0


def routed_counts(prob1: np.ndarray, counts1: np.ndarray, counts2: np.ndarray, threshold: float) -> np.ndarray:
    routed = np.asarray(prob1) < threshold
    return np.where(routed[:, None], counts2, counts1)


def candidate_thresholds(prob1: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores, plus 0 (route nothing) and just above 1 (route everything)."""
    u = np.unique(np.asarray(prob1, np.float64))
    return np.concatenate([[0.0], (u[:-1] + u[1:]) / 2 if len(u) > 1 else [], [1.0 + 1e-6]])


def choose_threshold(prob1, counts1, counts2, max_drop: float) -> dict:
    """The smallest routed share whose hF1 is within `max_drop` of stage 2 alone (routing everything always
    qualifies). Cumulative counts make every candidate O(1)."""
    prob1 = np.asarray(prob1, np.float64)
    order = np.argsort(prob1, kind="stable")
    gain = np.concatenate([np.zeros((1, 3), np.int64), np.cumsum(counts2[order] - counts1[order], 0)])
    base = counts1.sum(0)
    target = hf1(counts2) - max_drop
    sorted_prob = prob1[order]
    for thr in candidate_thresholds(prob1):
        k = int(np.searchsorted(sorted_prob, thr, side="left"))  # rows with prob < thr
        score = hf1(base + gain[k])
        if score >= target - 1e-12:
            return {"threshold": float(thr), "routed_share": k / max(len(prob1), 1), "hF1_routed": score,
                    "hF1_stage1": hf1(counts1), "hF1_stage2": hf1(counts2), "max_drop": max_drop, "n": len(prob1)}
    raise AssertionError("routing everything must reach stage 2's hF1")


def tradeoff(prob1, counts1, counts2, thresholds, ms1: float, ms2: float) -> list[dict]:
    """Per threshold: routed fraction, hF1, estimated ms/item = stage-1 cost + routed share x stage-2 cost."""
    rows = []
    for thr in sorted(set(float(t) for t in thresholds)):
        share = float(np.mean(np.asarray(prob1) < thr)) if len(prob1) else 0.0
        rows.append({"threshold": thr, "routed_share": share, "hF1": hf1(routed_counts(prob1, counts1, counts2, thr)),
                     "ms_per_item": ms1 + share * ms2})
    return rows


def abstain(paths: list, conf: np.ndarray, thresholds) -> tuple[list, np.ndarray]:
    """Cut each path before its first level whose confidence is below that level's threshold (the last confident
    ancestor; the root, i.e. an empty path, when even level 1 is unsure) and flag it for review."""
    thr = np.asarray(thresholds, np.float64)[:conf.shape[1]] if len(conf) else np.zeros(0)
    unsure = np.nan_to_num(np.asarray(conf, np.float64), nan=1.0) < thr[None, :] if len(conf) else np.zeros((0, 0), bool)
    review = unsure.any(1) if len(conf) else np.zeros(0, bool)
    first = unsure.argmax(1) if len(conf) else np.zeros(0, int)
    cut = [tuple(p)[:int(first[i])] if review[i] else tuple(p) for i, p in enumerate(paths)]
    return cut, review


def fit_routing(stage1_dir_, stage2_dir, features: dict, available: dict, labels: list, split, work,
                measure_items: int = 256, texts=None, image_paths=None) -> dict:
    """Calibrate stage 2 on validation, choose the routing threshold on validation, and sweep thresholds from
    all-stage-1 to all-stage-2 on test. Writes routing.json next to stage 1. `texts`/`image_paths` (catalogue
    rows) let it time both stages from raw text on a few test rows (cold cache) for the ms/item column."""
    from pipelines.classify.train import load_model

    s1_dir = Path(stage1_dir_)
    cfg = json.loads((s1_dir / "model.json").read_text())["cfg"]
    full_cfg = stage1_config() | {k: v for k, v in cfg.items() if k in ("routing", "abstain", "encoders")}
    stage1 = Stage(load_model(s1_dir), json.loads((s1_dir / "calibration.json").read_text())["temperatures"])
    model2 = load_model(stage2_dir)
    split = np.asarray(split)
    rows = {s: np.flatnonzero(split == s) for s in ("val", "test")}
    sub = {s: ({m: features[m][r] for m in features}, {m: available[m][r] for m in available}) for s, r in rows.items()}
    cal2 = calibrate(model2, *sub["val"], [labels[i] for i in rows["val"]])
    stage2 = Stage(model2, cal2["temperatures"])
    preds = {(st, s): stage.predict(*sub[s]) for st, stage in (("1", stage1), ("2", stage2)) for s in rows}
    counts = {(st, s): hf1_counts([labels[i] for i in rows[s]], preds[(st, s)].paths) for st, s in preds}
    routing_cfg = full_cfg.get("routing", {})
    chosen = choose_threshold(preds[("1", "val")].prob, counts[("1", "val")], counts[("2", "val")],
                              float(routing_cfg.get("max_drop", 0.002)))
    ms1, ms2 = measure_costs(stage1, stage2, work, full_cfg, texts, image_paths, rows["test"], measure_items)
    val_prob = preds[("1", "val")].prob
    sweep = [0.0, 1.0 + 1e-6, chosen["threshold"], *np.quantile(val_prob, np.linspace(0.05, 0.95, 19))] \
        if len(val_prob) else [0.0, 1.0 + 1e-6]
    p1t, c1t, c2t = preds[("1", "test")].prob, counts[("1", "test")], counts[("2", "test")]
    test_at = {"routed_share": float(np.mean(p1t < chosen["threshold"])) if len(p1t) else 0.0,
               "hF1_routed": hf1(routed_counts(p1t, c1t, c2t, chosen["threshold"])),
               "hF1_stage1": hf1(c1t), "hF1_stage2": hf1(c2t), "n": len(p1t)}
    final = preds[("2", "test")]
    routed = p1t < chosen["threshold"]
    paths = [final.paths[i] if routed[i] else preds[("1", "test")].paths[i] for i in range(len(p1t))]
    conf = np.where(routed[:, None], final.conf, preds[("1", "test")].conf) if len(p1t) else final.conf
    cut, review = abstain(paths, conf, full_cfg.get("abstain", [0.0] * 3))
    kept = ~review
    test_labels = [labels[i] for i in rows["test"]]
    abst = {"review_share": float(review.mean()) if len(review) else 0.0,
            "hF1_not_flagged": hf1(hf1_counts([test_labels[i] for i in np.flatnonzero(kept)],
                                               [paths[i] for i in np.flatnonzero(kept)])),
            "hF1_flagged": hf1(hf1_counts([test_labels[i] for i in np.flatnonzero(review)],
                                           [paths[i] for i in np.flatnonzero(review)])),
            "thresholds": list(full_cfg.get("abstain", []))}
    routing = {"threshold": chosen["threshold"], "target": routing_cfg, "val": chosen, "test": test_at,
               "target_met_val": bool(chosen["routed_share"] <= float(routing_cfg.get("max_share", 1.0))),
               "stage2": {"weights_sha256": weights_sha(stage2_dir), "strategy": model2.cfg.get("name"),
                          "calibration": cal2},
               "ms_per_item": {"stage1": ms1, "stage2": ms2}, "abstention_test": abst,
               "tradeoff_test": tradeoff(p1t, c1t, c2t, sweep, ms1, ms2)}
    (s1_dir / "routing.json").write_text(json.dumps(routing, indent=2))
    return routing


def measure_costs(stage1: Stage, stage2: Stage, work, cfg: dict, texts, image_paths, rows, n: int) -> tuple:
    """ms/item of stage 1 (lexical features + model) and of stage 2's extra work (text/image embeddings in a
    fresh, cold cache + joint projection + model) on up to n rows. Loading encoders is not counted (once per
    process)."""
    import tempfile

    if texts is None or not len(rows) or not n:
        return float("nan"), float("nan")
    pick = np.asarray(rows)[:n]
    t_texts = [texts[i] for i in pick]
    t_images = [image_paths[i] for i in pick] if image_paths is not None else [None] * len(pick)
    space = load_lexical(work)
    t0 = time.perf_counter()
    lex, ok = lexical_features(space, t_texts)
    stage1.predict({"lexical": lex}, {"lexical": ok})
    ms1 = 1000 * (time.perf_counter() - t0) / len(pick)
    with tempfile.TemporaryDirectory() as store:
        feats = Stage2Features(work, cfg.get("encoders", {}), store=store, modalities=stage2.modalities)
        t0 = time.perf_counter()
        f, a = feats(t_texts, t_images)
        f["lexical"], a["lexical"] = lex, ok
        stage2.predict(f, a)
        ms2 = 1000 * (time.perf_counter() - t0) / len(pick)
    return ms1, ms2


# ---- the two-stage classifier -----------------------------------------------------------------------------------

@dataclass
class TwoStage:
    """Loaded once (CLI run or service start); classify() takes raw titles/descriptions/image paths."""

    stage1: Stage | None
    stage2: Stage | None
    lexical: dict
    features2: Stage2Features | None
    threshold: float
    abstain_at: list
    mode: str
    info: dict = field(default_factory=dict)

    @classmethod
    def load(cls, work=None, model_dir=None, mode: str = "routed", stage1_path=None) -> "TwoStage":
        from pipelines.settings import work_dir
        from pipelines.classify.train import load_model

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        work = Path(work or work_dir())
        s1_dir = Path(stage1_path or stage1_dir(work))
        cfg = stage1_config()
        info = {"mode": mode, "work": str(work)}
        stage1 = None
        if mode != "stage2":
            if not (s1_dir / "calibration.json").exists():
                raise FileNotFoundError(f"no calibrated stage-1 model in {s1_dir}: materialise `stage1_model` "
                                        "(prodcat run) first")
            stage1 = Stage(load_model(s1_dir), json.loads((s1_dir / "calibration.json").read_text())["temperatures"])
            info["stage1"] = str(s1_dir)
        routing = json.loads((s1_dir / "routing.json").read_text()) if (s1_dir / "routing.json").exists() else {}
        if mode == "routed" and not routing:
            raise FileNotFoundError(f"{s1_dir}/routing.json missing: materialise `routing_threshold` (prodcat run) "
                                    "or use --stage 1")
        stage2 = features2 = None
        if mode != "stage1":
            stage2_dir, info["stage2_source"] = _stage2_dir(model_dir)
            model2 = load_model(stage2_dir)
            cal = routing.get("stage2", {})
            calibrated = cal.get("weights_sha256") == weights_sha(stage2_dir)
            temps = cal["calibration"]["temperatures"] if calibrated else [1.0] * model2.hierarchy.depth
            stage2 = Stage(model2, temps)
            info |= {"stage2_strategy": model2.cfg.get("name"), "stage2_calibrated": calibrated}
            features2 = Stage2Features(work, cfg.get("encoders", {}),
                                       modalities=[m for m in model2.modalities if m != "lexical"])
        threshold = float(routing.get("threshold", 0.0))
        info["threshold"] = threshold
        return cls(stage1, stage2, load_lexical(work), features2, threshold, list(cfg.get("abstain", [])), mode, info)

    @property
    def depth(self) -> int:
        return (self.stage1 or self.stage2).model.hierarchy.depth

    def classify(self, titles, descriptions, image_paths, num_workers: int | None = 0) -> pd.DataFrame:
        """-> one row per product: category_path (tuple, after abstention), full_path (before), conf_L1..,
        stage (1|2), needs_review."""
        texts = product_texts(titles, descriptions)
        n = len(texts)
        lex, ok = lexical_features(self.lexical, texts)
        depth = self.depth
        paths, conf = [()] * n, np.full((n, depth), np.nan, np.float32)
        stage = np.full(n, 1, np.int8)
        if self.stage1 is not None:
            p1 = self.stage1.predict({"lexical": lex}, {"lexical": ok})
            paths, conf = list(p1.paths), p1.conf.copy()
            routed = np.zeros(n, bool) if self.mode == "stage1" else p1.prob < self.threshold
        else:
            routed = np.ones(n, bool)
        idx = np.flatnonzero(routed)
        if len(idx):
            f, a = self.features2([texts[i] for i in idx], [image_paths[i] for i in idx], num_workers=num_workers)
            f["lexical"], a["lexical"] = lex[idx] if len(lex) else lex, ok[idx]
            p2 = self.stage2.predict(f, a)
            for j, i in enumerate(idx):
                paths[i] = p2.paths[j]
            conf[idx] = p2.conf
            stage[idx] = 2
        cut, review = abstain(paths, conf, self.abstain_at or [0.0] * depth)
        out = pd.DataFrame({"category_path": cut, "full_path": paths})
        for lvl in range(depth):
            out[f"conf_L{lvl + 1}"] = conf[:, lvl]
        out["stage"], out["needs_review"] = stage, review
        return out


def _stage2_dir(model_dir) -> tuple[Path, str]:
    from pipelines.classify.train import champion_dir

    if model_dir:
        return Path(model_dir), str(model_dir)
    try:
        return champion_dir(), "registry: prodcat-classifier@champion"
    except Exception as e:  # MlflowException: no registry / no alias yet
        raise FileNotFoundError(f"no `champion` model registered ({type(e).__name__}: {str(e)[:200]}); run "
                                "`prodcat run` or pass --model DIR") from None


# ---- batch classification of a raw export -----------------------------------------------------------------------

def read_export_unlabelled(platform: str, input_dir) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """A raw export through the platform adapter and normalisation's row quarantine (malformed rows, non-UTF-8,
    adapter BadRow, empty title, duplicate id), but without the category mapping: classification needs no label,
    so unknown or unmapped native categories are kept. -> (products, quarantine, rows in)."""
    from pipelines.ingest.normalize import QUARANTINE_COLUMNS, checked_records, quarantine_to
    from pipelines.ingest.shops import get_adapter
    from pipelines.taxonomy.tree import path_str

    products, quarantine, counter = [], [], {"rows_in": 0}
    for _, rec in checked_records(get_adapter(platform), Path(input_dir), quarantine_to(quarantine, platform), counter):
        products.append({k: rec.get(k) for k in ("product_id", "title", "description", "brand", "image_path")}
                        | {"native_path": path_str(rec.get("native_path") or [])})
    rows_in = counter["rows_in"]
    df = pd.DataFrame(products, columns=["product_id", "title", "description", "brand", "image_path", "native_path"])
    return df, pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS), rows_in


def output_table(products: pd.DataFrame, result: pd.DataFrame, depth: int) -> pd.DataFrame:
    from pipelines.taxonomy.tree import path_str

    out = pd.DataFrame({"product_id": products["product_id"].astype(str).to_numpy(),
                        "category_path": [path_str(p) for p in result["category_path"]]})
    for lvl in range(depth):
        out[f"conf_L{lvl + 1}"] = result[f"conf_L{lvl + 1}"].to_numpy().astype(float).round(4)
    out["stage"] = result["stage"].to_numpy()
    out["needs_review"] = result["needs_review"].to_numpy()
    return out


def write_table(df: pd.DataFrame, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(f"--out must end in .parquet or .csv, got {path.name!r}")


def classify_export(platform: str, input_dir, out_file, model_dir=None, mode: str = "routed", work=None,
                    progress: bool = True, classifier: TwoStage | None = None) -> dict:
    """Classify every usable row of a raw shop export; write the predictions (and quarantine beside them);
    -> summary counts. rows in = classified + quarantined."""
    from tqdm import tqdm

    out_file = Path(out_file)
    if out_file.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out must end in .parquet or .csv, got {out_file.name!r}")
    products, quarantine, rows_in = read_export_unlabelled(platform, input_dir)
    clf = classifier or TwoStage.load(work, model_dir, mode)
    t0 = time.perf_counter()
    parts = []
    quiet = os.environ.get("PRODCAT_QUIET")
    os.environ["PRODCAT_QUIET"] = "1"  # one progress bar (this one), not one per embedding call inside it
    try:
        with tqdm(total=len(products), desc=f"classify {platform}", unit="item", disable=not progress,
                  mininterval=1.0) as bar:
            for s in range(0, len(products), CHUNK):
                chunk = products.iloc[s:s + CHUNK]
                parts.append(clf.classify(chunk["title"].tolist(), chunk["description"].tolist(),
                                          chunk["image_path"].tolist(), num_workers=None))
                bar.update(len(chunk))
    finally:
        if quiet is None:
            os.environ.pop("PRODCAT_QUIET", None)
        else:
            os.environ["PRODCAT_QUIET"] = quiet
    seconds = time.perf_counter() - t0
    result = pd.concat(parts, ignore_index=True) if parts else clf.classify([], [], [])
    table = output_table(products, result, clf.depth)
    write_table(table, out_file)
    q_path = out_file.with_name(f"{out_file.stem}.quarantine{out_file.suffix}")
    write_table(quarantine, q_path)
    assert rows_in == len(table) + len(quarantine), (rows_in, len(table), len(quarantine))
    return {"platform": platform, "rows_in": rows_in, "classified": len(table), "quarantined": len(quarantine),
            "quarantined_by_reason": quarantine["reason_kind"].value_counts().to_dict(),
            "stage": {f"stage{k}": int(v) for k, v in table["stage"].value_counts().sort_index().items()},
            "needs_review": int(table["needs_review"].sum()), "seconds": round(seconds, 2),
            "items_per_s": round(len(table) / seconds, 1) if seconds > 0 else None,
            "mode": clf.mode, "threshold": clf.info.get("threshold"), "stage2": clf.info.get("stage2_source"),
            "out": str(out_file), "quarantine_out": str(q_path)}


# ---- report -----------------------------------------------------------------------------------------------------

def write_tradeoff_report(routing: dict, out_dir) -> tuple[Path, Path, Path]:
    """tradeoff.json, tradeoff.md and tradeoff.png (hF1 and ms/item against the routed share, test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = routing["tradeoff_test"]
    (out / "tradeoff.json").write_text(json.dumps(routing, indent=2))
    md = out / "tradeoff.md"
    md.write_text(tradeoff_markdown(routing) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    share = [100 * r["routed_share"] for r in rows]
    ax.plot(share, [100 * r["hF1"] for r in rows], "o-", label="routed hF1 (test)")
    ax.axhline(100 * routing["test"]["hF1_stage2"], color="grey", ls="--", label="stage 2 alone")
    ax.axvline(100 * routing["test"]["routed_share"], color="red", ls=":", label="chosen threshold")
    ax.set_xlabel("products routed to stage 2 (%)"), ax.set_ylabel("hF1 (%)")
    ax2 = ax.twinx()
    ax2.plot(share, [r["ms_per_item"] for r in rows], "s-", color="tab:orange", alpha=0.6, label="ms/item")
    ax2.set_ylabel("ms / item (cold cache)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Two-stage routing: accuracy vs cost")
    fig.tight_layout()
    png = out / "tradeoff.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return out / "tradeoff.json", md, png


def tradeoff_markdown(routing: dict) -> str:
    v, t, ms = routing["val"], routing["test"], routing["ms_per_item"]
    ab = routing["abstention_test"]
    lines = ["## Two-stage inference (stage 1 lexical, stage 2 champion)", "",
             f"Threshold {routing['threshold']:.4f} on stage 1's calibrated path probability, chosen on validation: "
             f"smallest routed share with hF1 within {100 * v['max_drop']:.2f} points of stage 2 alone "
             f"(val: {100 * v['routed_share']:.1f}% routed, hF1 {100 * v['hF1_routed']:.2f} vs stage 2 "
             f"{100 * v['hF1_stage2']:.2f}, stage 1 {100 * v['hF1_stage1']:.2f}). "
             f"Test: {100 * t['routed_share']:.1f}% routed, hF1 {100 * t['hF1_routed']:.2f} vs stage 2 "
             f"{100 * t['hF1_stage2']:.2f}, stage 1 {100 * t['hF1_stage1']:.2f}. "
             f"Budget: at most {100 * float(routing['target'].get('max_share', 1)):.0f}% routed -> "
             f"{'met' if routing['target_met_val'] else 'NOT met'} on validation.",
             "", f"Cost (ms/item, raw text in, cold embedding cache): stage 1 {ms['stage1']:.3f}, stage 2 "
             f"{ms['stage2']:.3f}. Abstention (thresholds {ab['thresholds']}): {100 * ab['review_share']:.1f}% of test "
             f"products flagged needs_review; hF1 {100 * ab['hF1_not_flagged']:.2f} on the rest vs "
             f"{100 * ab['hF1_flagged']:.2f} on the flagged ones (before cutting).", "",
             "| threshold | routed % | hF1 % | ms/item |", "|---|---|---|---|"]
    for r in routing["tradeoff_test"]:
        lines.append(f"| {r['threshold']:.4f} | {100 * r['routed_share']:.1f} | {100 * r['hF1']:.2f} | "
                     f"{r['ms_per_item']:.3f} |")
    lines += ["", "![trade-off](tradeoff.png)"]
    return "\n".join(lines)
