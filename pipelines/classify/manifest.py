"""The model manifest: what a trained classifier's input vectors were made with, so nobody feeds it others.

A classifier only knows vectors by position. A model trained on MiniLM text vectors will happily score RoBERTa
vectors of the same width, or predict paths of a taxonomy that has since changed, and nothing would fail: the
predictions would just be wrong. So model.json carries a manifest written at training time (train.save_model):

    taxonomy   name, version and a sha256 of the node list the output layer enumerates
    dims       input width per modality
    features   per modality, what made its vectors: the encoders (name, cache key = config + weights sha256 +
               preprocessing version, weights sha256, preprocessing version, dim), the joint projection heads'
               sha256, the fitted lexical space's sha256

`classify` and `serve` build the same structure from the current Settings and work dir (`expected_manifest`) and
refuse the model when they differ (`check_model` raises `ModelMismatch`, a ValueError: the CLI exits with 2 and the
message lists every difference at once).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipelines.files import sha256_of_files

MANIFEST_VERSION = 1
ENCODERS_OF = {"text": ("text",), "image": ("image",), "joint": ("text", "image"), "lexical": ()}
JOINT_HEADS = ("joint_space", "alignment.safetensors")
LEXICAL_SPACE = "lexical_space"


class ModelMismatch(ValueError):
    """The model was trained with other vectors or another taxonomy than the current configuration gives."""


def taxonomy_identity(nodes: list, taxonomy=None) -> dict:
    """The taxonomy a model predicts: a digest of its node set (sorted, so the tree's order and the output layer's
    level order agree), plus name and version when the Taxonomy object is at hand."""
    canonical = sorted(list(n) for n in nodes)
    out = {"nodes_sha256": hashlib.sha256(json.dumps(canonical).encode()).hexdigest()}
    if taxonomy is not None:
        out |= {"name": taxonomy.name, "version": int(taxonomy.version)}
    return out


def build_manifest(dims: dict, nodes: list, taxonomy=None, provenance: dict | None = None) -> dict:
    """What save_model writes into model.json. `provenance` is feature_provenance(...) at training time; without
    it the features are unrecorded and check_model will refuse the model for inference."""
    return {"manifest_version": MANIFEST_VERSION,
            "taxonomy": taxonomy_identity(nodes, taxonomy),
            "dims": {m: int(d) for m, d in dims.items()},
            "features": {m: provenance[m] for m in dims if m in provenance} if provenance else {}}


def _encoder_identity(kind: str, settings, loaded=None, load: bool = True) -> dict:
    """name always; key, weights hash, preprocessing version and dim when the encoder is loaded (or `load`)."""
    from pipelines.features.encoders import PREPROCESS_VERSION, load_encoder

    name = settings.text_encoder if kind == "text" else settings.image_encoder
    if loaded is None and not load:
        return {"name": name}
    encoder = loaded or load_encoder(name, threads=settings.threads, weights_cache=settings.weights_cache)
    return {"name": name, "key": encoder.key, "weights_sha256": encoder.weights,
            "preprocess_version": PREPROCESS_VERSION, "dim": int(encoder.dim)}


def feature_provenance(settings, modalities, encoders: dict | None = None, load: bool = True) -> dict:
    """Per modality, what makes its vectors under these settings and this work dir: encoders (the loaded ones in
    `encoders`, else loaded now when `load`, else by name only), joint heads and lexical space digests."""
    encoders = encoders or {}
    work = Path(settings.work_dir)
    needed = {k for m in modalities for k in ENCODERS_OF.get(m, ())}
    identity = {k: _encoder_identity(k, settings, encoders.get(k), load) for k in sorted(needed)}
    out = {}
    for m in modalities:
        if m not in ENCODERS_OF:
            raise ValueError(f"unknown modality {m!r}; known: {', '.join(ENCODERS_OF)}")
        entry = {"encoders": {k: identity[k] for k in ENCODERS_OF[m]}}
        if m == "joint":
            entry["joint_heads_sha256"] = _artefact_sha(work.joinpath(*JOINT_HEADS), "joint_space")
        if m == "lexical":
            entry["lexical_space_sha256"] = _artefact_sha(work / LEXICAL_SPACE, "lexical_space")
        out[m] = entry
    return out


def _artefact_sha(path: Path, asset: str) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: materialise `{asset}` first (prodcat run)")
    return sha256_of_files(path)


def expected_manifest(settings, modalities, encoders: dict | None = None, load: bool = False) -> dict:
    """The manifest a model must carry to be fed vectors made under these settings (the parts known without
    loading encoders, unless they are passed or `load`)."""
    from pipelines.taxonomy.tree import load_taxonomy

    taxonomy = load_taxonomy(settings.taxonomy_path)
    features = feature_provenance(settings, modalities, encoders, load)
    dims = {m: e["encoders"][m]["dim"] for m, e in features.items() if "dim" in e["encoders"].get(m, {})}
    return {"manifest_version": MANIFEST_VERSION, "taxonomy": taxonomy_identity(taxonomy.nodes, taxonomy),
            "dims": dims, "features": features}


def _label(path: tuple) -> str:
    """('features', 'joint', 'encoders', 'text', 'key') -> 'joint vectors: text encoder key'."""
    if len(path) >= 2 and path[0] == "features":
        rest = path[2:]
        if len(rest) >= 2 and rest[0] == "encoders":
            return f"{path[1]} vectors: {rest[1]} encoder {' '.join(rest[2:]) or 'record'}"
        return f"{path[1]} vectors" + (f": {' '.join(rest)}" if rest else "")
    if len(path) == 2 and path[0] == "dims":
        return f"{path[1]} vector width"
    return " ".join(path)


def _differences(have, want, path: tuple) -> list[str]:
    if isinstance(want, dict):
        if have is None:
            return [f"{_label(path)}: not recorded in the model's manifest"] if path else []
        if not isinstance(have, dict):
            return [f"{_label(path)}: model has {have!r}, expected a record"]
        return [p for k, v in want.items() for p in _differences(have.get(k), v, (*path, str(k)))]
    if have is None:
        return [f"{_label(path)}: not recorded in the model's manifest (current configuration: {want!r})"]
    if have != want:
        return [f"{_label(path)}: model trained with {have!r}, current configuration gives {want!r}"]
    return []


def check_compatible(manifest: dict | None, expected: dict) -> list[str]:
    """Every difference between a model's manifest and what the current configuration would feed it ([] = ok).
    Only what `expected` states is compared; anything it states that the manifest lacks is a problem (unknown
    provenance cannot be vouched for)."""
    if not manifest:
        return ["the model has no manifest (trained before manifests were recorded): retrain it (prodcat run)"]
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return [f"manifest version {manifest.get('manifest_version')!r}, this code reads {MANIFEST_VERSION}"]
    return _differences(manifest, {k: v for k, v in expected.items() if k != "manifest_version"}, ())


def read_manifest(model_dir) -> dict | None:
    """The manifest in `model_dir`/model.json (None for a model saved before manifests); a model.json that does not
    parse or is not a model's raises BadJSONFile / BadModelFile naming it (model_files.read_model_json)."""
    from pipelines.classify.model_files import read_model_json

    return read_model_json(model_dir).get("manifest")


def check_model(model_dir, expected: dict, role: str = "model"):
    """Raise ModelMismatch naming every difference between the model's manifest and `expected`."""
    problems = check_compatible(read_manifest(model_dir), expected)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ModelMismatch(f"{role} {model_dir} does not match the current configuration; refusing to feed it "
                            f"other vectors:\n{lines}\nUse the settings it was trained with, or retrain it "
                            "(prodcat run).")
