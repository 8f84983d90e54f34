"""Two-stage classification of a batch of raw products: cheap lexical stage 1, the champion as stage 2.

Stage 1 (stage1.py) scores every product from its lexical view; products whose calibrated path probability is below
the routing threshold (routing.py) go to stage 2, the registered `champion` (or --model DIR), whose text/image/joint
vectors are computed only for them (features.py). Every prediction carries per-level calibrated confidences; where a
level is below its threshold (stage1.yaml `abstain`) the path is cut back to the last confident ancestor and
needs_review set (calibration.abstain).

Before anything is fed, each model's manifest (pipelines/classify/manifest.py) is compared with what the current
Settings would give it (encoders, joint heads, lexical space, taxonomy): a mismatch raises ModelMismatch naming
every difference instead of producing confident nonsense.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.inference.calibration import Stage, abstain, weights_sha
from pipelines.inference.features import Stage2Features, embedding_texts, lexical_features, load_lexical
from pipelines.inference.stage1 import load_stage1, stage1_config, stage1_dir

MODES = ("routed", "stage1", "stage2")


def stage2_source(settings, model_dir=None) -> tuple[Path, str]:
    """(directory of the stage-2 model, where it came from): --model DIR, else the registry's champion, copied
    once per version into <work>/registry_cache. Only a registry without a champion says so; any other registry
    failure keeps its own message (registry.RegistryError)."""
    from pipelines.classify.registry import NoChampion, champion_dir

    if model_dir:
        return Path(model_dir), str(model_dir)
    try:
        return (champion_dir(settings.registry_uri, settings.work("registry_cache")),
                f"registry: prodcat-classifier@champion ({settings.registry_uri})")
    except NoChampion as e:
        raise NoChampion(f"{e}; run `prodcat run` or pass --model DIR") from None


def _check_manifest(model_dir, settings, modalities, role: str, encoders: dict | None = None):
    from pipelines.classify.manifest import check_model, expected_manifest

    check_model(model_dir, expected_manifest(settings, modalities, encoders=encoders), role=role)


def _load_stage2(settings, model_dir, routing: dict, routing_path: Path) -> tuple[Stage, Stage2Features, dict]:
    """The stage-2 model with its temperatures (when routing.json was fitted for these very weights) and its
    feature pipeline, both checked against the model's manifest: names first (no encoder is loaded for a model
    that wants another one), then the loaded encoders' keys."""
    from pipelines.classify.model_files import checked_temperatures
    from pipelines.classify.train import load_model

    stage2_dir, source = stage2_source(settings, model_dir)
    model2 = load_model(stage2_dir)
    _check_manifest(stage2_dir, settings, model2.modalities, "stage-2 model")
    features2 = Stage2Features(settings, [m for m in model2.modalities if m != "lexical"])
    _check_manifest(stage2_dir, settings, model2.modalities, "stage-2 model", encoders=features2.encoders)
    cal = routing.get("stage2", {})
    calibrated = cal.get("weights_sha256") == weights_sha(stage2_dir)
    temps = (checked_temperatures(cal["calibration"].get("temperatures"), model2.hierarchy.depth,
                                  f"{routing_path} (stage2.calibration)") if calibrated
             else [1.0] * model2.hierarchy.depth)
    info = {"stage2_source": source, "stage2_strategy": model2.cfg.get("name"), "stage2_calibrated": calibrated}
    return Stage(model2, temps), features2, info


