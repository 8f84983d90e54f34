"""Stage-2 vectors for the service: a bounded in-memory LRU in front of the work dir's embedding store, read-only.

The batch path (features.Stage2Features -> features/store.embed_*) re-lists the store directory and writes a new
shard on every call: right for `prodcat classify` (one call per export), wrong for a service, where every request
reaching stage 2 added a file and listed the whole folder (45 -> 267 files over 800 requests). Here the store's
index is the one built once when the models loaded; a vector is looked up in the LRU, then read from the shard the
index names (only the rows asked for are kept), and only what neither holds is encoded. Nothing is written: the
store belongs to the pipeline, and the service's memory stays bounded by `max_bytes` per encoder.

The encoders, the text a product is embedded by (its sha256 the key) and the joint projection are those of
Stage2Features, so a vector means the same here as in the batch path.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class PreparedImage:
    """A request's image, checked and decoded off the event loop: its cache key (sha256 of the bytes, as the
    store keys image files) and the encoder's input tensor."""

    key: str
    tensor: object  # torch.Tensor [3, H, W]


class VectorLRU:
    """key -> float32 vector, least recently used dropped first once `max_bytes` is reached."""

    def __init__(self, dim: int, max_bytes: int):
        self.dim, self.capacity = dim, max(1, max_bytes // max(4 * dim, 1))
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str):
        vector = self.items.get(key)
        if vector is not None:
            self.items.move_to_end(key)
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        self.items[key] = np.array(vector, np.float32)  # a copy: never a view pinning a whole shard or batch
        self.items.move_to_end(key)
        while len(self.items) > self.capacity:
            self.items.popitem(last=False)

    def __len__(self) -> int:
        return len(self.items)


def read_stored(store, keys: list[str], lru: VectorLRU) -> dict:
    """{key: vector} for the keys the store's index (as built at startup) holds, reading each shard once. The other
    rows of a shard read go into the LRU too (a shard is read whole anyway, and products embedded together tend to
    be asked for together), unless a shard is a large part of the LRU. A shard gone or unreadable since startup is
    skipped: its keys are encoded again (the store is not repaired from here)."""
    from pipelines.features.shards import ShardFormatError, read_shard

    if store is None:
        return {}
    by_shard: dict = {}
    for k in keys:
        where = store.index.get(k)
        if where is not None:
            by_shard.setdefault(where[0], []).append((k, where[1]))
    found = {}
    for shard, rows in by_shard.items():
        try:
            shard_keys, vectors = read_shard(shard, store.dim, vectors=True)
        except (OSError, ShardFormatError):
            continue
        if len(shard_keys) <= lru.capacity // 4:
            for k, v in zip(shard_keys.tolist(), vectors):
                lru.put(k, v)
        found |= {k: vectors[i] for k, i in rows if i < len(vectors) and shard_keys[i] == k}
    for k, v in found.items():
        lru.put(k, v)
    return found


