"""Hierarchical classifier (Lightning): fused representation -> one head per taxonomy level, dynamic masking."""
from __future__ import annotations

import lightning as L
import torch
from torch import nn

from models.fusion import build_fusion
from models.hierarchy import Hierarchy


class HierarchicalClassifier(L.LightningModule):
    def __init__(self, cfg: dict, dims: dict, nodes: list, depth: int):
        super().__init__()
        self.save_hyperparameters(ignore=["nodes"])
        self.cfg, self.dims, self.modalities = cfg, dims, list(cfg["modalities"])
        self.hierarchy = Hierarchy([tuple(n) for n in nodes], depth)
        self.fusion = build_fusion(cfg, dims)
        self.heads = nn.ModuleList([nn.Linear(self.fusion.out_dim, n) for n in self.hierarchy.sizes])
        self.dropout = nn.Dropout(cfg["dropout"])

    def forward(self, x: dict, avail: dict) -> list[torch.Tensor]:
        h = self.dropout(self.fusion(x, avail))
        return [head(h) for head in self.heads]

    def _step(self, batch):
        *feats, labels = batch
        n = len(self.modalities)
        x = dict(zip(self.modalities, feats[:n]))
        avail = dict(zip(self.modalities, feats[n:]))
        logits = self(x, avail)
        if self.cfg.get("teacher_forcing", True):
            return self.hierarchy.masked_nll(logits, labels)
        return self.hierarchy.flat_nll(logits, labels)

    def training_step(self, batch, _):
        loss = self._step(batch)
        self.log("train_loss", loss, prog_bar=False, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        self.log("val_loss", self._step(batch), prog_bar=True, on_epoch=True, on_step=False)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"])

    @torch.inference_mode()
    def predict_arrays(self, x: dict, avail: dict, batch_size: int = 4096):
        """-> (leaf paths, per-level confidence [N, depth], path probability [N])."""
        self.eval()
        leaves, confs, probs = [], [], []
        n = len(next(iter(x.values())))
        for s in range(0, n, batch_size):
            xb = {m: torch.as_tensor(x[m][s:s + batch_size], device=self.device) for m in self.modalities}
            ab = {m: torch.as_tensor(avail[m][s:s + batch_size], device=self.device) for m in self.modalities}
            best, conf, prob = self.hierarchy.decode(self(xb, ab))
            leaves.append(best), confs.append(conf), probs.append(prob)
        best = torch.cat(leaves)
        return [self.hierarchy.leaves[i] for i in best.tolist()], torch.cat(confs).numpy(), torch.cat(probs).numpy()
