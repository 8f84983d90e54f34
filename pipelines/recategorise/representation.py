"""What the clustering sees: a SimCLR representation trained on the node's products (models/simclr.py), the
raw frozen text embedding beside it, each shop's mean subtracted.

    frozen_features(products, store, cfg)              -> {'text', 'image'} frozen embeddings (NaN rows = none)
    simclr_features(texts, text_emb, images, cfg, ...) -> SimCLR representation + raw frozen image features
    clustering_features(simclr, text_emb, platforms, cfg) -> the matrix UMAP / HDBSCAN / k-means run on
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows stay zero rather than dividing by 0)."""
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def centre_per_platform(x: np.ndarray, platforms: np.ndarray) -> np.ndarray:
    """Subtract each shop's mean feature vector. A shop's photo style and title habits shift all its products the
    same way, so without this clusters split by shop before they split by product type (full benchmark, Shoes:
    H&M's 223 shoes fell into 2 clusters, purity 0.673 -> 0.861 with centring)."""
    x = np.array(x, dtype=np.float32, copy=True)
    for p in np.unique(platforms):
        x[platforms == p] -= x[platforms == p].mean(0)
    return x


def clustering_features(simclr: np.ndarray, text_emb: np.ndarray, platforms: np.ndarray, cfg: dict) -> np.ndarray:
    """[SimCLR image | text parts] (+ the raw text embedding x raw_text_weight), centred per shop when configured:
    the raw embedding keeps what a short SimCLR run has not learned (full benchmark, Shoes: purity 0.752 -> 0.765)."""
    x = simclr
    if cfg["features"]["raw_text_weight"]:
        x = np.hstack([x, cfg["features"]["raw_text_weight"] * l2_rows(text_emb)])
    if cfg["features"].get("centre_per_platform"):
        x = centre_per_platform(x, platforms)
    return x


def node_texts(products: pd.DataFrame, cfg: dict) -> list[str]:
    """The text SimCLR's token views are cut from: the title, or title + description (cfg['text'])."""
    from pipelines.features.store import text_of

    if cfg.get("text", "title") == "title+description":
        return [text_of(t, d) for t, d in zip(products["title"], products["description"])]
    return [str(t) for t in products["title"]]


def frozen_features(products: pd.DataFrame, store: str | Path, cfg: dict, modalities=("text", "image"),
                    threads: int = 0) -> dict:
    """Frozen text / image embeddings of `products` from the content-addressed store (computed only when missing);
    NaN rows where a product has none."""
    from pipelines.features.store import embed_products

    names = {"text": cfg["text_encoder"], "image": cfg["simclr"]["image_encoder"]}
    out = {}
    for m in modalities:
        manifest, matrix = embed_products(products, m, names[m], store, progress=False, threads=threads)
        matrix[~manifest["ok"].to_numpy()] = np.nan
        out[m] = matrix
    return out


def load_images(paths) -> tuple[list, list]:
    """(PIL images or None, error or None) per path; unreadable files are per-item failures, reported by the
    caller, never a crash of the whole node."""
    from pipelines.ingest.images import load_image

    images, errors = [], []
    for p in paths:
        if p is None or (isinstance(p, float) and np.isnan(p)) or not str(p):
            images.append(None), errors.append("no image")
            continue
        try:
            with load_image(p) as im:
                images.append(im.convert("RGB")), errors.append(None)
        except Exception as e:  # PIL raises many types for bad bytes
            images.append(None), errors.append(f"unreadable image: {type(e).__name__}: {e}"[:200])
    return images, errors


def default_backbone_factory(cfg: dict, threads: int = 0):
    """() -> (module [B,3,H,W] -> [B,D], mean, std) through the project's encoder loader
    (EfficientNet-Lite0 ImageNet weights, key-renamed into timm's tf_efficientnet_lite0). `threads` goes to the
    loader, which sets torch's threads: the run's count, not every core."""
    def factory():
        from pipelines.features.encoders import load_encoder

        enc = load_encoder(cfg["simclr"]["image_encoder"], device="cpu", threads=threads)
        if not hasattr(enc, "model") or enc.modality != "image":
            raise ValueError(f"{cfg['simclr']['image_encoder']!r} is not an image encoder")
        norm = enc.preprocess if hasattr(enc.preprocess, "mean") else enc  # normalisation the weights expect
        return enc.model, np.asarray(norm.mean, dtype=float).tolist(), np.asarray(norm.std, dtype=float).tolist()
    return factory


