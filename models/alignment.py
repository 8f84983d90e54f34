"""Catalogue-aligned joint image-text space: projection heads trained with the symmetric CLIP (InfoNCE) loss on
the catalogue's own (title, image) pairs. Used when no CLIP weights are available; text-only products (Flipkart)
still get a joint vector from the text head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class AlignmentHeads(nn.Module):
    def __init__(self, text_dim: int, image_dim: int, dim: int = 256, hidden: int = 512):
        super().__init__()
        self.config = {"text_dim": text_dim, "image_dim": image_dim, "dim": dim, "hidden": hidden}
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.image = nn.Sequential(nn.Linear(image_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def forward(self, text, image):
        return F.normalize(self.text(text), dim=-1), F.normalize(self.image(image), dim=-1)


def clip_loss(t, i, logit_scale):
    logits = logit_scale.exp().clamp(max=100) * t @ i.T
    target = torch.arange(len(t), device=t.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_alignment(text: np.ndarray, image: np.ndarray, has_image: np.ndarray, dim: int = 256, epochs: int = 20,
                    batch_size: int = 512, lr: float = 2e-3, seed: int = 0) -> AlignmentHeads:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(has_image)
    if len(idx) < 2:
        raise ValueError("joint space needs at least 2 (text, image) pairs")
    t_all = torch.from_numpy(np.ascontiguousarray(text[idx], dtype=np.float32))
    i_all = torch.from_numpy(np.ascontiguousarray(image[idx], dtype=np.float32))
    heads = AlignmentHeads(text.shape[1], image.shape[1], dim)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    heads.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(idx)))
        for start in range(0, len(order) - 1, batch_size):
            b = order[start:start + batch_size]
            if len(b) < 2:
                continue
            t, i = heads(t_all[b], i_all[b])
            loss = clip_loss(t, i, heads.logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
    heads.eval()
    heads.final_loss = float(loss.detach())
    return heads


def joint_embed(heads: AlignmentHeads, text: np.ndarray, image: np.ndarray, has_image: np.ndarray) -> np.ndarray:
    """Normalised mean of the two projections where an image exists, the text projection alone otherwise."""
    with torch.inference_mode():
        t = F.normalize(heads.text(torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))), dim=-1)
        mask = torch.from_numpy(np.asarray(has_image, dtype=bool))
        joint = t.clone()
        if mask.any():
            i = F.normalize(heads.image(torch.from_numpy(np.ascontiguousarray(image[mask.numpy()],
                                                                                 dtype=np.float32))), dim=-1)
            joint[mask] = F.normalize(t[mask] + i, dim=-1)
    return joint.numpy()


def save_heads(heads: AlignmentHeads, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, out / "alignment.safetensors")
    (out / "alignment.json").write_text(json.dumps(heads.config))
    return out


def load_heads(out_dir: str | Path) -> AlignmentHeads:
    from safetensors.torch import load_file

    out = Path(out_dir)
    heads = AlignmentHeads(**json.loads((out / "alignment.json").read_text()))
    heads.load_state_dict(load_file(out / "alignment.safetensors"))
    return heads.eval()


def retrieval_recall(heads: AlignmentHeads, text: np.ndarray, image: np.ndarray, ks=(1, 5)) -> dict:
    """Text -> image retrieval among the given pairs: share whose own image ranks in the top k."""
    with torch.inference_mode():
        t, i = heads(torch.from_numpy(np.asarray(text, np.float32)), torch.from_numpy(np.asarray(image, np.float32)))
        sims = t @ i.T
        rank = (sims > sims.diag()[:, None]).sum(1)
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks} | {"pairs": len(text),
                                                                             "chance@1": 1 / max(len(text), 1)}
