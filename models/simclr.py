"""SimCLR for recategorisation: NT-Xent over two augmented views per product, for images and for text.

Sized for a CPU. The frozen part of the image backbone runs once per augmented view, before training (a bank of
`image_views` views per product), so an epoch only runs the trainable tail (the last backbone blocks when unfrozen)
and the small heads. A text view = token dropout of the title through a bag-of-tokens encoder (order-free), plus the
frozen sentence embedding of the title with feature dropout (re-encoding augmented titles would cost a MiniLM pass
per view).

Loss = NT-Xent between two image views, between two text views and between an image view and a text view of the
same product (cross-modal). The cross-modal term teaches what title and photo share (the kind of product) and
aligns the image and text representations, so text-only products land in the same space as products with images.
"""
from __future__ import annotations

import copy
import re

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TOKEN = re.compile(r"[a-z0-9]+")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020): row i of z1 and row i of z2 are positives, the other 2N-2 views negatives."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


# ---------------------------------------------------------------- views

def pad_square(image, fill=(255, 255, 255)):
    """White-pad to a square (shop photos are on white) so crops and resizes never cut the product off."""
    from PIL import Image

    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def image_transforms(image_size: int, mean, std, crop_scale=(0.5, 1.0), jitter: float = 0.4,
                     grayscale: float = 0.2):
    """(augment, clean): SimCLR augmentations and the plain view used for the final representation."""
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(mean, std)]
    augment = T.Compose([pad_square, T.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True),
                         T.RandomHorizontalFlip(),
                         T.RandomApply([T.ColorJitter(jitter, jitter, jitter, min(jitter / 4, 0.5))], p=0.8),
                         T.RandomGrayscale(p=grayscale), *norm])
    clean = T.Compose([pad_square, T.Resize((image_size, image_size), antialias=True), *norm])
    return augment, clean


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(str(text).lower())


def build_vocab(texts, min_count: int = 2) -> dict[str, int]:
    """Token -> id (0 is padding); tokens seen in fewer than min_count texts are left out."""
    from collections import Counter

    counts = Counter(t for text in texts for t in set(tokenize(text)))
    return {t: i + 1 for i, t in enumerate(sorted(t for t, n in counts.items() if n >= min_count))}


def token_lists(texts, vocab: dict, max_tokens: int = 48) -> list[np.ndarray]:
    return [np.array([vocab[t] for t in tokenize(x)[:max_tokens] if t in vocab], dtype=np.int64) for x in texts]


# ---------------------------------------------------------------- image backbone

def split_backbone(model: nn.Module, unfreeze_last_blocks: int = 0) -> tuple[nn.Module, nn.Module]:
    """(frozen trunk, trainable tail). The tail is the last `unfreeze_last_blocks` stages of a timm
    EfficientNet-style model (`blocks`, `conv_head`, `bn2`, `global_pool`) plus its head; 0 freezes everything."""
    if unfreeze_last_blocks <= 0:
        return model.eval(), nn.Identity()
    needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
    if not all(hasattr(model, a) for a in needed):
        raise ValueError(f"unfreeze_last_blocks={unfreeze_last_blocks} needs a timm EfficientNet-style backbone "
                         f"(attributes {needed}); got {type(model).__name__}. Use unfreeze_last_blocks: 0.")
    if unfreeze_last_blocks > len(model.blocks):
        raise ValueError(f"unfreeze_last_blocks={unfreeze_last_blocks} but the backbone has {len(model.blocks)} stages")
    model = copy.deepcopy(model)  # the caller's (possibly shared, cached) encoder stays untouched
    cut = len(model.blocks) - unfreeze_last_blocks
    trunk = nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:cut]).eval()
    tail = nn.Sequential(*model.blocks[cut:], model.conv_head, model.bn2, model.global_pool)
    return trunk, tail


