"""Text, image and joint (CLIP) encoders behind one small interface, chosen by config.

    enc = load_encoder("minilm")            # a name in models/configs/encoders.yaml, or a config dict
    enc.key, enc.dim, enc.modality          # identity (name + config + weights hash + preprocessing version)
    enc.encode(items) -> float32 [n, dim]   # texts (str), or images (PIL.Image or file path); L2-normalised

Families: `hf_text` (any transformers encoder, attention-masked mean pooling), `timm_image` and `hf_vision`
(pooled backbone features), `open_clip` (one space for both). Loading is path-based: a local folder/file,
`package:<pkg>/<path>` for weights shipped inside an installed PyPI package, or a hub id that must already be in
the local cache (no network here). Nothing falls back to random weights: a missing, unknown or mismatched
checkpoint raises EncoderError naming the problem.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import yaml

PREPROCESS_VERSION = "1"  # bump when preprocessing changes what a vector means: it is part of every cache key
CONFIG_PATH = Path(__file__).resolve().parents[1] / "models" / "configs" / "encoders.yaml"
MAX_TEXT_CHARS = 2000  # floor of the char prefix we tokenise: a 100 kB description must not cost 100 kB of work
DEFAULTS = {"text": "minilm", "image": "efficientnet-lite0"}
NOT_IDENTITY = ("batch_size", "name", "num_workers")  # config fields that do not change the vectors


class EncoderError(ValueError):
    """Unknown encoder, missing or mismatched weights: a configuration problem, reported by name."""


def encoder_config(spec) -> dict:
    if isinstance(spec, dict):
        if "family" not in spec:
            raise EncoderError(f"encoder config {spec!r} has no 'family'; known: {', '.join(FAMILIES)}")
        return dict(spec)
    configs = yaml.safe_load(CONFIG_PATH.read_text())
    if spec not in configs:
        raise EncoderError(f"unknown encoder {spec!r}; configured in {CONFIG_PATH.name}: {', '.join(configs)} "
                           "(or pass a config dict)")
    return {"name": spec, **configs[spec]}


def resolve_path(ref: str) -> str:
    """`package:pkg/sub/path` -> a file inside an installed package; a path-like ref must exist; else a hub id."""
    ref = str(ref)
    if ref.startswith("package:"):
        pkg, _, rest = ref[len("package:"):].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise EncoderError(f"weights package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})")
        path = Path(list(spec.submodule_search_locations)[0]) / rest
        if not path.exists():
            raise EncoderError(f"{ref}: {path} does not exist")
        return str(path)
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or ref.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise EncoderError(f"checkpoint path {path} does not exist")
    return ref  # hub id like org/name: loaders look in the local cache (offline) and fail clearly if absent


_HASH_MEMO: dict = {}


def _hash_cache_file() -> Path:
    return Path(os.environ.get("PRODCAT_CACHE", Path.home() / ".cache" / "prodcat")) / "weights-sha256.json"


def weights_hash(path: str) -> str:
    """sha256 over a weight file or every file of a model folder, computed once per (path, size, mtime) and kept
    in memory and in a small JSON file so other processes skip re-reading hundreds of MB."""
    p = Path(path)
    if not p.exists():
        return hashlib.sha256(path.encode()).hexdigest()[:16]  # hub id: its identity is the id itself
    files = sorted(f for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    stamp = json.dumps([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    stamp = hashlib.sha256(stamp.encode()).hexdigest()
    if stamp in _HASH_MEMO:
        return _HASH_MEMO[stamp]
    cache_file = _hash_cache_file()
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    if stamp not in known:
        h = hashlib.sha256()
        for f in files:
            h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        known[stamp] = h.hexdigest()[:16]
        try:  # best effort: a read-only home only costs a re-hash next time
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, cache_file)
        except OSError:
            pass
    _HASH_MEMO[stamp] = known[stamp]
    return known[stamp]


def cpu_threads() -> int:
    """Cores this process may use (affinity/cgroup aware), or PRODCAT_THREADS."""
    if os.environ.get("PRODCAT_THREADS"):
        return max(1, int(os.environ["PRODCAT_THREADS"]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def configure_threads():
    import torch

    n = cpu_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _l2(x):
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def _quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


class Encoder:
    modality = ""
    cfg: dict
    dim: int
    weights: str  # sha256 prefix of the weight files

    @property
    def key(self) -> str:
        """Cache namespace: the name for humans, a digest of everything that changes the vectors."""
        ident = json.dumps({k: v for k, v in self.cfg.items() if k not in NOT_IDENTITY}, sort_keys=True)
        digest = hashlib.sha256(f"{ident}|{self.weights}|{PREPROCESS_VERSION}".encode()).hexdigest()[:12]
        name = str(self.cfg.get("name") or self.cfg["family"]).replace("/", "_")
        return f"{name}-{digest}"

    @property
    def batch_size(self) -> int:
        return int(self.cfg.get("batch_size", 64))


class HFTextEncoder(Encoder):
    """Any transformers encoder (MiniLM, RoBERTa, XLM-R, ...) with attention-masked mean pooling."""

    modality = "text"

    def __init__(self, cfg: dict, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        _quiet_transformers()
        self.cfg, self.device = cfg, device
        path = resolve_path(cfg["model"])
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise EncoderError(f"cannot load text encoder {cfg['model']!r} from {path}: {e}") from e
        _check_loading(info, path, allow=("pooler.",))  # mean pooling does not use the pooler
        self.model = model.float().to(device).eval()
        self.weights = weights_hash(path)
        self.dim = int(self.model.config.hidden_size)
        model_max = min(int(self.tokenizer.model_max_length or 512),
                        int(getattr(self.model.config, "max_position_embeddings", 512) or 512))
        self.max_length = min(int(cfg.get("max_length", model_max)), model_max)
        self.max_chars = max(MAX_TEXT_CHARS, 16 * self.max_length)  # >= max_length tokens in any real text

    def tokenize(self, texts: list[str]):
        return self.tokenizer([t[:self.max_chars] for t in texts], padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")

    def forward(self, batch) -> np.ndarray:
        import torch

        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return _l2(pooled).cpu().numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.forward(self.tokenize(list(texts)))


def _check_loading(info: dict, path, allow=()):
    """transformers silently random-initialises weights missing from a checkpoint: refuse that."""
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(allow)]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise EncoderError(f"checkpoint {path} does not match the architecture: missing {sorted(missing)[:3]}, "
                           f"mismatched {sorted(mismatched)[:3]}")


class SquarePad:
    """PIL image -> normalised CHW float tensor: pad to a square (white, like shop photos, so no garment is cropped),
    resize, normalise. A plain picklable object so DataLoader workers can run it."""

    def __init__(self, image_size: int, mean, std):
        self.image_size, self.mean, self.std = int(image_size), list(mean), list(std)

    def __call__(self, image):
        import torch
        from PIL import Image

        image = image.convert("RGB")
        side = max(image.size)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        canvas = canvas.resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return (x - mean[:, None, None]) / std[:, None, None]


def open_image(item):
    """A PIL image, or a path to one (decoded fully here so truncated files fail now, not later)."""
    from PIL import Image

    if isinstance(item, (str, Path)):
        with Image.open(item) as im:
            im.load()
            return im.copy()
    return item


class ImageEncoder(Encoder):
    modality = "image"
    preprocess: SquarePad

    def encode(self, images) -> np.ndarray:
        import torch

        return self.encode_tensor(torch.stack([self.preprocess(open_image(im)) for im in images]))


class TimmImageEncoder(ImageEncoder):
    """A timm backbone without its classifier (num_classes=0 -> pooled features) from a local checkpoint."""

    def __init__(self, cfg: dict, device: str = "cpu"):
        import timm

        self.cfg, self.device = cfg, device
        if not cfg.get("checkpoint"):
            raise EncoderError(f"image encoder {cfg.get('name', cfg.get('arch'))!r} has no checkpoint: "
                               "refusing random weights")
        path = resolve_path(cfg["checkpoint"])
        if not Path(path).is_file():
            raise EncoderError(f"checkpoint path {path} does not exist (or is not a file)")
        try:
            self.model = timm.create_model(cfg["arch"], pretrained=False, num_classes=0, **cfg.get("model_kwargs", {}))
        except (RuntimeError, KeyError, TypeError) as e:
            raise EncoderError(f"cannot build timm architecture {cfg['arch']!r}: {e}") from e
        self._load_weights(path)
        self.model = self.model.to(device).eval()
        self.weights = weights_hash(path)
        self.dim = int(self.model.num_features)
        data_cfg = timm.data.resolve_data_config({}, model=self.model)  # the weights' own normalisation by default
        self.preprocess = SquarePad(cfg.get("image_size", data_cfg["input_size"][-1]),
                                    cfg.get("mean", data_cfg["mean"]), cfg.get("std", data_cfg["std"]))

    def _read_state(self, path: str) -> dict:
        import torch

        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip/header errors all mean the same thing to the user
            raise EncoderError(f"checkpoint {path} is not a readable weight file: {type(e).__name__}: {e}") from e
        for wrapper in ("state_dict", "model", "state_dict_ema"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
        if not isinstance(state, dict):
            raise EncoderError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
        return {k.removeprefix("module."): v for k, v in state.items()}

    def _load_weights(self, path: str):
        state = self._read_state(path)
        head = str(self.model.pretrained_cfg.get("classifier") or "classifier")
        drop = (f"{head}.", "_fc.", "classifier.")  # the classifier is not part of a feature extractor
        state = {k: v for k, v in state.items() if not k.startswith(drop)}
        if self.cfg.get("rename_keys") == "by_position":
            state = self._rename_by_position(state, path)
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise EncoderError(f"checkpoint {path} does not match {self.cfg['arch']}: {str(e)[:300]}") from e
        if missing or unexpected:
            raise EncoderError(f"checkpoint {path} does not match {self.cfg['arch']}: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)")

    def _rename_by_position(self, state: dict, path: str) -> dict:
        """Same tensors in the same order under other names (e.g. EfficientNet-PyTorch -> timm); every shape
        is checked, so a different architecture cannot slip through."""
        target = self.model.state_dict()
        if len(state) != len(target):
            raise EncoderError(f"checkpoint {path} does not match {self.cfg['arch']}: {len(state)} backbone tensors "
                               f"vs {len(target)}")
        renamed = {}
        for (s, v), t in zip(state.items(), target):
            if tuple(v.shape) != tuple(target[t].shape):
                raise EncoderError(f"checkpoint {path} does not match {self.cfg['arch']}: tensor {s} "
                                   f"{tuple(v.shape)} does not fit {t} {tuple(target[t].shape)}")
            renamed[t] = v
        return renamed

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _l2(self.model(x.to(self.device))).cpu().numpy()


class HFVisionEncoder(ImageEncoder):
    """transformers vision backbones (ViT, DINOv2, ConvNeXt, ...). Pooling: `cls` (token 0 of the last hidden
    state), `mean` (tokens or spatial mean) or `pooler` (the model's trained pooler); `auto` picks pooler if its
    weights were in the checkpoint, else cls for token models, spatial mean for conv models."""

    def __init__(self, cfg: dict, device: str = "cpu"):
        from transformers import AutoConfig, AutoModel

        _quiet_transformers()
        self.cfg, self.device = cfg, device
        path = resolve_path(cfg["model"])
        try:
            conf = AutoConfig.from_pretrained(path)
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise EncoderError(f"cannot load vision encoder {cfg['model']!r} from {path}: {e}") from e
        _check_loading(info, path, allow=("pooler.",))
        self.model = model.float().to(device).eval()
        has_pooler = not any(k.startswith("pooler.") for k in info.get("missing_keys", ()))
        self.pooling = cfg.get("pooling", "auto")
        if self.pooling == "auto":
            self.pooling = "pooler" if has_pooler and _has_pooler(self.model) else "cls"
        if self.pooling == "pooler" and not has_pooler:
            raise EncoderError(f"{path}: pooling 'pooler' asked for but the checkpoint has no pooler weights")
        self.weights = weights_hash(path)
        self.dim = int(getattr(conf, "hidden_size", None) or conf.hidden_sizes[-1])
        mean, std, size = [0.5] * 3, [0.5] * 3, getattr(conf, "image_size", 224)
        try:
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(path)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no preprocessor_config.json: config values or [0.5]s
        size = size[0] if isinstance(size, (list, tuple)) else size
        self.preprocess = SquarePad(cfg.get("image_size", size), cfg.get("mean", mean), cfg.get("std", std))

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(pixel_values=x.to(self.device))
            hidden = out.last_hidden_state
            if self.pooling == "pooler":
                pooled = out.pooler_output
            elif hidden.dim() == 4:  # conv backbone: [B, C, H, W]
                pooled = hidden.mean((2, 3))
            else:
                pooled = hidden[:, 0] if self.pooling == "cls" else hidden.mean(1)
        return _l2(pooled.reshape(len(pooled), -1)).cpu().numpy()


def _has_pooler(model) -> bool:
    return getattr(model, "pooler", None) is not None


class OpenClipEncoder(Encoder):
    """open_clip model: one space for text and images. `arch` = an open_clip model name (or the stem of a local
    `model_config` JSON); `pretrained` = a tag in the local cache or a local checkpoint path."""

    modality = "joint"

    def __init__(self, cfg: dict, device: str = "cpu"):
        import open_clip

        self.cfg, self.device = cfg, device
        if cfg.get("model_config"):  # a local architecture JSON, e.g. a small custom CLIP; its stem is the name
            config_path = Path(resolve_path(cfg["model_config"]))
            if config_path.stem != cfg["arch"]:
                raise EncoderError(f"model_config {config_path.name} defines {config_path.stem!r}, not {cfg['arch']!r}")
            open_clip.add_model_config(config_path)
        if cfg["arch"] not in open_clip.list_models():
            raise EncoderError(f"unknown open_clip architecture {cfg['arch']!r} (give model_config for a custom one)")
        pretrained = cfg.get("pretrained")
        if not pretrained:
            raise EncoderError(f"CLIP encoder {cfg.get('name', cfg['arch'])!r} has no pretrained weights configured")
        if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
            pretrained = resolve_path(pretrained)
            if not Path(pretrained).is_file():
                raise EncoderError(f"checkpoint path {pretrained} does not exist (or is not a file)")
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
        self.weights = weights_hash(pretrained)
        self.dim = int(self.model.encode_text(self.tokenizer(["x"]).to(device)).shape[-1])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer([t[:MAX_TEXT_CHARS] for t in texts]).to(self.device)
            return _l2(self.model.encode_text(tokens)).cpu().numpy()

    def encode_tensor(self, x) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _l2(self.model.encode_image(x.to(self.device))).cpu().numpy()

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
    return s.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")) and Path(s).is_file()


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


FAMILIES = {"hf_text": HFTextEncoder, "timm_image": TimmImageEncoder, "hf_vision": HFVisionEncoder,
            "open_clip": OpenClipEncoder}
_LOADED: dict = {}


def load_encoder(spec, device: str | None = None) -> Encoder:
    """Load an encoder by name (models/configs/encoders.yaml) or config dict; once per process, so repeated
    calls (several assets, warm runs) reuse the resident model."""
    cfg = encoder_config(spec)
    if cfg["family"] not in FAMILIES:
        raise EncoderError(f"encoder {cfg.get('name')!r}: unknown family {cfg['family']!r}; "
                           f"known: {', '.join(FAMILIES)}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_threads()
    memo = json.dumps(cfg, sort_keys=True, default=str) + device
    if memo not in _LOADED:
        _LOADED[memo] = FAMILIES[cfg["family"]](cfg, device)
    return _LOADED[memo]
