"""Reading a saved classifier's files with errors that name the file: model.json, model.safetensors and the JSON
files kept beside a model (calibration.json, routing.json).

A work dir is not always the one that wrote it: it may be copied, restored from a backup, edited by hand or
truncated by a full disk. So every file a model is built from is validated when it is loaded, which `classify` and
`serve` do before reading a single product or loading an encoder: a truncated or foreign model.safetensors, a
model.json with missing keys or widths that do not fit the weights, a calibration or routing file that does not
parse or holds the wrong numbers each raise `BadModelFile` (a ValueError, so the CLI prints one line naming the file
and exits with 2) instead of a traceback minutes into a run. Weights are read with safetensors (plain tensors,
nothing executed) and JSON with files.read_json (which names the file, line and column of a syntax error).
"""
from __future__ import annotations

import math
from pathlib import Path

from pipelines.files import read_json

MODEL_KEYS = ("cfg", "dims", "nodes", "depth")


class BadModelFile(ValueError):
    """A model file that exists but cannot be used as it is (corrupt, truncated, inconsistent, wrong numbers)."""


def error_summary(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _cfg_problems(cfg, dims) -> list[str]:
    if not isinstance(cfg, dict) or not isinstance(cfg.get("modalities"), list) or not cfg["modalities"]:
        return ["cfg.modalities must be a non-empty list"]
    if not isinstance(dims, dict) or not all(isinstance(k, str) and _positive_int(v) for k, v in dims.items()):
        return [f"dims must map each modality to a positive integer width, got {dims!r:.120}"]
    missing = [m for m in cfg["modalities"] if m not in dims]
    return [f"dims lack the width of {', '.join(map(str, missing))}"] if missing else []


def _nodes_problems(nodes, depth) -> list[str]:
    if not _positive_int(depth):
        return [f"depth must be a positive integer, got {depth!r:.60}"]
    if not isinstance(nodes, list) or not nodes:
        return ["nodes must be a non-empty list of taxonomy paths"]
    bad = [n for n in nodes if not (isinstance(n, list) and 0 < len(n) <= depth and all(isinstance(p, str) for p in n))]
    return [f"{len(bad)} nodes are not paths of at most {depth} names, e.g. {bad[0]!r:.80}"] if bad else []


def model_json_problems(meta) -> list[str]:
    """Everything wrong with a parsed model.json ([] = usable): keys, types, and the top-level dims agreeing with
    the manifest's (the widths the weights were trained at)."""
    if not isinstance(meta, dict):
        return [f"expected a JSON object, got {type(meta).__name__}"]
    missing = [k for k in MODEL_KEYS if k not in meta]
    if missing:
        return [f"missing {', '.join(missing)}"]
    problems = _cfg_problems(meta["cfg"], meta["dims"]) + _nodes_problems(meta["nodes"], meta["depth"])
    manifest = meta.get("manifest")
    recorded = manifest.get("dims") if isinstance(manifest, dict) else None
    if isinstance(recorded, dict) and recorded and recorded != meta["dims"]:
        problems.append(f"dims {meta['dims']} differ from the manifest's {recorded}")
    return problems


def read_model_json(model_dir) -> dict:
    """model.json of `model_dir`, parsed and validated. Missing -> FileNotFoundError; anything else wrong ->
    BadJSONFile / BadModelFile naming the file."""
    path = Path(model_dir) / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} holds no prodcat model (model.json missing)")
    meta = read_json(path)
    problems = model_json_problems(meta)
    if problems:
        raise BadModelFile(f"{path}: {'; '.join(problems)}")
    return meta


def build_classifier(meta: dict, model_dir):
    """The (untrained) HierarchicalClassifier that model.json describes."""
    from models.classifier import HierarchicalClassifier

    try:
        return HierarchicalClassifier(meta["cfg"], meta["dims"], meta["nodes"], meta["depth"])
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise BadModelFile(f"{Path(model_dir) / 'model.json'}: cannot build the classifier it describes: "
                           f"{type(e).__name__}: {error_summary(e)}") from None


def load_weights(model, model_dir):
    """model.safetensors of `model_dir` into `model`: readable, every tensor present with the shape model.json
    implies, every value finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        raise BadModelFile(f"{path} missing (model.json without its weights): retrain (prodcat run)")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise BadModelFile(f"{path}: not a readable safetensors file ({error_summary(e)})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [error_summary(e)]
        raise BadModelFile(f"{path} does not fit {path.with_name('model.json')}: {detail[0]}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise BadModelFile(f"{path}: tensor {bad[0]} holds NaN or inf")
    return model


def checked_temperatures(values, depth: int, path) -> list[float]:
    """Per-level temperatures read from `path`: `depth` finite positive numbers."""
    ok = (isinstance(values, list) and len(values) == depth
          and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
                  for t in values))
    if not ok:
        raise BadModelFile(f"{path}: temperatures must be {depth} finite positive numbers (one per level), got "
                           f"{values!r:.120}")
    return [float(t) for t in values]


def read_calibration(model_dir, depth: int) -> list[float]:
    """The temperatures in `model_dir`/calibration.json (calibration.calibrate's output)."""
    path = Path(model_dir) / "calibration.json"
    data = read_json(path)
    if not isinstance(data, dict) or "temperatures" not in data:
        raise BadModelFile(f"{path}: no temperatures (expected the output of calibrate: {{\"temperatures\": [...]}})")
    return checked_temperatures(data["temperatures"], depth, path)


def read_routing_file(path) -> dict:
    """routing.json (routing.fit_routing's output), its parts inference reads checked: a finite threshold >= 0 and,
    when present, the stage-2 record (weights sha256 and calibration)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise BadModelFile(f"{path}: expected a JSON object, got {type(data).__name__}")
    threshold = data.get("threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise BadModelFile(f"{path}: threshold must be a finite number >= 0, got {threshold!r:.60}")
    stage2 = data.get("stage2", {})
    if not isinstance(stage2, dict) or (stage2 and not (isinstance(stage2.get("weights_sha256"), str)
                                                        and isinstance(stage2.get("calibration"), dict))):
        raise BadModelFile(f"{path}: stage2 must record weights_sha256 and calibration")
    return data
