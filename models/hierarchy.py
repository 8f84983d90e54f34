"""Taxonomy as tensors: per-level node indices, parent links, dynamic masking and best-valid-path decoding.

Level l holds the nodes of depth l+1. A product's label is a node index per level (-1 where its path is shorter).
Conditional log-probs are a softmax over the children of each parent only (dynamic masking): a node can only be
chosen under its own parent. Decoding scores every leaf path by the sum of its conditional log-probs and takes
the best one, so every prediction is a valid taxonomy path (not a greedy per-level choice).
"""
from __future__ import annotations

import torch


class Hierarchy:
    def __init__(self, nodes: list[tuple[str, ...]], depth: int):
        self.depth = depth
        self.level_nodes = [[n for n in nodes if len(n) == lvl + 1] for lvl in range(depth)]
        self.index = [{n: i for i, n in enumerate(ns)} for ns in self.level_nodes]
        node_set = set(nodes)
        self.leaves = [n for n in nodes if not any(c[:-1] == n for c in node_set if len(c) == len(n) + 1)]
        # parent index (in the level above) of every node; level 0 has the single root group 0
        self.parent = [torch.tensor([0 if lvl == 0 else self.index[lvl - 1][n[:-1]] for n in ns])
                       for lvl, ns in enumerate(self.level_nodes)]
        self.n_groups = [1] + [len(ns) for ns in self.level_nodes[:-1]]
        # leaf path membership: path_index[lvl][leaf] = node index at lvl or -1 (shallow leaf)
        self.path_index = torch.tensor([[self.index[lvl][leaf[:lvl + 1]] if len(leaf) > lvl else -1
                                         for leaf in self.leaves] for lvl in range(depth)])

    @property
    def sizes(self) -> list[int]:
        return [len(ns) for ns in self.level_nodes]

    def encode(self, path) -> list[int]:
        path = tuple(path)
        return [self.index[lvl][path[:lvl + 1]] if len(path) > lvl else -1 for lvl in range(self.depth)]

    def conditional_log_probs(self, logits: list[torch.Tensor]) -> list[torch.Tensor]:
        """log p(node | its parent) per level: log-softmax within each parent's children."""
        out = []
        for lvl, z in enumerate(logits):
            parent = self.parent[lvl].to(z.device)
            n_groups = self.n_groups[lvl]
            group_max = torch.full((z.shape[0], n_groups), -torch.inf, device=z.device, dtype=z.dtype)
            group_max = group_max.scatter_reduce(1, parent.expand_as(z), z, reduce="amax", include_self=True)
            shifted = (z - group_max[:, parent]).exp()
            group_sum = torch.zeros_like(group_max).scatter_add(1, parent.expand_as(z), shifted)
            out.append(z - group_max[:, parent] - group_sum[:, parent].log())
        return out

    def leaf_scores(self, cond: list[torch.Tensor]) -> torch.Tensor:
        """[B, n_leaves] sum of conditional log-probs along each leaf's path (shallow leaves stop early)."""
        score = 0
        for lvl, c in enumerate(cond):
            idx = self.path_index[lvl].to(c.device)
            gathered = c[:, idx.clamp(min=0)]
            score = score + torch.where(idx >= 0, gathered, torch.zeros_like(gathered))
        return score

    def decode(self, logits: list[torch.Tensor]):
        """Best valid full path per row: (leaf index [B], per-level confidence [B, depth] (NaN below a shallow
        leaf), path probability [B])."""
        cond = self.conditional_log_probs(logits)
        scores = self.leaf_scores(cond)
        best = scores.argmax(1)
        conf = torch.full((len(best), self.depth), float("nan"))
        for lvl, c in enumerate(cond):
            idx = self.path_index[lvl][best.cpu()]
            present = idx >= 0
            conf[present, lvl] = c.cpu()[present.nonzero().squeeze(1), idx[present]].exp()
        return best.cpu(), conf, scores.gather(1, best[:, None]).squeeze(1).exp().cpu()

    def runners_up(self, logits: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k valid full paths after the best, for a reviewer choosing another: (leaf indices [B, k], path
        probabilities [B, k]), best first. Same scores as `decode`, so the best path is never repeated."""
        scores = self.leaf_scores(self.conditional_log_probs(logits))
        k = max(0, min(k, scores.shape[1] - 1))
        top = scores.topk(k + 1, dim=1)
        return top.indices[:, 1:].cpu(), top.values[:, 1:].exp().cpu()

    def greedy(self, logits: list[torch.Tensor]) -> list[tuple]:
        """Per-level argmax without masking (for comparison only: may give invalid paths)."""
        picks = [z.argmax(1).tolist() for z in logits]
        return [tuple(self.level_nodes[lvl][picks[lvl][i]][-1] for lvl in range(self.depth))
                for i in range(len(picks[0]))]

    def masked_nll(self, logits: list[torch.Tensor], labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        """Teacher-forced loss: -log p(true node | true parent) on every level the label has (levels a shallow
        label lacks are skipped, not guessed). `smoothing` spreads that much target mass over the true node's
        siblings only, so smoothing never pushes probability towards another parent's children."""
        cond = self.conditional_log_probs(logits)
        total, count = 0.0, 0
        for lvl, c in enumerate(cond):
            y = labels[:, lvl]
            has = y >= 0
            if not has.any():
                continue
            c, y = c[has], y[has]
            nll = -c.gather(1, y[:, None]).squeeze(1)
            if smoothing > 0:
                parent = self.parent[lvl].to(c.device)
                siblings = (parent[None, :] == parent[y][:, None]).to(c.dtype)
                uniform = -(c * siblings).sum(1) / siblings.sum(1)
                nll = (1 - smoothing) * nll + smoothing * uniform
            total = total + nll.sum()
            count += int(has.sum())
        return total / max(count, 1)

    def hf1_counts(self, best: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Kiritchenko counts (overlap, |pred|, |true|) of decoded leaves vs label indices, the prediction read at
        the label's depth (as `pipelines.classify.metrics.hierarchical_prf(truncate=True)`): node ids are unique by path,
        so a node matches iff its index at that level matches."""
        pred = self.path_index.to(labels.device)[:, best].T  # [B, depth], -1 below a shallow leaf
        has_true, has_pred = labels >= 0, pred >= 0
        overlap = (has_true & (pred == labels)).sum()
        return torch.stack([overlap, (has_pred & has_true).sum(), has_true.sum()])

    def flat_nll(self, logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Unmasked per-level cross-entropy (teacher_forcing: false)."""
        total, count = 0.0, 0
        for lvl, z in enumerate(logits):
            y = labels[:, lvl]
            has = y >= 0
            if has.any():
                total = total + torch.nn.functional.cross_entropy(z[has], y[has], reduction="sum")
                count += int(has.sum())
        return total / max(count, 1)
