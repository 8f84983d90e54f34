"""An adapted classifier on disk: what `prodcat classify --shop NEW` and onboarding load for a shop the champion
never trained on, and what the per-shop `shop_adaptation` asset writes.

    save_adapted(classifier, settings.work("adapt", "acme"), fingerprint)
    classifier = load_adapted(settings.work("adapt", "acme"), embed)     # AdaptedClassifier, files validated

Layout of the folder (no pickles): stage2/ and, when the classifier routes, stage1/ (each model.safetensors +
model.json + calibration.json, read back through the same validating loaders as the champion), lexical.skops (the
lexical space, loaded with its type allow-list), centre.npz (the new shop's mean per centred view) and adapted.json,
written last and atomically: it names the files and the fingerprint of the inputs, so a folder without it (a run
killed while saving) is never loaded, and a fingerprint that changed (another feed, other training shops, another
config) means adapting again rather than answering with a model of other data.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

ADAPTED_FILE = "adapted.json"
FORMAT = 1


class BadAdaptedModel(ValueError):
    """An adapted-classifier folder whose adapted.json is missing a field, names a file that is not there, or
    was made with another text encoder than the one the settings select."""


def _save_stage(stage, out: Path) -> None:
    from pipelines.classify.train import save_model
    from pipelines.files import atomic_write_text

    save_model(stage.model, out)
    atomic_write_text(out / "calibration.json", json.dumps({"temperatures": [float(t) for t in stage.temperatures]}))


def _load_stage(folder: Path):
    from pipelines.inference.calibration import Stage
    from pipelines.inference.stage1 import load_stage1

    stage = load_stage1(folder)  # model files + calibration.json, each validated
    return Stage(stage.model, stage.temperatures)


def save_adapted(classifier, out_dir, fingerprint: str, encoder: str | None = None) -> Path:
    """Write `classifier` (an AdaptedClassifier) into `out_dir`; adapted.json last. -> its path."""
    from pipelines.features import lexical
    from pipelines.files import atomic_write_bytes, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTED_FILE).unlink(missing_ok=True)  # the folder is not loadable until everything is written again
    _save_stage(classifier.stage, out / "stage2")
    stage1 = getattr(classifier, "stage1", None)
    if stage1 is not None:
        _save_stage(stage1, out / "stage1")
    lexical.save(classifier.lexical, out)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, np.float32) for k, v in classifier.centre_means.items()})
    atomic_write_bytes(out / "centre.npz", buf.getvalue())
    meta = {"format": FORMAT, "fingerprint": fingerprint, "text_encoder": encoder,
            "stage1": stage1 is not None, "abstain_at": [float(a) for a in classifier.abstain_at],
            "thresholds": {k: float(getattr(classifier, k)) for k in ("route_below", "review_below")
                           if getattr(classifier, k, None) is not None},
            "info": classifier.info}
    atomic_write_text(out / ADAPTED_FILE, json.dumps(meta, indent=2, default=str))
    return out / ADAPTED_FILE


def adapted_meta(out_dir) -> dict | None:
    """The folder's adapted.json, or None when there is none (never adapted, or a save that did not finish)."""
    from pipelines.files import read_json

    path = Path(out_dir) / ADAPTED_FILE
    if not path.exists():
        return None
    meta = read_json(path)
    missing = [k for k in ("format", "fingerprint", "abstain_at", "info") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise BadAdaptedModel(f"{path}: missing {missing}")
    return meta


def load_adapted(out_dir, embed=None, encoder: str | None = None):
    """The AdaptedClassifier saved in `out_dir` (None when it holds none). `embed` computes the text vectors when
    the model reads them; `encoder` (the settings' text encoder) must be the one it was adapted with."""
    from pipelines.adapt.adapted import AdaptedClassifier
    from pipelines.features import lexical

    out = Path(out_dir)
    meta = adapted_meta(out)
    if meta is None:
        return None
    if encoder is not None and meta.get("text_encoder") not in (None, encoder):
        raise BadAdaptedModel(f"{out / ADAPTED_FILE}: adapted with text encoder {meta['text_encoder']!r}, the "
                              f"settings select {encoder!r}: adapt again (prodcat onboard / the shop_adaptation asset)")
    stage2 = _load_stage(out / "stage2")
    if "text" in stage2.modalities and embed is None:
        raise BadAdaptedModel(f"{out}: the adapted model reads text vectors: give an embedder")
    with np.load(out / "centre.npz") as z:
        means = {k: z[k] for k in z.files}
    classifier = AdaptedClassifier(stage2, lexical.load(out), embed, list(meta["abstain_at"]), dict(meta["info"]),
                                   mode="adapted", centre_means=means)
    if meta.get("stage1"):
        classifier.stage1 = _load_stage(out / "stage1")
    for key, value in meta.get("thresholds", {}).items():
        setattr(classifier, key, float(value))
    return classifier
