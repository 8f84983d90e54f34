"""What every encoder is: an identity (the cache key) and a vector shape, plus the helpers the families share."""
from __future__ import annotations

import hashlib
import json

PREPROCESS_VERSION = "1"  # bump when preprocessing changes what a vector means: it is part of every cache key
MAX_TEXT_CHARS = 2000  # floor of the char prefix we tokenise: a 100 kB description must not cost 100 kB of work
NOT_IDENTITY = ("batch_size", "name", "num_workers")  # config fields that do not change the vectors


class EncoderError(ValueError):
    """Unknown encoder, missing or mismatched weights: a configuration problem, reported by name."""


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


def l2(x):
    """Rows scaled to unit length (float32), so a dot product is a cosine."""
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1)


def quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def check_loading(info: dict, path, allow=()):
    """transformers silently random-initialises weights missing from a checkpoint: refuse that."""
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith(allow)]
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise EncoderError(f"checkpoint {path} does not match the architecture: missing {sorted(missing)[:3]}, "
                           f"mismatched {sorted(mismatched)[:3]}")
