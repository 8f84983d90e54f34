"""Embedding through the content-addressed cache: the batched loop that encodes only what the store lacks.

The cache key of an item is the sha256 of its text or image bytes; the encoder key (name + config + weights hash +
preprocessing version) is its own directory of shards (pipelines/features/shards.py: EmbeddingStore), so changing
an encoder invalidates exactly its entries.

    res = embed(texts_or_image_paths, encoder, store_dir)   # EmbedResult: vectors, ok, errors, n_computed, n_cached
    manifest, matrix = embed_products(products, "text" | "image", "minilm", store_dir, progress=False)

Items whose stored vectors vanish during a call (another process quarantined their shard) are recomputed, not a
failure: their vectors are read into memory (`EmbeddingStore.pin`) before anything is encoded.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from pipelines.features.shards import EmbeddingStore, MissingEntries, ShardFormatError  # noqa: F401 (re-exported)

CHUNK = 512  # items encoded between two shard writes: the most a killed run loses
LOADER_WORKERS = 1  # image decoding processes by default (Settings.loader_workers): one overlaps the model, more
# steal its cores


def text_of(title, description="") -> str:
    """The text a product is embedded by: title + ' . ' + description."""
    title, description = text_value(title), text_value(description)
    return f"{title} . {description}" if description else title


def text_value(value) -> str:
    """A cell as stripped text; '' for None and NaN (pandas' missing value), so they count as empty text."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_store(store, encoder) -> EmbeddingStore:
    """A store directory (str/Path) or an already open EmbeddingStore for this encoder."""
    if isinstance(store, EmbeddingStore):
        if store.dir.name != encoder.key:
            raise ValueError(f"store namespace {store.dir.name} does not belong to encoder {encoder.key}")
        store.refresh()
        return store
    meta = {"key": encoder.key, "dim": encoder.dim, "modality": encoder.modality, "config": encoder.cfg,
            "weights_sha256": encoder.weights}
    return EmbeddingStore(store, encoder.key, encoder.dim, meta)


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32 [n, dim]; rows with ok=False are NaN, never a fake vector
    ok: np.ndarray  # bool [n]
    errors: list  # str reason or None, per item
    keys: list  # content sha256 per item ('' when there is no content)
    n_computed: int = 0  # unique items encoded in this call
    n_cached: int = 0  # items served from the store
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def _progress(total, desc, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=total == 0 or not show, mininterval=2.0, smoothing=0.1)


def _finish(encoder, store, keys, errors, cached, n_computed, t0) -> EmbedResult:
    ok = np.array([e is None for e in errors], dtype=bool)
    vectors = np.full((len(keys), encoder.dim), np.nan, dtype=np.float32)
    if ok.any():
        vectors[ok] = store.get([k for k, good in zip(keys, ok) if good])
    n_cached = int(sum(1 for c, good in zip(cached, ok) if c and good))
    return EmbedResult(vectors, ok, errors, keys, n_computed, n_cached, time.perf_counter() - t0)


class _Writer:
    """Buffers computed vectors and writes a shard every CHUNK items (and at the end)."""

    def __init__(self, store: EmbeddingStore):
        self.store, self.keys, self.parts = store, [], []

    def add(self, keys, vectors):
        self.keys += list(keys)
        self.parts.append(vectors)
        if len(self.keys) >= CHUNK:
            self.flush()

    def flush(self):
        if self.keys:
            self.store.put(self.keys, np.concatenate(self.parts))
        self.keys, self.parts = [], []


def _cached(store: EmbeddingStore, keys: list) -> list[bool]:
    """Which keys the store serves. Their vectors are read into memory now, so a shard another process
    quarantines or removes later in this call cannot fail the read-back; entries already gone are recomputed."""
    store.pin([k for k in keys if k])
    return [bool(k) and k in store for k in keys]


def embed_texts(texts: list[str], encoder, store, progress: bool = True) -> EmbedResult:
    """Encode the distinct texts not in the store, shortest first (batches pad little), then read all back.
    `progress`: a tqdm bar on stderr (off for quiet runs and inside other progress bars)."""
    t0 = time.perf_counter()
    store = open_store(store, encoder)
    texts = [text_value(t) for t in texts]
    errors = [None if t else "empty text" for t in texts]
    keys = [sha(t.encode("utf-8")) if t else "" for t in texts]
    cached = _cached(store, keys)
    todo = {k: t for k, t, c in zip(keys, texts, cached) if k and not c}
    order = sorted(todo, key=lambda k: len(todo[k]))
    writer, bar = _Writer(store), _progress(len(order), f"embed text [{encoder.key}]", progress)
    for b in range(0, len(order), encoder.batch_size):
        batch = order[b:b + encoder.batch_size]
        writer.add(batch, encoder.encode([todo[k] for k in batch]))
        bar.update(len(batch))
    writer.flush()
    bar.close()
    return _finish(encoder, store, keys, errors, cached, len(order), t0)


class _ImageFiles:
    """Dataset of (position, tensor or None, error): decoding and preprocessing run in DataLoader workers."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from pipelines.ingest.images import ImageRefused, load_image

        try:
            with load_image(self.paths[i]) as im:  # guarded: regular file, bounded bytes and pixels, fully decoded
                return i, self.preprocess(im), None
        except ImageRefused as e:  # unreadable or refused bytes are a per-item failure, not a crash
            return i, None, image_error(str(e), self.paths[i])
        except Exception as e:  # the encoder's preprocessing on an odd image: per item too
            return i, None, f"corrupt image: {type(e).__name__}: {e}"[:200]


def _collate(items):
    """In the worker: one stacked tensor per batch (one shared-memory block to hand over, not one per image),
    the positions it holds, and the per-item failures."""
    import torch

    ready = [(i, x) for i, x, err in items if err is None]
    batch = torch.stack([x for _, x in ready]) if ready else None
    return [i for i, _ in ready], batch, [(i, err) for i, _, err in items if err is not None]


def _is_missing(p) -> bool:
    return p is None or (isinstance(p, float) and np.isnan(p)) or not str(p).strip()


def image_error(status: str, path) -> str:
    """An image refusal (pipelines/ingest/images.py status) as an embedding error naming the file:
    'missing image: ...', 'corrupt image: ...' or 'refused image: too many pixels: ...'."""
    kind, _, detail = status.partition(": ")
    text = f"{kind} image: {detail or 'no such file'}" if kind in ("missing", "corrupt") else f"refused image: {status}"
    return f"{text}: {path}"[:300]


def image_keys(paths: list) -> tuple[list, list]:
    """sha256 of each image file's bytes (the cache key), or the reason there is none. Files are read through the
    image guard: regular files only (a FIFO or device is refused unread), at most MAX_IMAGE_BYTES."""
    from pipelines.ingest.images import ImageRefused, read_image_bytes

    keys, errors = [], []
    for p in paths:
        if _is_missing(p):
            keys.append(""), errors.append("no image")
            continue
        try:
            data = read_image_bytes(p)
        except ImageRefused as e:
            keys.append(""), errors.append(image_error(str(e), p))
            continue
        keys.append(sha(data)), errors.append(None)
    return keys, errors


def embed_images(paths: list, encoder, store, num_workers: int | None = None, progress: bool = True) -> EmbedResult:
    """Encode the distinct image files not in the store. One DataLoader (`num_workers` decoding processes while
    the model runs; None = Settings.loader_workers' default) streams batches; a shard is written every CHUNK items."""
    from torch.utils.data import DataLoader

    t0 = time.perf_counter()
    store = open_store(store, encoder)
    keys, errors = image_keys(paths)
    cached = _cached(store, keys)
    todo = {}
    for i, (k, e) in enumerate(zip(keys, errors)):
        if e is None and k not in store and k not in todo:
            todo[k] = str(paths[i])
    todo_keys = list(todo)
    workers = (LOADER_WORKERS if num_workers is None else int(num_workers)) if len(todo_keys) > encoder.batch_size else 0
    loader = DataLoader(_ImageFiles([todo[k] for k in todo_keys], encoder.preprocess), batch_size=encoder.batch_size,
                        num_workers=workers, collate_fn=_collate, prefetch_factor=4 if workers else None)
    writer, bar = _Writer(store), _progress(len(todo_keys), f"embed image [{encoder.key}]", progress)
    failed: dict[str, str] = {}
    for ready, batch, batch_failed in loader:
        failed.update((todo_keys[i], err) for i, err in batch_failed)
        if ready:
            writer.add([todo_keys[i] for i in ready], encoder.encode_tensor(batch))
        bar.update(len(ready) + len(batch_failed))
    writer.flush()
    bar.close()
    errors = [failed.get(k, e) if e is None else e for k, e in zip(keys, errors)]
    return _finish(encoder, store, keys, errors, cached, len(todo_keys) - len(failed), t0)


def embed(items: list, encoder, store, kind: str | None = None, num_workers: int | None = None,
          progress: bool = True) -> EmbedResult:
    """Embed texts (kind='text') or image files (kind='image', items are paths; None = no image) through the
    cache. `kind` defaults to the encoder's modality; a joint (CLIP) encoder needs it."""
    kind = kind or encoder.modality
    if encoder.modality == "joint":
        if kind not in ("text", "image"):
            raise ValueError(f"{encoder.key} embeds both texts and images: pass kind='text' or kind='image'")
        encoder = encoder.text_view() if kind == "text" else encoder.image_view()
    if kind != encoder.modality:
        raise ValueError(f"encoder {encoder.key} is a {encoder.modality} encoder, asked for {kind!r}")
    if kind == "text":
        return embed_texts(list(items), encoder, store, progress)
    if kind == "image":
        return embed_images(list(items), encoder, store, num_workers, progress)
    raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")


def product_items(products, modality: str) -> list:
    """What a product is embedded by: its text (title . description) or its image path."""
    if modality == "text":
        return [text_of(t, d) for t, d in zip(products["title"], products["description"])]
    return products["image_path"].tolist()


def product_manifest(products, result):
    """(uid, ok, error, content hash) per product, in the matrix's row order."""
    import pandas as pd

    product_id = products["product_id"].astype(str).to_numpy()
    platform = products["platform"].astype(str).to_numpy()
    return pd.DataFrame({"product_id": product_id, "platform": platform,
                         "uid": [f"{p}:{i}" for p, i in zip(platform, product_id)],
                         "status": np.where(result.ok, "ok", "failed"), "ok": result.ok,
                         "error": [e or "" for e in result.errors], "content_hash": result.keys})


def embed_products(products, modality: str, encoder_cfg, store_dir, *, progress: bool = True,
                   loader_workers: int | None = None, threads: int = 0, weights_cache=None):
    """Embed a product table's text (title . description) or images through the cache.

    Returns (manifest, matrix): manifest has one row per product in input order — product_id, platform, uid
    ('platform:product_id'), status ('ok'|'failed'), ok (bool), error ('' when ok), content_hash — and
    attrs {encoder, dim, n_computed, n_cached, seconds}; matrix is float32 [n, dim] with NaN rows where not ok.
    The run's settings come as arguments: `progress` (not Settings.quiet), `loader_workers`, `threads` (torch
    threads, 0 = the cores this process may use) and `weights_cache` (where weight hashes are remembered)."""
    from pipelines.features.encoders import load_encoder

    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    encoder = load_encoder(encoder_cfg, threads=threads, weights_cache=weights_cache)
    result = embed(product_items(products, modality), encoder, store_dir, kind=modality, num_workers=loader_workers,
                   progress=progress)
    manifest = product_manifest(products, result)
    manifest.attrs.update(encoder=encoder.key if encoder.modality != "joint" else f"{encoder.key}-{modality}",
                          dim=int(result.vectors.shape[1]), n_computed=result.n_computed, n_cached=result.n_cached,
                          seconds=round(result.seconds, 2))
    return manifest, result.vectors
