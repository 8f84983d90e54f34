"""The recategorisation settings: models/configs/recategorise.yaml with a run's overrides merged in.

The YAML is the method's configuration (SimCLR, UMAP, cascade, proposals), not a run setting: the run's data root,
work dir and threads come in as arguments from the caller's `Settings`.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from pipelines.settings import ROOT

CONFIG_PATH = ROOT / "models" / "configs" / "recategorise.yaml"


def _merge(base: dict, extra: dict | None) -> dict:
    """`extra` into `base`, nested dicts key by key (an override of simclr.epochs keeps the other simclr keys)."""
    for k, v in (extra or {}).items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def load_recategorise_config(overrides: dict | None = None, path: str | Path | None = None) -> dict:
    """The YAML config with `overrides` merged in (nested dicts merge key by key); the overrides are copied, so
    the caller's dict is never mutated by a later run."""
    cfg = yaml.safe_load(Path(path or CONFIG_PATH).read_text())
    return _merge(cfg, copy.deepcopy(overrides))