def load_lexical_space(work) -> dict:
    """The work dir's lexical space, loaded first (both stages read it): a file that is refused keeps its own
    error (lexical.UntrustedModelFile); one that fails to load any other way is a BadModelFile naming it."""
    import zipfile

    from pipelines.classify.model_files import BadModelFile, error_summary
    from pipelines.features.lexical import UntrustedModelFile

    path = Path(work) / "lexical_space" / "lexical.skops"
    try:
        space = load_lexical(work)
    except (UntrustedModelFile, FileNotFoundError):
        raise
    except (ValueError, OSError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as e:
        raise BadModelFile(f"{path}: cannot be loaded ({type(e).__name__}: {error_summary(e)}); re-materialise "
                           "`lexical_space` (prodcat run)") from None
    if not isinstance(space, dict) or not {"svd", "expert"} <= set(space):
        raise BadModelFile(f"{path}: not a lexical space (expected its 'svd' and 'expert' parts)")
    return space


def _read_routing(s1_dir: Path, mode: str) -> dict:
    from pipelines.classify.model_files import read_routing_file

    path = s1_dir / "routing.json"
    if path.exists():
        return read_routing_file(path)
    if mode == "routed":
        raise FileNotFoundError(f"{path} missing: materialise `routing_threshold` (prodcat run) or use --stage stage1")
    return {}


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
    def load(cls, settings, model_dir=None, mode: str = "routed", stage1_path=None) -> "TwoStage":
        """`model_dir` is the stage-2 model (default: the champion); under mode 'stage1', where there is no stage
        2, it names the stage-1 model instead (default <work>/models/stage1)."""
        from pipelines.features.encoders import configure_threads

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        configure_threads(settings.threads)
        if mode == "stage1" and model_dir and not stage1_path:
            stage1_path, model_dir = model_dir, None
        s1_dir = Path(stage1_path or stage1_dir(settings))
        info = {"mode": mode, "work": str(settings.work_dir)}
        lexical = load_lexical_space(settings.work_dir)
        stage1 = None
        if mode != "stage2":
            stage1 = load_stage1(s1_dir)
            _check_manifest(s1_dir, settings, stage1.modalities, "stage-1 model")
            info["stage1"] = str(s1_dir)
        routing = _read_routing(s1_dir, mode)
        stage2 = features2 = None
        if mode != "stage1":
            stage2, features2, stage2_info = _load_stage2(settings, model_dir, routing, s1_dir / "routing.json")
            info |= stage2_info
        info["threshold"] = threshold = float(routing.get("threshold", 0.0))
        return cls(stage1, stage2, lexical, features2, threshold,
                   list(stage1_config().get("abstain", [])), mode, info)

    @property
    def depth(self) -> int:
        return (self.stage1 or self.stage2).model.hierarchy.depth

    def _stage2_on(self, idx, texts, image_paths, lex, ok, num_workers, progress):
        f, a = self.features2([texts[i] for i in idx], [image_paths[i] for i in idx], num_workers=num_workers,
                              progress=progress)
        f["lexical"], a["lexical"] = lex[idx] if len(lex) else lex, ok[idx]
        return self.stage2.predict(f, a)

    def classify(self, titles, descriptions, image_paths, num_workers: int | None = 0,
                 progress: bool = False) -> pd.DataFrame:
        """-> one row per product: category_path (tuple, after abstention), full_path (before), conf_L1..,
        stage (1|2), needs_review, alternatives (the answering stage's runners-up: [(path, probability)]). `progress`: the embedding bars of stage 2 (off inside a caller's own bar)."""
        texts = embedding_texts(titles, descriptions)
        n, depth = len(texts), self.depth
        lex, ok = lexical_features(self.lexical, texts)
        paths, conf = [()] * n, np.full((n, depth), np.nan, np.float32)
        stage, alternatives = np.full(n, 1, np.int8), [[] for _ in range(n)]
        if self.stage1 is not None:
            p1 = self.stage1.predict({"lexical": lex}, {"lexical": ok})
            paths, conf = list(p1.paths), p1.conf.copy()
            alternatives = list(p1.alternatives or alternatives)
            routed = np.zeros(n, bool) if self.mode == "stage1" else p1.prob < self.threshold
        else:
            routed = np.ones(n, bool)
        idx = np.flatnonzero(routed)
        if len(idx):
            p2 = self._stage2_on(idx, texts, image_paths, lex, ok, num_workers, progress)
            for j, i in enumerate(idx):
                paths[i] = p2.paths[j]
                alternatives[i] = p2.alternatives[j] if p2.alternatives else []
            conf[idx] = p2.conf
            stage[idx] = 2
        cut, review = abstain(paths, conf, self.abstain_at or [0.0] * depth)
        out = pd.DataFrame({"category_path": cut, "full_path": paths})
        for lvl in range(depth):
            out[f"conf_L{lvl + 1}"] = conf[:, lvl]
        out["stage"], out["needs_review"] = stage, review
        out["alternatives"] = alternatives
        return out
