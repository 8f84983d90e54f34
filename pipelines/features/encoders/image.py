"""Image encoders: `timm_image` (a timm backbone from a local checkpoint) and `hf_vision` (transformers vision
backbones), both fed by the same square-padding preprocessing."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.features.encoders.base import Encoder, EncoderError, check_loading, l2, quiet_transformers
from pipelines.features.encoders.weights import resolve_path, weights_hash


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
    """A PIL image, or a path to one: read and decoded under the pipeline's one image guard (regular file, size and
    pixel limits), fully, so truncated files fail now, not later."""
    if isinstance(item, (str, Path)):
        from pipelines.ingest.images import load_image

        return load_image(item)
    return item


class ImageEncoder(Encoder):
    modality = "image"
    preprocess: SquarePad

    def encode(self, images) -> np.ndarray:
        import torch

        return self.encode_tensor(torch.stack([self.preprocess(open_image(im)) for im in images]))


def read_state_dict(path: str) -> dict:
    """A checkpoint's tensors (safetensors or torch, unwrapped from the usual wrapper keys and DataParallel's
    `module.` prefix); anything unreadable is an EncoderError naming the file."""
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


class TimmImageEncoder(ImageEncoder):
    """A timm backbone without its classifier (num_classes=0 -> pooled features) from a local checkpoint."""

    def __init__(self, cfg: dict, device: str = "cpu", weights_cache=None):
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
        self.weights = weights_hash(path, weights_cache)
        self.dim = int(self.model.num_features)
        data_cfg = timm.data.resolve_data_config({}, model=self.model)  # the weights' own normalisation by default
        self.preprocess = SquarePad(cfg.get("image_size", data_cfg["input_size"][-1]),
                                    cfg.get("mean", data_cfg["mean"]), cfg.get("std", data_cfg["std"]))

    def _load_weights(self, path: str):
        state = read_state_dict(path)
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
            return l2(self.model(x.to(self.device))).cpu().numpy()


def _image_normalisation(path: str, conf) -> tuple[list, list, int]:
    """(mean, std, size) from the checkpoint's preprocessor_config.json, else its config, else 0.5s."""
    mean, std, size = [0.5] * 3, [0.5] * 3, getattr(conf, "image_size", 224)
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path)
        mean, std = proc.image_mean, proc.image_std
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no preprocessor_config.json: config values or [0.5]s
    return mean, std, size[0] if isinstance(size, (list, tuple)) else size


class HFVisionEncoder(ImageEncoder):
    """transformers vision backbones (ViT, DINOv2, ConvNeXt, ...). Pooling: `cls` (token 0 of the last hidden
    state), `mean` (tokens or spatial mean) or `pooler` (the model's trained pooler); `auto` picks pooler if its
    weights were in the checkpoint, else cls for token models, spatial mean for conv models."""

    def __init__(self, cfg: dict, device: str = "cpu", weights_cache=None):
        from transformers import AutoConfig, AutoModel

        quiet_transformers()
        self.cfg, self.device = cfg, device
        path = resolve_path(cfg["model"])
        try:
            conf = AutoConfig.from_pretrained(path)
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise EncoderError(f"cannot load vision encoder {cfg['model']!r} from {path}: {e}") from e
        check_loading(info, path, allow=("pooler.",))
        self.model = model.float().to(device).eval()
        has_pooler = not any(k.startswith("pooler.") for k in info.get("missing_keys", ()))
        self.pooling = cfg.get("pooling", "auto")
        if self.pooling == "auto":
            self.pooling = "pooler" if has_pooler and getattr(self.model, "pooler", None) is not None else "cls"
        if self.pooling == "pooler" and not has_pooler:
            raise EncoderError(f"{path}: pooling 'pooler' asked for but the checkpoint has no pooler weights")
        self.weights = weights_hash(path, weights_cache)
        self.dim = int(getattr(conf, "hidden_size", None) or conf.hidden_sizes[-1])
        mean, std, size = _image_normalisation(path, conf)
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
        return l2(pooled.reshape(len(pooled), -1)).cpu().numpy()
