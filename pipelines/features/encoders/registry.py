"""Encoders as data: a name in models/configs/encoders.yaml (or a config dict with the same fields) -> the family
that loads it, once per process."""
from __future__ import annotations

import json

import yaml

from pipelines.features.encoders.base import Encoder, EncoderError
from pipelines.features.encoders.clip import OpenClipEncoder
from pipelines.features.encoders.image import HFVisionEncoder, TimmImageEncoder
from pipelines.features.encoders.text import HFTextEncoder
from pipelines.features.encoders.threads import configure_threads
from pipelines.settings import ROOT

CONFIG_PATH = ROOT / "models" / "configs" / "encoders.yaml"
DEFAULTS = {"text": "minilm", "image": "efficientnet-lite0"}
FAMILIES = {"hf_text": HFTextEncoder, "timm_image": TimmImageEncoder, "hf_vision": HFVisionEncoder,
            "open_clip": OpenClipEncoder}
_LOADED: dict = {}


def encoder_config(spec) -> dict:
    """The config of a named encoder (with its name), or a copy of a config dict (which must name its family)."""
    if isinstance(spec, dict):
        if "family" not in spec:
            raise EncoderError(f"encoder config {spec!r} has no 'family'; known: {', '.join(FAMILIES)}")
        return dict(spec)
    configs = yaml.safe_load(CONFIG_PATH.read_text())
    if spec not in configs:
        raise EncoderError(f"unknown encoder {spec!r}; configured in {CONFIG_PATH.name}: {', '.join(configs)} "
                           "(or pass a config dict)")
    return {"name": spec, **configs[spec]}


def load_encoder(spec, device: str | None = None, threads: int = 0, weights_cache=None) -> Encoder:
    """Load an encoder by name (models/configs/encoders.yaml) or config dict; once per process, so repeated
    calls (several assets, warm runs) reuse the resident model. `threads`: torch intra-op threads for this process
    (0 = the cores it may use; Settings.threads). `weights_cache`: where weight hashes are remembered
    (Settings.weights_cache; default ~/.cache/prodcat)."""
    cfg = encoder_config(spec)
    if cfg["family"] not in FAMILIES:
        raise EncoderError(f"encoder {cfg.get('name')!r}: unknown family {cfg['family']!r}; "
                           f"known: {', '.join(FAMILIES)}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_threads(threads)
    memo = json.dumps(cfg, sort_keys=True, default=str) + device
    if memo not in _LOADED:
        _LOADED[memo] = FAMILIES[cfg["family"]](cfg, device, weights_cache)
    return _LOADED[memo]
