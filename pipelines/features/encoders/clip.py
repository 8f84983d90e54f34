"""`open_clip`: one space for texts and images, and each tower seen as a single-modality encoder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipelines.features.encoders.base import MAX_TEXT_CHARS, Encoder, EncoderError, l2
from pipelines.features.encoders.image import open_image
from pipelines.features.encoders.weights import resolve_path, weights_hash

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def _local_pretrained(pretrained: str) -> str:
    """A pretrained value that looks like a file must be one; a bare tag is left for open_clip's cache."""
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        pretrained = resolve_path(pretrained)
        if not Path(pretrained).is_file():
            raise EncoderError(f"checkpoint path {pretrained} does not exist (or is not a file)")
    return pretrained


def _register_architecture(cfg: dict):
    """A local architecture JSON (e.g. a small custom CLIP) whose stem is the arch name; then arch must be known."""
    import open_clip

    if cfg.get("model_config"):
        config_path = Path(resolve_path(cfg["model_config"]))
        if config_path.stem != cfg["arch"]:
            raise EncoderError(f"model_config {config_path.name} defines {config_path.stem!r}, not {cfg['arch']!r}")
        open_clip.add_model_config(config_path)
    if cfg["arch"] not in open_clip.list_models():
        raise EncoderError(f"unknown open_clip architecture {cfg['arch']!r} (give model_config for a custom one)")


class OpenClipEncoder(Encoder):
    """open_clip model: one space for text and images. `arch` = an open_clip model name (or the stem of a local
    `model_config` JSON); `pretrained` = a tag in the local cache or a local checkpoint path."""

    modality = "joint"

    def __init__(self, cfg: dict, device: str = "cpu", weights_cache=None):
        import open_clip

        self.cfg, self.device = cfg, device
        _register_architecture(cfg)
        if not cfg.get("pretrained"):
            raise EncoderError(f"CLIP encoder {cfg.get('name', cfg['arch'])!r} has no pretrained weights configured")
        pretrained = _local_pretrained(cfg["pretrained"])
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                cfg["arch"], pretrained=pretrained, device=device)
        except RuntimeError as e:
            what = "does not match" if "size mismatch" in str(e) or "Missing key" in str(e) else "cannot load"
            raise EncoderError(f"checkpoint {pretrained} {what} CLIP {cfg['arch']}: {str(e)[:300]}") from e
        except Exception as e:  # e.g. a pretrained tag whose weights are not in the offline cache
            raise EncoderError(f"cannot load CLIP {cfg['arch']} weights {pretrained!r}: {type(e).__name__}: "
                               f"{str(e)[:300]} (no network here: give a local checkpoint path)") from e
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(cfg["arch"])
        self.weights = weights_hash(pretrained, weights_cache)
        self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(device)).shape[-1])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer([t[:MAX_TEXT_CHARS] for t in texts]).to(self.device)
            return l2(self.model.encode_text(tokens)).cpu().numpy()

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return l2(self.model.encode_image(x.to(self.device))).cpu().numpy()

    def encode(self, items) -> np.ndarray:
        import torch

        items = list(items)
        if items and all(isinstance(t, str) for t in items) and not any(_looks_like_image_path(t) for t in items):
            return self.encode_texts(items)
        return self.encode_tensor(torch.stack([self.preprocess(open_image(im).convert("RGB")) for im in items]))

    def text_view(self) -> "ClipTower":
        return ClipTower(self, "text")

    def image_view(self) -> "ClipTower":
        return ClipTower(self, "image")


def _looks_like_image_path(s: str) -> bool:
    return s.lower().endswith(IMAGE_SUFFIXES) and Path(s).is_file()


class ClipTower(Encoder):
    """One tower of a CLIP encoder seen as a single-modality encoder (own cache namespace per tower)."""

    def __init__(self, clip: OpenClipEncoder, modality: str):
        self.clip, self.modality, self.cfg = clip, modality, clip.cfg
        self.dim, self.weights, self.device = clip.dim, clip.weights, clip.device
        self.preprocess = clip.preprocess

    @property
    def key(self) -> str:
        return f"{self.clip.key}-{self.modality}"

    def encode(self, items) -> np.ndarray:
        return self.clip.encode_texts(list(items)) if self.modality == "text" else self.clip.encode(list(items))

    def encode_tensor(self, x) -> np.ndarray:
        return self.clip.encode_tensor(x)
