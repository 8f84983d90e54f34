"""`hf_text`: any transformers encoder (MiniLM, RoBERTa, XLM-R, ...) with attention-masked mean pooling."""
from __future__ import annotations

import numpy as np

from pipelines.features.encoders.base import (MAX_TEXT_CHARS, Encoder, EncoderError, check_loading, l2,
                                              quiet_transformers)
from pipelines.features.encoders.weights import resolve_path, weights_hash


class HFTextEncoder(Encoder):
    """Mean pooling over the tokens the attention mask keeps: padding never moves a vector."""

    modality = "text"

    def __init__(self, cfg: dict, device: str = "cpu", weights_cache=None):
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        self.cfg, self.device = cfg, device
        path = resolve_path(cfg["model"])
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise EncoderError(f"cannot load text encoder {cfg['model']!r} from {path}: {e}") from e
        check_loading(info, path, allow=("pooler.",))  # mean pooling does not use the pooler
        self.model = model.float().to(device).eval()
        self.weights = weights_hash(path, weights_cache)
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
        return l2(pooled).cpu().numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.forward(self.tokenize(list(texts)))