def image_banks(images: list, has_image: np.ndarray, train: np.ndarray, sc: dict, backbone_factory, log) -> dict:
    """The frozen trunk run once per view, before training: a clean view of every product with an image, and
    `image_views` augmented views of the training products; plus the raw frozen (pooled) image features."""
    import torch

    from models import simclr as S

    n = len(images)
    t0 = time.perf_counter()
    model, mean, std = backbone_factory()
    trunk, tail = S.split_backbone(model, int(sc["unfreeze_last_blocks"]))
    augment, clean = S.image_transforms(int(sc["image_size"]), mean, std, sc["crop_scale"], sc["jitter"],
                                        sc["grayscale"])
    idx = np.flatnonzero(has_image)
    cleans = S.view_bank([images[i] for i in idx], trunk, clean, int(sc["bank_batch_size"]), int(sc["seed"]))
    image_clean = torch.zeros((n, *cleans.shape[1:]))
    image_clean[torch.from_numpy(idx)] = cleans  # rows without an image stay zero and are flagged by has_image
    image_views = None
    if has_image[train].any():
        views = [S.view_bank([images[i] if has_image[i] else None for i in train], trunk, augment,
                             int(sc["bank_batch_size"]), int(sc["seed"]) + v + 1)
                 for v in range(int(sc["image_views"]))]
        image_views = torch.stack(views, dim=1)  # [n_train, V, ...]
    with torch.no_grad():  # raw frozen features (before any training) for the ablation when none are given
        pooled = tail.eval()(cleans).reshape(len(idx), -1).numpy()
        raw_image = np.full((n, pooled.shape[1]), np.nan, dtype=np.float32)
        raw_image[idx] = pooled
    seconds = round(time.perf_counter() - t0, 1)
    log(f"  view bank: {len(idx)} clean views + {int(has_image[train].sum())} images x {sc['image_views']} "
        f"augmented views in {seconds} s")
    return {"tail": tail, "clean": image_clean, "views": image_views, "raw_image": raw_image,
            "timings": {"view_bank_s": seconds}}


def simclr_features(texts: list[str], text_emb: np.ndarray, images: list, cfg: dict, backbone_factory=None,
                    log=print, threads: int = 0) -> dict:
    """Train SimCLR on the node's products; return its representation plus the raw frozen image features.
    SimCLR trains on a seeded subset (augmented views are the cost); every product gets a representation.
    backbone_factory: see default_backbone_factory (used with `threads` when none is given)."""
    import torch

    from models import simclr as S

    sc = cfg["simclr"]
    torch.manual_seed(int(sc["seed"]))
    n = len(texts)
    has_image = np.array([im is not None for im in images], dtype=bool) if cfg.get("images", True) \
        else np.zeros(n, dtype=bool)
    rng = np.random.default_rng(int(sc["seed"]))
    train = np.sort(rng.choice(n, min(n, int(sc["max_train_products"])), replace=False))
    bank = {"tail": torch.nn.Identity(), "clean": None, "views": None, "raw_image": None, "timings": {}}
    if has_image.any():
        bank = image_banks(images, has_image, train, sc, backbone_factory or default_backbone_factory(cfg, threads),
                           log)
    timings = dict(bank["timings"])
    text_bank = torch.from_numpy(text_emb.astype(np.float32))
    vocab = S.build_vocab(texts, int(sc["min_token_count"]))
    tokens = S.token_lists(texts, vocab, int(sc["max_tokens"]))
    t0 = time.perf_counter()
    model = S.train_simclr(bank["views"], has_image[train], text_bank[train], [tokens[i] for i in train], len(vocab),
                           bank["tail"], sc)
    timings["simclr_train_s"] = round(time.perf_counter() - t0, 1)
    log(f"  simclr: {len(train)} products, {sc['epochs']} epochs in {timings['simclr_train_s']} s, "
        f"final loss {model.final_loss:.3f}")
    rep = model.represent(bank["clean"], has_image, text_bank, S.pad_tokens(tokens, int(sc["max_tokens"])))
    return {"simclr": rep, "raw_image": bank["raw_image"], "has_image": has_image, "timings": timings,
            "final_loss": model.final_loss, "vocab_size": len(vocab)}
