"""Fusion of per-modality embeddings into one representation. A missing modality (e.g. no image) is handled by a
mask: its vector is never read; a learned 'missing' embedding and an availability flag stand in for it."""
from __future__ import annotations

import torch
from torch import nn


def mlp(d_in: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))


def masked(x: torch.Tensor, avail: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """x where available, the learned missing vector elsewhere (torch.where: NaN/garbage rows cannot leak)."""
    return torch.where(avail[:, None], x, missing.expand_as(x))


def gate(x: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Blank the rows of a missing modality before any layer reads them: whatever they hold (zeros, NaN, inf)
    never reaches an activation, so it cannot overflow into a NaN that a later mask would multiply by zero."""
    return torch.where(avail[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


class Unimodal(nn.Module):
    def __init__(self, dims: dict, hidden: int, dropout: float, **_):
        super().__init__()
        (self.name, d), = dims.items()
        self.missing = nn.Parameter(torch.zeros(hidden))
        self.body = mlp(d, hidden, dropout)
        self.out_dim = hidden

    def forward(self, x: dict, avail: dict) -> torch.Tensor:
        h = self.body(gate(x[self.name], avail[self.name]))
        return masked(h, avail[self.name], self.missing)  # no input: the model falls back to its learned prior


class Early(nn.Module):
    def __init__(self, dims: dict, hidden: int, dropout: float, **_):
        super().__init__()
        self.names = list(dims)
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m, d in dims.items()})
        self.body = nn.Sequential(mlp(sum(dims.values()) + len(dims), hidden, dropout), mlp(hidden, hidden, dropout))
        self.out_dim = hidden

    def forward(self, x, avail):
        parts = [masked(gate(x[m], avail[m]), avail[m], self.missing[m]) for m in self.names]
        flags = torch.stack([avail[m].float() for m in self.names], 1)
        return self.body(torch.cat(parts + [flags], 1))


class Late(nn.Module):
    def __init__(self, dims: dict, hidden: int, dropout: float, **_):
        super().__init__()
        self.names = list(dims)
        self.branches = nn.ModuleDict({m: mlp(d, hidden, dropout) for m, d in dims.items()})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden)) for m in dims})
        self.fuse = mlp(hidden * len(dims) + len(dims), hidden, dropout)
        self.out_dim = hidden

    def forward(self, x, avail):
        parts = [masked(self.branches[m](gate(x[m], avail[m])), avail[m], self.missing[m]) for m in self.names]
        flags = torch.stack([avail[m].float() for m in self.names], 1)
        return self.fuse(torch.cat(parts + [flags], 1))


class Attention(nn.Module):
    def __init__(self, dims: dict, hidden: int, dropout: float, heads: int = 4, **_):
        super().__init__()
        self.names = list(dims)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.modality = nn.Parameter(torch.randn(len(dims), hidden) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden))
        self.attn = nn.TransformerEncoderLayer(hidden, heads, hidden * 2, dropout, batch_first=True,
                                               norm_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.out_dim = hidden

    def forward(self, x, avail):
        tokens = torch.stack([self.proj[m](gate(x[m], avail[m])) for m in self.names], 1) + self.modality
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], 1)
        # the CLS token is always present, so a product with a single modality still attends to something
        pad = torch.stack([torch.ones_like(avail[self.names[0]])] + [avail[m] for m in self.names], 1).logical_not()
        return self.norm(self.attn(tokens, src_key_padding_mask=pad)[:, 0])


FUSIONS = {"unimodal": Unimodal, "early": Early, "late": Late, "attention": Attention}


def build_fusion(cfg: dict, dims: dict) -> nn.Module:
    if cfg["fusion"] not in FUSIONS:
        raise ValueError(f"unknown fusion {cfg['fusion']!r}; known: {', '.join(FUSIONS)}")
    return FUSIONS[cfg["fusion"]]({m: dims[m] for m in cfg["modalities"]}, hidden=cfg["hidden"],
                                  dropout=cfg["dropout"], heads=cfg.get("heads", 4))
