"""Text, image and joint (CLIP) encoders behind one small interface, chosen by config.

    enc = load_encoder("minilm")            # or a dict config, see models/configs/encoders.yaml
    enc.key, enc.dim, enc.modality          # identity (config + weights hash + preprocessing version)
    enc.encode(items) -> float32 [n, dim]   # texts (str) or images (PIL.Image); L2-normalised

Loading is path-based (local folder/file, `package:` weights shipped in a PyPI package, or a hub id that must
already be in the local cache). Nothing here falls back to random weights.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import yaml

PREPROCESS_VERSION = "1"
CONFIG_PATH = Path(__file__).resolve().parents[1] / "models" / "configs" / "encoders.yaml"
MAX_TEXT_CHARS = 2000  # tokenise a bounded prefix: a 100 kB description must not cost 100 kB of tokenising
DEFAULTS = {"text": "minilm", "image": "efficientnet-lite0"}


class EncoderError(ValueError):
    """Unknown encoder, missing or mismatched weights: a configuration problem, reported by name."""


def encoder_config(spec) -> dict:
    if isinstance(spec, dict):
        return dict(spec)
    configs = yaml.safe_load(CONFIG_PATH.read_text())
    if spec not in configs:
        raise EncoderError(f"unknown encoder {spec!r}; configured: {', '.join(configs)} (or pass a config dict)")
    return {"name": spec, **configs[spec]}


def resolve_path(ref: str) -> str:
    """`package:pkg/sub/path` -> a file inside an installed package; local paths must exist; else a hub id."""
    if ref.startswith("package:"):
        pkg, _, rest = ref[len("package:"):].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError(f"weights package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})")
        path = Path(list(spec.submodule_search_locations)[0]) / rest
        if not path.exists():
            raise EncoderError(f"{ref}: {path} does not exist")
        return str(path)
    if ref.startswith((".", "/", "~")) or os.sep in ref and Path(ref).expanduser().exists():
        path = Path(ref).expanduser()
        if not path.exists():
            raise EncoderError(f"checkpoint path {path} does not exist")
        return str(path)
    return ref  # hub id: transformers/open_clip look in the local cache (offline) and fail clearly if absent


_HASH_CACHE: dict = {}


def weights_hash(path: str) -> str:
    """sha256 over a weight file or every file of a model folder, cached by (path, size, mtime)."""
    p = Path(path)
    if not p.exists():
        return hashlib.sha256(path.encode()).hexdigest()[:16]  # hub id: identity is the id itself
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _HASH_CACHE:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _HASH_CACHE[stamp] = h.hexdigest()[:16]
    return _HASH_CACHE[stamp]


def _l2(x):
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def configure_threads():
    import torch

    n = int(os.environ.get("PRODCAT_THREADS", os.cpu_count() or 1))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class Encoder:
    modality = ""
    cfg: dict
    dim: int
    weights: str

    @property
    def key(self) -> str:
        ident = json.dumps({k: v for k, v in sorted(self.cfg.items()) if k not in ("batch_size", "name")},
                           sort_keys=True)
        digest = hashlib.sha256(f"{ident}|{self.weights}|{PREPROCESS_VERSION}".encode()).hexdigest()[:12]
        return f"{self.cfg.get('name', self.cfg['family'])}-{digest}"

    @property
    def batch_size(self) -> int:
        return int(self.cfg.get("batch_size", 64))


class HFTextEncoder(Encoder):
    """Any transformers encoder (MiniLM, RoBERTa, XLM-R, ...) with attention-masked mean pooling."""

    modality = "text"

    def __init__(self, cfg: dict, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.cfg, self.device = cfg, device
        path = resolve_path(cfg["model"])
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise EncoderError(f"cannot load text encoder {cfg['model']!r}: {e}") from e
        self.weights = weights_hash(path)
        self.dim = int(self.model.config.hidden_size)
        self.max_length = int(cfg.get("max_length", 64))

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer([t[:MAX_TEXT_CHARS] for t in texts], padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return _l2(pooled).cpu().numpy()


class ImageEncoder(Encoder):
    """Pooled features of a vision backbone (timm or transformers), square-padded, resized, normalised."""

    modality = "image"

    def preprocess(self, image):
        import torch
        from PIL import Image

        image = image.convert("RGB")
        side = max(image.size)  # pad to square (white, like shop photos) instead of cropping garments
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        canvas = canvas.resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def _norm(self, mean, std):
        import torch

        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def encode(self, images) -> np.ndarray:
        import torch

        return self.encode_tensor(torch.stack([self.preprocess(im) for im in images]))


class TimmImageEncoder(ImageEncoder):
    def __init__(self, cfg: dict, device: str = "cpu"):
        import timm
        import torch

        self.cfg, self.device = cfg, device
        self.image_size = int(cfg.get("image_size", 224))
        try:
            self.model = timm.create_model(cfg["arch"], pretrained=False, num_classes=0)
        except RuntimeError as e:
            raise EncoderError(f"unknown timm architecture {cfg['arch']!r}: {e}") from e
        if not cfg.get("checkpoint"):
            raise EncoderError(f"image encoder {cfg.get('name', cfg['arch'])} has no checkpoint: refusing random weights")
        path = resolve_path(cfg["checkpoint"])
        if not Path(path).is_file():
            raise EncoderError(f"checkpoint path {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if cfg.get("rename_keys") == "by_position":
            state = self._rename_by_position(state)
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "head.fc.", "fc."))}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise EncoderError(f"checkpoint {path} does not match {cfg['arch']}: {str(e)[:300]}") from e
        if missing or unexpected:
            raise EncoderError(f"checkpoint {path} does not match {cfg['arch']}: missing {missing[:3]}..., "
                               f"unexpected {unexpected[:3]}...")
        self.model = self.model.to(device).eval()
        self.weights = weights_hash(path)
        self.dim = int(self.model.num_features)
        data_cfg = timm.data.resolve_data_config({}, model=self.model)
        self._norm(cfg.get("mean", data_cfg["mean"]), cfg.get("std", data_cfg["std"]))

    def _rename_by_position(self, state: dict) -> dict:
        target = self.model.state_dict()
        full = [k for k in target]  # includes classifier when num_classes=0? no: map onto backbone keys only
        src = [k for k in state if not k.startswith(("_fc.", "fc."))]
        if len(src) != len(full):
            raise EncoderError(f"checkpoint has {len(src)} backbone tensors, {self.cfg['arch']} has {len(full)}")
        renamed = {}
        for s, t in zip(src, full):
            if tuple(state[s].shape) != tuple(target[t].shape):
                raise EncoderError(f"checkpoint tensor {s} {tuple(state[s].shape)} does not fit {t} "
                                   f"{tuple(target[t].shape)}")
            renamed[t] = state[s]
        return renamed

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _l2(self.model(x.to(self.device))).cpu().numpy()


class HFVisionEncoder(ImageEncoder):
    """transformers vision backbones (ViT, ...): pooled output or mean of the last hidden state."""

    def __init__(self, cfg: dict, device: str = "cpu"):
        from transformers import AutoConfig, AutoModel

        self.cfg, self.device = cfg, device
        path = resolve_path(cfg["model"])
        try:
            self.model = AutoModel.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise EncoderError(f"cannot load vision encoder {cfg['model']!r}: {e}") from e
        conf = AutoConfig.from_pretrained(path)
        self.image_size = int(cfg.get("image_size", getattr(conf, "image_size", 224)))
        self.weights = weights_hash(path)
        self.dim = int(conf.hidden_size)
        self._norm(cfg.get("mean", [0.5, 0.5, 0.5]), cfg.get("std", [0.5, 0.5, 0.5]))

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(pixel_values=x.to(self.device))
            pooled = getattr(out, "pooler_output", None)
            pooled = out.last_hidden_state.mean(1) if pooled is None else pooled
        return _l2(pooled).cpu().numpy()


class OpenClipEncoder(Encoder):
    """open_clip model: one joint space for text and images. `pretrained` = known tag or local checkpoint."""

    modality = "joint"

    def __init__(self, cfg: dict, device: str = "cpu"):
        import open_clip

        self.cfg, self.device = cfg, device
        if cfg.get("model_config"):  # a local architecture JSON, e.g. a small custom CLIP
            open_clip.add_model_config(resolve_path(cfg["model_config"]))
        pretrained = cfg.get("pretrained")
        if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
            pretrained = resolve_path(pretrained)
            if not Path(pretrained).is_file():
                raise EncoderError(f"checkpoint path {pretrained} does not exist")
        if not pretrained:
            raise EncoderError(f"CLIP encoder {cfg.get('name', cfg['arch'])} has no pretrained weights configured")
        try:
            self.model, _, self.transform = open_clip.create_model_and_transforms(cfg["arch"], pretrained=pretrained,
                                                                                  device=device)
        except RuntimeError as e:
            raise EncoderError(f"cannot load CLIP {cfg['arch']} from {pretrained}: {e}") from e
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(cfg["arch"])
        self.weights = weights_hash(pretrained)
        self.dim = int(self.model.text_projection.shape[1] if hasattr(self.model, "text_projection")
                       and self.model.text_projection is not None else self.model.visual.output_dim)
        self.image_size = self.model.visual.image_size[0] if isinstance(self.model.visual.image_size, tuple) \
            else self.model.visual.image_size

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _l2(self.model.encode_text(self.tokenizer([t[:MAX_TEXT_CHARS] for t in texts]).to(self.device))
                       ).cpu().numpy()

    def preprocess(self, image):
        return self.transform(image.convert("RGB"))

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _l2(self.model.encode_image(x.to(self.device))).cpu().numpy()

    def encode(self, items) -> np.ndarray:
        import torch

        if items and isinstance(items[0], str):
            return self.encode_texts(items)
        return self.encode_tensor(torch.stack([self.preprocess(im) for im in items]))


FAMILIES = {"hf_text": HFTextEncoder, "timm_image": TimmImageEncoder, "hf_vision": HFVisionEncoder,
            "open_clip": OpenClipEncoder}
_LOADED: dict = {}


def load_encoder(spec, device: str | None = None) -> Encoder:
    """Load (once per process: workers keep their model resident) an encoder by name or config dict."""
    cfg = encoder_config(spec)
    if cfg.get("family") not in FAMILIES:
        raise EncoderError(f"encoder {cfg.get('name')!r}: unknown family {cfg.get('family')!r}; "
                           f"known: {', '.join(FAMILIES)}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_threads()
    memo = json.dumps(cfg, sort_keys=True) + device
    if memo not in _LOADED:
        _LOADED[memo] = FAMILIES[cfg["family"]](cfg, device)
    return _LOADED[memo]
