"""Hierarchical classifier (Lightning): fused representation -> one head per taxonomy level, dynamic masking.

Batches are (x_1..x_M, avail_1..avail_M, labels) for the config's M modalities; labels are node indices per level
(-1 below a shallow label). Validation logs val_loss and val_hF1 (best valid path vs label, read at the label's
depth), either of which can drive early stopping.
"""
from __future__ import annotations

import lightning as L
import numpy as np
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
        self._val = []

    def forward(self, x: dict, avail: dict) -> list[torch.Tensor]:
        h = self.dropout(self.fusion(x, avail))
        return [head(h) for head in self.heads]

    def _unpack(self, batch):
        *feats, labels = batch
        n = len(self.modalities)
        return dict(zip(self.modalities, feats[:n])), dict(zip(self.modalities, feats[n:])), labels

    def loss(self, logits, labels):
        if self.cfg.get("teacher_forcing", True):
            return self.hierarchy.masked_nll(logits, labels, smoothing=self.cfg.get("label_smoothing", 0.0))
        return self.hierarchy.flat_nll(logits, labels)

    def training_step(self, batch, _):
        x, avail, labels = self._unpack(batch)
        loss = self.loss(self(x, avail), labels)
        self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(labels))
        return loss

    def validation_step(self, batch, _):
        x, avail, labels = self._unpack(batch)
        logits = self(x, avail)
        self.log("val_loss", self.loss(logits, labels), on_epoch=True, on_step=False, batch_size=len(labels))
        best, _, _ = self.hierarchy.decode(logits)
        self._val.append(self.hierarchy.hf1_counts(best.to(labels.device), labels))

    def on_validation_epoch_end(self):
        overlap, n_pred, n_true = torch.stack(self._val).sum(0).double().tolist()
        self._val.clear()
        hp, hr = overlap / max(n_pred, 1), overlap / max(n_true, 1)
        self.log("val_hF1", 2 * hp * hr / (hp + hr) if hp + hr else 0.0)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg["lr"], weight_decay=self.cfg["weight_decay"])
        if self.cfg.get("schedule") != "cosine":
            return opt
        # cosine over the configured epochs: early stopping may end sooner, the schedule does not depend on it
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs, eta_min=self.cfg["lr"] / 50)
        return {"optimizer": opt, "lr_scheduler": sched}

    def fallback(self, avail: dict) -> np.ndarray:
        """Rows where none of this model's modalities is available: their prediction is the model's learned
        prior for such products (the fusion's 'missing' vectors), a valid path but no evidence about the item."""
        return ~np.any([np.asarray(avail[m], bool) for m in self.modalities], axis=0)

    @torch.inference_mode()
    def predict_arrays(self, x: dict, avail: dict, batch_size: int = 4096):
        """-> (leaf paths, per-level confidence [N, depth] (NaN below a shallow leaf), path probability [N])."""
        self.eval()
        leaves, confs, probs = [], [], []
        n = len(next(iter(x.values())))
        for s in range(0, n, batch_size):
            xb = {m: torch.tensor(x[m][s:s + batch_size], device=self.device) for m in self.modalities}
            ab = {m: torch.tensor(avail[m][s:s + batch_size], device=self.device) for m in self.modalities}
            best, conf, prob = self.hierarchy.decode(self(xb, ab))
            leaves.append(best), confs.append(conf), probs.append(prob)
        if not leaves:
            return [], np.zeros((0, self.hierarchy.depth), np.float32), np.zeros(0, np.float32)
        best = torch.cat(leaves)
        return [self.hierarchy.leaves[i] for i in best.tolist()], torch.cat(confs).numpy(), torch.cat(probs).numpy()


class IndexBatches(torch.utils.data.Dataset):
    """Tensors held in memory, indexed by a whole batch of row ids at once (no per-item collate)."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, rows):
        return tuple(t[rows] for t in self.tensors)


class EmbeddingData(L.LightningDataModule):
    """Precomputed embeddings of the train and val rows as in-memory tensors, served in shuffled batches."""

    def __init__(self, features: dict, available: dict, labels_idx: np.ndarray, split: np.ndarray,
                 modalities: list, batch_size: int, seed: int = 0):
        super().__init__()
        self.batch_size, self.seed = batch_size, seed
        split = np.asarray(split)
        self.data = {}
        for name in ("train", "val"):
            rows = np.flatnonzero(split == name)
            if not len(rows):
                raise ValueError(f"no '{name}' rows in split: training needs both train and val rows")
            self.data[name] = IndexBatches(
                [torch.from_numpy(np.ascontiguousarray(features[m][rows], dtype=np.float32)) for m in modalities]
                + [torch.from_numpy(np.ascontiguousarray(available[m][rows], dtype=bool)) for m in modalities]
                + [torch.from_numpy(labels_idx[rows])])

    def _loader(self, name, shuffle):
        data = self.data[name]
        order = (torch.utils.data.RandomSampler(data, generator=torch.Generator().manual_seed(self.seed))
                 if shuffle else torch.utils.data.SequentialSampler(data))
        batches = torch.utils.data.BatchSampler(order, self.batch_size if shuffle else 4096, drop_last=False)
        return torch.utils.data.DataLoader(data, sampler=batches, batch_size=None)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)