@torch.inference_mode()
def view_bank(images: list, trunk: nn.Module, transform, batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """Trunk outputs [N, ...] of one transformed view per image, batch by batch (None = no image: zeros)."""
    torch.manual_seed(seed)  # torchvision's random transforms draw from torch's global generator
    trunk.eval()
    device = next(trunk.parameters()).device
    out = None
    for start in range(0, len(images), batch_size):
        batch = [(i, im) for i, im in enumerate(images[start:start + batch_size], start) if im is not None]
        if not batch:
            continue
        y = trunk(torch.stack([transform(im) for _, im in batch]).to(device)).float().cpu()
        if out is None:
            out = torch.zeros((len(images), *y.shape[1:]))
        out[[i for i, _ in batch]] = y
    if out is None:
        raise ValueError("view_bank got no image")
    return out


# ---------------------------------------------------------------- model

def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class ViewPairs(torch.utils.data.Dataset):
    """Per product: two image views (from the bank), two feature-dropped frozen text embeddings and two
    token-dropout views of the title."""

    def __init__(self, image_views, has_image, text_emb, tokens, max_tokens=48, token_dropout=0.3,
                 feature_dropout=0.2, seed=0):
        self.image_views, self.has_image = image_views, torch.as_tensor(has_image, dtype=torch.bool)
        self.text_emb, self.tokens = text_emb, tokens
        self.max_tokens, self.drop, self.feature_drop = max_tokens, token_dropout, feature_dropout
        self.rng = np.random.default_rng(seed)
        self.blank = torch.zeros(image_views.shape[2:]) if image_views is not None else torch.zeros(0)

    def __len__(self):
        return len(self.has_image)

    def _tokens(self, i):
        ids = self.tokens[i]
        keep = ids[self.rng.random(len(ids)) >= self.drop] if len(ids) else ids
        if len(ids) and not len(keep):
            keep = ids[self.rng.integers(len(ids), size=1)]
        out = torch.zeros(self.max_tokens, dtype=torch.long)
        out[:len(keep)] = torch.from_numpy(self.rng.permutation(keep)[:self.max_tokens])
        return out

    def _pair(self, bank, i):
        a, b = self.rng.choice(bank.shape[1], size=2, replace=bank.shape[1] < 2)
        return bank[i, a], bank[i, b]

    def __getitem__(self, i):
        if self.image_views is not None and self.has_image[i]:
            img_a, img_b = self._pair(self.image_views, i)
        else:  # zero-filled *and* flagged: the model only reads image views where has_image is true
            img_a = img_b = self.blank
        txt_a, txt_b = (F.dropout(self.text_emb[i], self.feature_drop) for _ in range(2)) \
            if self.text_emb is not None else (torch.zeros(0),) * 2
        return img_a, img_b, self.has_image[i], txt_a, txt_b, self._tokens(i), self._tokens(i)


class SimCLR(L.LightningModule):
    def __init__(self, tail: nn.Module, image_dim: int, text_dim: int, vocab_size: int, rep_dim: int = 128,
                 proj_dim: int = 64, hidden: int = 512, temperature: float = 0.2, lr: float = 1e-3,
                 tail_lr: float = 1e-4, weight_decay: float = 1e-4, loss_weights: dict | None = None):
        super().__init__()
        self.tail = tail
        self.image_encoder = mlp(image_dim, hidden, rep_dim) if image_dim else None
        self.text_encoder = mlp(text_dim, hidden, rep_dim) if text_dim else None
        self.token_encoder = nn.EmbeddingBag(vocab_size + 1, rep_dim, mode="mean", padding_idx=0) if vocab_size \
            else None
        if self.text_encoder is None and self.token_encoder is None:
            raise ValueError("SimCLR needs a text path: frozen text embeddings (text_dim > 0) or a vocabulary")
        self.projection = nn.Sequential(nn.Linear(rep_dim, rep_dim), nn.ReLU(), nn.Linear(rep_dim, proj_dim))
        self.temperature, self.lr, self.tail_lr, self.weight_decay = temperature, lr, tail_lr, weight_decay
        self.loss_weights = {"image": 1.0, "text": 1.0, "cross": 1.0, **(loss_weights or {})}

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.tail.modules():  # keep ImageNet BatchNorm statistics in the unfrozen blocks
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def encode_image(self, trunk_out):
        return self.image_encoder(self.tail(trunk_out))

    def encode_text(self, text_emb, token_ids):
        h = 0
        if self.text_encoder is not None:
            h = h + self.text_encoder(text_emb)
        if self.token_encoder is not None:
            h = h + self.token_encoder(token_ids)
        return h

    def losses(self, batch) -> dict:
        img_a, img_b, has_img, txt_a, txt_b, tok_a, tok_b = batch
        proj = self.projection
        t_a, t_b = proj(self.encode_text(txt_a, tok_a)), proj(self.encode_text(txt_b, tok_b))
        out = {"text": nt_xent(t_a, t_b, self.temperature)}
        if self.image_encoder is not None and int(has_img.sum()) >= 2:
            i_a = proj(self.encode_image(img_a[has_img]))
            i_b = proj(self.encode_image(img_b[has_img]))
            out["image"] = nt_xent(i_a, i_b, self.temperature)
            out["cross"] = nt_xent(i_a, t_a[has_img], self.temperature)
        return out

    def training_step(self, batch, batch_idx):
        parts = self.losses(batch)
        w = {k: self.loss_weights[k] for k in parts if self.loss_weights[k] > 0}
        loss = sum(w[k] * parts[k] for k in w) / sum(w.values())
        self.log("loss", loss, prog_bar=False, batch_size=len(batch[0]))
        return loss

    def configure_optimizers(self):
        tail = [p for p in self.tail.parameters() if p.requires_grad]
        rest = [p for n, p in self.named_parameters() if not n.startswith("tail.")]
        groups = [{"params": rest, "lr": self.lr}] + ([{"params": tail, "lr": self.tail_lr}] if tail else [])
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    @torch.no_grad()
    def represent(self, image_clean, has_image, text_clean, token_ids, batch_size: int = 512) -> np.ndarray:
        """[image part | text part], each L2-normalised. A product without an image gets its text representation
        in the image slot (the cross-modal loss put both in one space), so every row is a real representation."""
        self.eval()
        has_image = torch.as_tensor(has_image, dtype=torch.bool)
        out = []
        for s in range(0, len(has_image), batch_size):
            sl = slice(s, s + batch_size)
            t = F.normalize(self.encode_text(text_clean[sl].to(self.device) if text_clean is not None else None,
                                             token_ids[sl].to(self.device)), dim=1)
            i = t.clone()
            has = has_image[sl].to(self.device)
            if self.image_encoder is not None and bool(has.any()):
                i[has] = F.normalize(self.encode_image(image_clean[sl][has.cpu()].to(self.device)), dim=1)
            out.append(torch.cat([i, t], dim=1).cpu())
        return torch.cat(out).numpy()


def pad_tokens(lists: list[np.ndarray], max_tokens: int) -> torch.Tensor:
    out = torch.zeros(len(lists), max_tokens, dtype=torch.long)
    for i, ids in enumerate(lists):
        out[i, :min(len(ids), max_tokens)] = torch.from_numpy(ids[:max_tokens])
    return out


def train_simclr(image_views, has_image, text_emb, tokens, vocab_size: int, tail: nn.Module, cfg: dict) -> SimCLR:
    """Fit SimCLR heads (and the unfrozen tail) with Lightning on banked views.

    image_views: [N, V, ...] trunk outputs or None; text_emb: [N, d] frozen text embeddings or None;
    tokens: per product token id arrays. cfg: the `simclr` section of models/configs/recategorise.yaml."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen BatchNorm, on purpose
    torch.manual_seed(int(cfg.get("seed", 0)))
    image_dim = 0
    if image_views is not None and bool(np.any(has_image)):
        with torch.no_grad():
            image_dim = int(tail.eval()(image_views[:2, 0]).reshape(2, -1).shape[1])
    model = SimCLR(tail, image_dim, int(text_emb.shape[-1]) if text_emb is not None else 0, vocab_size,
                   rep_dim=cfg.get("rep_dim", 128), proj_dim=cfg.get("proj_dim", 64), hidden=cfg.get("hidden", 512),
                   temperature=cfg.get("temperature", 0.2), lr=float(cfg.get("lr", 1e-3)),
                   tail_lr=float(cfg.get("tail_lr", 1e-4)), weight_decay=float(cfg.get("weight_decay", 1e-4)),
                   loss_weights=cfg.get("loss_weights"))
    data = ViewPairs(image_views, has_image, text_emb, tokens, cfg.get("max_tokens", 48),
                     cfg.get("token_dropout", 0.3), cfg.get("feature_dropout", 0.2), cfg.get("seed", 0))
    batch_size = min(int(cfg.get("batch_size", 256)), len(data))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=len(data) > batch_size)
    trainer = L.Trainer(max_epochs=int(cfg.get("epochs", 30)), accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, loader)
    model.final_loss = float(trainer.callback_metrics.get("loss", torch.tensor(float("nan"))))
    return model
