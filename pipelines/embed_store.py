"""Content-addressed embedding cache and the batched embedding loop.

Layout: <store>/<encoder key>/shard-<uuid>.npz, each holding `keys` (content sha256) and `vectors`.
Shards are immutable and written to a temp name then renamed, so a killed run leaves only whole shards and
several processes may write at once. The index is rebuilt from the shard files when a store is opened.
Key = encoder key (config + weights hash + preprocessing version) / sha256 of the text or image bytes.
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHUNK = 512  # items encoded between two shard writes: the most a killed run loses


def text_of(title, description="") -> str:
    title, description = str(title or "").strip(), str(description or "").strip()
    return f"{title} . {description}" if description else title


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EmbeddingStore:
    def __init__(self, root: str | Path, encoder_key: str):
        self.dir = Path(root) / encoder_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[Path, int]] = {}
        self._shards: dict[Path, np.ndarray] = {}
        self.refresh()

    def refresh(self):
        for shard in sorted(self.dir.glob("shard-*.npz")):
            if shard in self._shards:
                continue
            with np.load(shard) as z:
                keys, vectors = z["keys"], z["vectors"]
            self._shards[shard] = vectors
            for i, k in enumerate(keys.tolist()):
                self.index.setdefault(k, (shard, i))

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self._shards[s][i] for s, i in (self.index[k] for k in keys)])

    def put(self, keys: list[str], vectors: np.ndarray):
        if not keys:
            return
        shard = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".tmp-{shard.name}"
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys), vectors=np.asarray(vectors, dtype=np.float32))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, shard)  # atomic: readers see the whole shard or none of it
        self._shards[shard] = np.asarray(vectors, dtype=np.float32)
        for i, k in enumerate(keys):
            self.index.setdefault(k, (shard, i))


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32 [n, dim]; rows with ok=False are NaN, never a fake vector
    ok: np.ndarray
    errors: list
    keys: list
    n_computed: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def _progress(total, desc):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=total == 0 or os.environ.get("PRODCAT_QUIET") == "1",
                mininterval=2.0)


def _finish(encoder, store, keys, errors, computed, t0, n_cached):
    n = len(keys)
    ok = np.array([e is None for e in errors], dtype=bool)
    vectors = np.full((n, encoder.dim), np.nan, dtype=np.float32)
    if ok.any():
        vectors[ok] = store.get([k for k, good in zip(keys, ok) if good])
    return EmbedResult(vectors, ok, errors, keys, computed, n_cached, time.perf_counter() - t0)


def embed_texts(texts: list[str], encoder, store_root) -> EmbedResult:
    """Encode texts not in the store (sorted by length so batches pad little), then read all from the store."""
    t0 = time.perf_counter()
    store = EmbeddingStore(store_root, encoder.key)
    errors = [None if str(t).strip() else "empty text" for t in texts]
    keys = [sha(str(t).encode("utf-8")) if e is None else "" for t, e in zip(texts, errors)]
    todo = {}
    for k, t, e in zip(keys, texts, errors):
        if e is None and k not in store and k not in todo:
            todo[k] = str(t)
    n_cached = sum(e is None for e in errors) - sum(1 for k, e in zip(keys, errors) if e is None and k in todo)
    order = sorted(todo, key=lambda k: len(todo[k]))
    bar = _progress(len(order), f"embed text [{encoder.key}]")
    for start in range(0, len(order), CHUNK):
        chunk = order[start:start + CHUNK]
        parts = []
        for b in range(0, len(chunk), encoder.batch_size):
            batch = chunk[b:b + encoder.batch_size]
            parts.append(encoder.encode([todo[k] for k in batch]))
            bar.update(len(batch))
        store.put(chunk, np.concatenate(parts))
    bar.close()
    return _finish(encoder, store, keys, errors, len(order), t0, n_cached)


class _ImageFiles:
    """Dataset of (position, tensor or None, error) so decoding runs in DataLoader workers."""

    def __init__(self, paths, encoder):
        self.paths, self.encoder = paths, encoder

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                im.load()
                return i, self.encoder.preprocess(im), None
        except Exception as e:  # unreadable bytes are a per-item failure, not a crash
            return i, None, f"corrupt image: {type(e).__name__}: {e}"[:200]


def _collate(items):
    return items


def image_keys(paths: list) -> tuple[list, list]:
    keys, errors = [], []
    for p in paths:
        if p is None or (isinstance(p, float) and np.isnan(p)) or not str(p):
            keys.append(""), errors.append("no image")
            continue
        try:
            keys.append(sha(Path(p).read_bytes())), errors.append(None)
        except OSError as e:
            keys.append(""), errors.append(f"missing image: {e.strerror}")
    return keys, errors


def embed_images(paths: list, encoder, store_root, num_workers: int | None = None) -> EmbedResult:
    """Encode image files not in the store; decoding/preprocessing overlaps the model in DataLoader workers."""
    import torch
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    store = EmbeddingStore(store_root, encoder.key)
    keys, errors = image_keys(paths)
    todo = {}
    for i, (k, e) in enumerate(zip(keys, errors)):
        if e is None and k not in store and k not in todo:
            todo[k] = i
    n_cached = sum(1 for k, e in zip(keys, errors) if e is None) - sum(
        1 for k, e in zip(keys, errors) if e is None and k in todo)
    todo_keys = list(todo)
    workers = int(os.environ.get("PRODCAT_LOADER_WORKERS", 2)) if num_workers is None else num_workers
    bar = _progress(len(todo_keys), f"embed image [{encoder.key}]")
    failed: dict[str, str] = {}
    for start in range(0, len(todo_keys), CHUNK):
        chunk = todo_keys[start:start + CHUNK]
        data = _ImageFiles([paths[todo[k]] for k in chunk], encoder)
        loader = DataLoader(data, batch_size=encoder.batch_size, num_workers=workers, collate_fn=_collate,
                            persistent_workers=False)
        good_keys, parts = [], []
        for batch in loader:
            for i, _, err in batch:
                if err:
                    failed[chunk[i]] = err
            ready = [(i, x) for i, x, err in batch if err is None]
            if ready:
                parts.append(encoder.encode_tensor(torch.stack([x for _, x in ready])))
                good_keys += [chunk[i] for i, _ in ready]
            bar.update(len(batch))
        if parts:
            store.put(good_keys, np.concatenate(parts))
    bar.close()
    errors = [failed.get(k, e) if e is None else e for k, e in zip(keys, errors)]
    return _finish(encoder, store, keys, errors, len(todo_keys) - len(failed), t0, n_cached)


def embed_products(products, modality: str, encoder_spec, store_root, num_workers: int | None = None):
    """Embed a product table's text or images. Returns (manifest DataFrame, float32 matrix aligned to it)."""
    import pandas as pd

    from pipelines.encoders import load_encoder

    encoder = load_encoder(encoder_spec)
    if modality == "text":
        texts = [text_of(t, d) for t, d in zip(products["title"], products["description"])]
        if encoder.modality == "joint":
            encoder = _TextView(encoder)
        result = embed_texts(texts, encoder, store_root)
    elif modality == "image":
        result = embed_images(products["image_path"].tolist(), encoder, store_root, num_workers)
    else:
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    uid = (products["platform"] + ":" + products["product_id"].astype(str)).to_numpy()
    manifest = pd.DataFrame({"uid": uid, "ok": result.ok, "error": [e or "" for e in result.errors],
                             "content_hash": result.keys})
    manifest.attrs.update(encoder=encoder.key, n_computed=result.n_computed, n_cached=result.n_cached,
                          seconds=round(result.seconds, 2))
    return manifest, result.vectors


class _TextView:
    """A CLIP encoder seen as a text encoder (its text tower), with its own cache namespace."""

    modality = "text"

    def __init__(self, clip):
        self.clip, self.dim, self.batch_size, self.key = clip, clip.dim, clip.batch_size, clip.key + "-text"

    def encode(self, texts):
        return self.clip.encode_texts(texts)