class CachedEmbedder:
    """One encoder behind the LRU and the read-only store."""

    def __init__(self, encoder, store, max_bytes: int):
        self.encoder, self.store = encoder, store
        self.lru = VectorLRU(encoder.dim, max_bytes)
        self.stats = {"lru": 0, "store": 0, "encoded": 0}

    def _lookup(self, keys: list[str]) -> tuple[dict, list[str]]:
        """(vectors found in the LRU or the store, distinct keys found in neither)."""
        found, missing = {}, []
        for k in dict.fromkeys(k for k in keys if k):
            v = self.lru.get(k)
            if v is not None:
                found[k] = v
                self.stats["lru"] += 1
            else:
                missing.append(k)
        stored = read_stored(self.store, missing, self.lru)
        self.stats["store"] += len(stored)
        found |= stored
        return found, [k for k in missing if k not in stored]

    def _assemble(self, keys: list[str], found: dict) -> tuple[np.ndarray, np.ndarray]:
        ok = np.array([bool(k) and k in found for k in keys], bool)
        vectors = np.full((len(keys), self.encoder.dim), np.nan, np.float32)
        for i, k in enumerate(keys):
            if ok[i]:
                vectors[i] = found[k]
        return vectors, ok

    def texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, dim], ok [n]) for texts already in embedding form (features.embedding_texts); empty text
        is not ok (NaN row), as in the batch path."""
        from pipelines.features.store import sha, text_value

        texts = [text_value(t) for t in texts]
        keys = [sha(t.encode("utf-8")) if t else "" for t in texts]
        found, missing = self._lookup(keys)
        missing = set(missing)
        todo = {k: t for k, t in zip(keys, texts) if k in missing}
        order = sorted(todo, key=lambda k: len(todo[k]))  # shortest first: batches pad little (as embed_texts)
        for b in range(0, len(order), self.encoder.batch_size):
            batch = order[b:b + self.encoder.batch_size]
            for k, v in zip(batch, self.encoder.encode([todo[k] for k in batch])):
                found[k] = v
                self.lru.put(k, v)
        self.stats["encoded"] += len(order)
        return self._assemble(keys, found)

    def images(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, ok) for PreparedImage items (None = no image: not ok, NaN row)."""
        import torch

        keys = [im.key if im is not None else "" for im in images]
        found, missing = self._lookup(keys)
        missing = set(missing)
        tensors = {im.key: im.tensor for im in images if im is not None and im.key in missing}
        order = list(tensors)
        for b in range(0, len(order), self.encoder.batch_size):
            batch = order[b:b + self.encoder.batch_size]
            for k, v in zip(batch, self.encoder.encode_tensor(torch.stack([tensors[k] for k in batch]))):
                found[k] = v
                self.lru.put(k, v)
        self.stats["encoded"] += len(order)
        return self._assemble(keys, found)


def joint_rows(heads, text: np.ndarray, image: np.ndarray, has_image: np.ndarray, rows: int) -> np.ndarray:
    """models.alignment.joint_embed with every projection on exactly `rows` rows, so a product's joint vector does not
    depend on how many others share its batch (or have an image): products with and without an image are projected
    in two calls, each padded to `rows` with uniform availability."""
    from models.alignment import joint_embed

    from pipelines.inference.batching import pad_rows

    n = len(text)
    out = np.full((n, heads.config["dim"]), np.nan, np.float32)
    has_image = np.asarray(has_image, bool) & np.isfinite(image).all(1)
    for with_image in (True, False):
        idx = np.flatnonzero(has_image == with_image)
        if len(idx):
            flag = np.full(rows, with_image)
            out[idx] = joint_embed(heads, pad_rows(text[idx], rows), pad_rows(image[idx], rows), flag)[:len(idx)]
    return out


class ServingFeatures:
    """Stage2Features' vectors (text, image, joint) through the LRU: same encoders, same store, same heads."""

    def __init__(self, features2, cache_mb: int, rows: int):
        budget = int(cache_mb) * 1024 * 1024
        self.modalities, self.heads, self.rows = features2.modalities, features2.heads, rows
        self.text = (CachedEmbedder(features2.text_encoder, features2.text_store, budget)
                     if features2.text_encoder is not None else None)
        self.image = (CachedEmbedder(features2.image_encoder, features2.image_store, budget)
                      if features2.image_encoder is not None else None)
        self.preprocess = getattr(features2.image_encoder, "preprocess", None)

    def __call__(self, texts: list[str], images: list) -> tuple[dict, dict]:
        """(features, available) per modality, as Stage2Features.__call__ computes them."""
        features, available = {}, {}
        if self.text is not None:
            vectors, ok = self.text.texts(texts)
            features["text"], available["text"] = np.nan_to_num(vectors), ok
        if self.image is not None:
            vectors, ok = self.image.images(images)
            features["image"], available["image"] = np.nan_to_num(vectors), ok
        if self.heads is not None:
            joint = joint_rows(self.heads, features["text"], features["image"], available["image"], self.rows)
            features["joint"], available["joint"] = np.nan_to_num(joint), available["text"].copy()
        return features, available

    def stats(self) -> dict:
        return {name: {**e.stats, "cached": len(e.lru), "capacity": e.lru.capacity}
                for name, e in (("text", self.text), ("image", self.image)) if e is not None}
