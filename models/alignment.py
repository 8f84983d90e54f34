"""Catalogue-aligned joint image-text space, used when no CLIP weights are available.

Projection heads over frozen text and image embeddings, trained with the symmetric CLIP InfoNCE loss (learnable
temperature) on the catalogue's own (title, image) pairs. A product's joint vector is the normalised mean of its
two projections, or its text projection alone when it has no image (Flipkart), so every product gets one.

    heads = train_alignment(text_emb, image_emb, has_image, cfg)      # cfg: dict, overrides DEFAULT_CFG
    joint = joint_embed(heads, text_emb, image_emb, has_image)       # float32 [n, dim], L2-normalised
    save_heads(heads, dir); load_heads(dir)                          # alignment.safetensors + alignment.json
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Linear heads on centred inputs: as good as an MLP on a few thousand pairs here and ~10x cheaper (CPU seconds).
DEFAULT_CFG = {"dim": 256, "hidden": 0, "epochs": 40, "batch_size": 1024, "lr": 2e-3, "weight_decay": 1e-4,
               "init_temperature": 0.07, "max_logit_scale": 100.0, "seed": 0}


def _head(in_dim: int, dim: int, hidden: int) -> nn.Module:
    if hidden:
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
    return nn.Linear(in_dim, dim)


class AlignmentHeads(nn.Module):
    def __init__(self, text_dim: int, image_dim: int, dim: int = 256, hidden: int = 0,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.config = {"text_dim": text_dim, "image_dim": image_dim, "dim": dim, "hidden": hidden,
                       "init_temperature": init_temperature, "max_logit_scale": max_logit_scale}
        self.register_buffer("text_mean", torch.zeros(text_dim))  # centring: frozen features share a big offset
        self.register_buffer("image_mean", torch.zeros(image_dim))
        self.text = _head(text_dim, dim, hidden)
        self.image = _head(image_dim, dim, hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature), dtype=torch.float32))
        self.history: list[float] = []
        self.final_loss = float("nan")

    def project_text(self, x):
        return F.normalize(self.text(x - self.text_mean), dim=-1)

    def project_image(self, x):
        return F.normalize(self.image(x - self.image_mean), dim=-1)

    def forward(self, text, image):
        return self.project_text(text), self.project_image(image)


def clip_loss(t, i, logit_scale, max_logit_scale: float = 100.0):
    """Symmetric InfoNCE: each text must pick its own image among the batch, and each image its own text."""
    logits = logit_scale.exp().clamp(max=max_logit_scale) * t @ i.T
    target = torch.arange(len(t), device=t.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _tensor(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _pairs(text, image, has_image) -> np.ndarray:
    has_image = np.asarray(has_image, dtype=bool)
    if len(has_image) != len(text) or len(text) != len(image):
        raise ValueError(f"text {len(text)}, image {len(image)} and has_image {len(has_image)} rows differ")
    finite = np.isfinite(text).all(1) & np.isfinite(image).all(1)
    return np.flatnonzero(has_image & finite)


def train_alignment(text_emb: np.ndarray, image_emb: np.ndarray, has_image: np.ndarray, cfg: dict | None = None,
                    **overrides) -> AlignmentHeads:
    """Fit the heads on the rows with both a text and an image vector (has_image & finite)."""
    cfg = {**DEFAULT_CFG, **(cfg or {}), **overrides}
    unknown = set(cfg) - set(DEFAULT_CFG)
    if unknown:
        raise ValueError(f"unknown alignment config keys {sorted(unknown)}; known: {sorted(DEFAULT_CFG)}")
    idx = _pairs(text_emb, image_emb, has_image)
    if len(idx) < 2:
        raise ValueError(f"joint space needs at least 2 (text, image) pairs, got {len(idx)}")
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    t_all, i_all = _tensor(text_emb[idx]), _tensor(image_emb[idx])
    heads = AlignmentHeads(text_emb.shape[1], image_emb.shape[1], cfg["dim"], cfg["hidden"],
                           cfg["init_temperature"], cfg["max_logit_scale"])
    heads.text_mean.copy_(t_all.mean(0))
    heads.image_mean.copy_(i_all.mean(0))
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = len(idx) // cfg["batch_size"] + (len(idx) % cfg["batch_size"] >= 2)  # no batch of 1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch,
                                                pct_start=0.1)
    t0 = time.perf_counter()
    heads.train()
    for _ in range(cfg["epochs"]):
        order = torch.from_numpy(rng.permutation(len(idx)))
        total, count = 0.0, 0
        for start in range(0, len(order), cfg["batch_size"]):
            b = order[start:start + cfg["batch_size"]]
            if len(b) < 2:  # a lone leftover row has no negatives to contrast with
                continue
            t, i = heads(t_all[b], i_all[b])
            loss = clip_loss(t, i, heads.logit_scale, cfg["max_logit_scale"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(b), count + len(b)
        heads.history.append(total / max(count, 1))
    heads.eval()
    heads.final_loss = heads.history[-1]
    heads.train_pairs, heads.train_seconds = len(idx), time.perf_counter() - t0
    return heads


def joint_embed(heads: AlignmentHeads, text_emb: np.ndarray, image_emb: np.ndarray,
                has_image: np.ndarray) -> np.ndarray:
    """Normalised mean of the two projections where an image vector exists, the text projection alone otherwise.
    Rows whose text vector is not finite come out NaN (no fake vector)."""
    has_image = np.asarray(has_image, dtype=bool) & np.isfinite(image_emb).all(1)
    text_ok = np.isfinite(text_emb).all(1)
    out = np.full((len(text_emb), heads.config["dim"]), np.nan, dtype=np.float32)
    with torch.inference_mode():
        t = heads.project_text(_tensor(np.where(text_ok[:, None], text_emb, 0)))
        both = has_image & text_ok
        if both.any():
            i = heads.project_image(_tensor(image_emb[both]))
            t[torch.from_numpy(both)] = F.normalize(t[torch.from_numpy(both)] + i, dim=-1)
    out[text_ok] = t.numpy()[text_ok]
    return out


def save_heads(heads: AlignmentHeads, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, out / "alignment.safetensors")
    meta = {**heads.config, "final_loss": heads.final_loss, "history": heads.history,
            "train_pairs": getattr(heads, "train_pairs", None)}
    (out / "alignment.json").write_text(json.dumps(meta, indent=1))
    return out


def load_heads(out_dir: str | Path) -> AlignmentHeads:
    from safetensors.torch import load_file

    out = Path(out_dir)
    if not (out / "alignment.json").exists() or not (out / "alignment.safetensors").exists():
        raise FileNotFoundError(f"{out} holds no alignment heads (alignment.json + alignment.safetensors)")
    meta = json.loads((out / "alignment.json").read_text())
    arch = {k: meta[k] for k in ("text_dim", "image_dim", "dim", "hidden", "init_temperature", "max_logit_scale")
            if k in meta}
    heads = AlignmentHeads(**arch)
    heads.load_state_dict(load_file(out / "alignment.safetensors"))
    heads.history, heads.final_loss = meta.get("history", []), meta.get("final_loss", float("nan"))
    return heads.eval()


def retrieval_recall(heads: AlignmentHeads, text_emb: np.ndarray, image_emb: np.ndarray, ks=(1, 5)) -> dict:
    """Text -> image retrieval among the given pairs: share of texts whose own image ranks in the top k
    (ties count against), with chance levels for comparison."""
    with torch.inference_mode():
        t, i = heads(_tensor(text_emb), _tensor(image_emb))
        sims = t @ i.T
        rank = (sims >= sims.diag()[:, None]).sum(1) - 1
    n = max(len(text_emb), 1)
    return ({f"recall@{k}": float((rank < k).float().mean()) for k in ks}
            | {f"chance@{k}": min(k / n, 1.0) for k in ks} | {"pairs": len(text_emb)})
