"""Sharded embedding and batch classification over dask.distributed workers.

The driver (any process holding a dask Client: the CLI, a Dagster step, a Dask task itself) hashes the items,
drops duplicates and everything the shared content-addressed store already holds, and maps only the missing items,
cut into shards, over the workers. A worker keeps its encoder / classifier resident (loaded once per worker process,
keyed by encoder config / model weights digest) and writes its vectors into the store itself: shards are immutable
files written to a temp name and renamed (pipelines/features/store.py), so several workers write at once safely.

Faults: a worker that dies mid-shard leaves at most a `.tmp-*` file, never a half shard; the scheduler re-runs the
shard elsewhere (`distributed.scheduler.allowed-failures`), and the retried task re-reads the store, so whatever a
finished shard wrote is not encoded again. A rerun of the whole call encodes nothing that is already stored.

Equivalence: shards are cut from the same ordered todo list the in-process path encodes, at multiples of the
encoder's batch size, so every batch the model sees is the batch it would see in process; vectors, store keys and
predictions are identical (tests/test_distributed.py compares them).

    with cluster_client(settings.dask_scheduler) as client:   # that scheduler, the cluster we run inside, or None
        manifest, matrix = embed_products_distributed(products, "text", "minilm", store_dir, client,
                                                      shard_resources=settings.dask_shard_resources)
        paths, conf, prob = predict_distributed(model_dir, features, available, client)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SHARD_ITEMS = 1024  # items per embedding shard (rounded up to the encoder's batch size): what a killed worker loses
PREDICT_ROWS = 8192  # feature rows per classification shard
HASH_ITEMS = 2048  # image paths per hashing task

# ---- worker side: resident models ------------------------------------------------------------------------------

_RESIDENT: dict = {}  # per worker process: memo -> loaded encoder or classifier, reused by every task
LOADS: Counter = Counter()  # how often each was loaded in this process (once, unless evicted)


def worker_threads() -> int:
    """The thread count of the Dask worker running this task (torch then uses the worker's share of the host,
    not every core of it); 0 outside a worker (= the cores this process may use)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError):  # not inside a worker
        return 0


def resident_encoder(spec, kind: str, weights_cache=None):
    """The encoder for `spec` (name or config dict), loaded once per worker process; a joint encoder gives the
    tower for `kind`, like store.embed does."""
    from pipelines.features.encoders import encoder_config, load_encoder

    memo = ("encoder", json.dumps(encoder_config(spec), sort_keys=True, default=str), kind)
    if memo not in _RESIDENT:
        encoder = load_encoder(spec, threads=worker_threads(), weights_cache=weights_cache)
        if encoder.modality == "joint":
            encoder = encoder.text_view() if kind == "text" else encoder.image_view()
        if encoder.modality != kind:
            raise ValueError(f"encoder {encoder.key} is a {encoder.modality} encoder, asked for {kind!r}")
        _RESIDENT[memo] = encoder
        LOADS[f"encoder:{encoder.key}@batch{encoder.cfg.get('batch_size', 64)}"] += 1
    return _RESIDENT[memo]


def model_digest(model_dir) -> str:
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()[:16]


def resident_model(model_dir, digest: str):
    """A classifier loaded once per worker process, keyed by its weights digest (a retrained model in the same
    directory is a new key, never a stale resident copy)."""
    memo = ("model", digest)
    if memo not in _RESIDENT:
        from pipelines.classify.train import load_model
        from pipelines.features.encoders import configure_threads

        configure_threads(worker_threads())
        model = load_model(model_dir)
        if model_digest(model_dir) != digest:
            raise RuntimeError(f"{model_dir} changed while being loaded (weights digest is not {digest})")
        _RESIDENT[memo] = model
        LOADS[f"model:{digest}"] += 1
    return _RESIDENT[memo]


def resident_loads() -> dict:
    """Run on each worker (client.run(resident_loads)): what it loaded, how often, and its pid."""
    return {"pid": os.getpid(), "loads": dict(LOADS)}


# ---- worker side: tasks ----------------------------------------------------------------------------------------

def encoder_identity(spec, kind: str, weights_cache=None) -> dict:
    """What the driver needs to open the store: key, dim, batch size, and the store's meta record."""
    enc = resident_encoder(spec, kind, weights_cache)
    meta = {"key": enc.key, "dim": enc.dim, "modality": enc.modality, "config": enc.cfg,
            "weights_sha256": enc.weights}
    return {"key": enc.key, "dim": int(enc.dim), "batch_size": int(enc.cfg.get("batch_size", 64)), "meta": meta}


def hash_images(paths: list) -> tuple[list, list]:
    from pipelines.features.store import image_keys

    return image_keys(paths)


def embed_shard(kind: str, spec, items: list, store_dir: str, weights_cache=None) -> dict:
    """Encode one shard into the store. Items already stored (a retried shard) are skipped by embed_*. No progress
    bar: many workers' bars interleaved are noise; the driver reports per shard."""
    from pipelines.features.store import embed_images, embed_texts

    t0 = time.perf_counter()
    encoder = resident_encoder(spec, kind, weights_cache)
    if kind == "text":
        res = embed_texts(items, encoder, store_dir, progress=False)
    else:  # a worker process is a daemon: it cannot fork DataLoader workers, so decode in the task's thread
        res = embed_images(items, encoder, store_dir, num_workers=0, progress=False)
    failed = {k: e for k, e in zip(res.keys, res.errors) if e and k}
    return {"n_computed": res.n_computed, "failed": failed, "seconds": time.perf_counter() - t0, "pid": os.getpid()}


def predict_shard(model_dir: str, digest: str, part: tuple, batch_size: int) -> tuple:
    """part = (features, available) of a row shard -> (paths, conf, prob, fallback)."""
    features, available = part
    model = resident_model(model_dir, digest)
    avail = {m: np.asarray(available[m], bool) for m in model.modalities}
    paths, conf, prob = model.predict_arrays({m: features[m] for m in model.modalities}, avail, batch_size=batch_size)
    return paths, conf, prob, model.fallback(avail)


# ---- driver side -----------------------------------------------------------------------------------------------

def in_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def cluster_client(address: str | None = None):
    """A Client for sharding, or None (embed in process): inside a Dask task (e.g. a Dagster step on the
    dask executor) the cluster running it, via worker_client (the task secedes from the worker's thread pool
    while it waits for its shards, so it cannot starve them); else the scheduler at `address`
    (Settings.dask_scheduler, e.g. tcp://host:8786); else None."""
    if in_worker():
        from distributed import worker_client

        with worker_client() as client:
            yield client
        return
    if not address:
        yield None
        return
    from distributed import Client

    client = Client(address, timeout="30s")
    try:
        yield client
    finally:
        client.close()


def local_cluster(n_workers: int = 2, threads_per_worker: int = 1, preload=(), **kwargs):
    """A LocalCluster of separate worker processes (nannies restart a worker that dies) over loopback TCP.
    `preload`: modules every worker imports at start (the Dagster layer passes its own, e.g. to size its events)."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                        host="127.0.0.1", dashboard_address=kwargs.pop("dashboard_address", ":0"),
                        preload=list(preload), **kwargs)


def parse_shard_resources(spec: str = "") -> dict | None:
    """Settings.dask_shard_resources ("GPU=1", "GPU=1,MEM=4") as dask resources: embedding shards then only run
    on workers started with `--resources GPU=1` (one shard per GPU at a time); hashing and classification shards
    stay unrestricted. Empty: no restriction."""
    spec = (spec or "").strip()
    if not spec:
        return None
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in spec.split(","))}
    except ValueError:
        raise ValueError(f"dask shard resources {spec!r}: expected NAME=AMOUNT[,NAME=AMOUNT], e.g. GPU=1") from None


def _digest(parts) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _shard_bounds(n: int, shard_items: int, batch_size: int) -> list[tuple[int, int]]:
    size = max(batch_size, -(-shard_items // batch_size) * batch_size)  # a multiple of the batch size
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _suspicious(keys, dask_scheduler=None) -> dict:
    """Per task: how many workers died while it was assigned to them (the scheduler's own count)."""
    return {k: dask_scheduler.tasks[k].suspicious for k in keys if k in dask_scheduler.tasks}


def _image_keys(client, paths: list) -> tuple[list, list]:
    """sha256 of every image, hashed on the workers (one read of each file, where the data is)."""
    from pipelines.features.store import _is_missing

    distinct = sorted({str(p) for p in paths if not _is_missing(p)})
    chunks = [distinct[s:s + HASH_ITEMS] for s in range(0, len(distinct), HASH_ITEMS)]
    futures = [client.submit(hash_images, c, key=f"prodcat-hash-{_digest(c)}") for c in chunks]
    by_path = {}
    for chunk, (keys, errors) in zip(chunks, client.gather(futures)):
        by_path.update(zip(chunk, zip(keys, errors)))
    out = [("", "no image") if _is_missing(p) else by_path[str(p)] for p in paths]
    return [k for k, _ in out], [e for _, e in out]


def embed_distributed(items: list, kind: str, spec, store_dir, client, shard_items: int = SHARD_ITEMS,
                      shard_resources: str = "", weights_cache=None):
    """store.embed's result (EmbedResult), computed by shards on the cluster. stats: shards, shards_retried
    (tasks a dead worker was holding), workers (pids that encoded something). `shard_resources`: see
    parse_shard_resources(); `weights_cache`: Settings.weights_cache, for the workers' encoders."""
    from pipelines.features.store import EmbeddingStore, text_value, _finish, sha

    if kind not in ("text", "image"):
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    t0 = time.perf_counter()
    ident = client.submit(encoder_identity, spec, kind, weights_cache, pure=False).result()
    store = EmbeddingStore(store_dir, ident["key"], ident["dim"], ident["meta"])
    if kind == "text":
        items = [text_value(t) for t in items]
        errors = [None if t else "empty text" for t in items]
        keys = [sha(t.encode("utf-8")) if t else "" for t in items]
    else:
        keys, errors = _image_keys(client, list(items))
    cached = [bool(k) and k in store for k in keys]
    todo: dict[str, str] = {}
    for k, item, e, c in zip(keys, items, errors, cached):
        if e is None and not c and k not in todo:
            todo[k] = str(item)
    order = sorted(todo, key=lambda k: len(todo[k])) if kind == "text" else list(todo)  # as embed_texts orders
    shards = [[todo[k] for k in order[s:e]] for s, e in _shard_bounds(len(order), shard_items, ident["batch_size"])]
    names = [f"prodcat-embed-{ident['key']}-{_digest(order[s:e])}"
             for s, e in _shard_bounds(len(order), shard_items, ident["batch_size"])]
    resources = parse_shard_resources(shard_resources)
    futures = [client.submit(embed_shard, kind, spec, shard, str(store_dir), weights_cache, key=name,
                             resources=resources)
               for shard, name in zip(shards, names)]
    done = client.gather(futures)
    retried = client.run_on_scheduler(_suspicious, names)
    del futures
    failed = {}
    for d in done:
        failed.update(d["failed"])
    errors = [failed.get(k, e) if e is None else e for k, e in zip(keys, errors)]
    store.refresh()
    result = _finish(SimpleNamespace(dim=ident["dim"]), store, keys, errors, cached,
                     sum(d["n_computed"] for d in done), t0)
    result.stats = {"encoder": ident["key"], "shards": len(shards),
                    "shards_retried": sum(1 for v in retried.values() if v),
                    "workers": sorted({d["pid"] for d in done if d["n_computed"]})}
    return result


def embed_products_distributed(products, modality: str, spec, store_dir, client, shard_items: int = SHARD_ITEMS,
                               shard_resources: str = "", weights_cache=None):
    """store.embed_products on the cluster: the same (manifest, matrix), attrs included."""
    from pipelines.features.store import product_items, product_manifest

    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
    result = embed_distributed(product_items(products, modality), modality, spec, store_dir, client, shard_items,
                               shard_resources, weights_cache)
    manifest = product_manifest(products, result)
    manifest.attrs.update(encoder=result.stats["encoder"], dim=int(result.vectors.shape[1]),
                          n_computed=result.n_computed, n_cached=result.n_cached, seconds=round(result.seconds, 2),
                          shards=result.stats["shards"], shards_retried=result.stats["shards_retried"])
    return manifest, result.vectors


def predict_distributed(model_dir, features: dict, available: dict, client, rows: int = PREDICT_ROWS,
                        batch_size: int = 4096, return_fallback: bool = False):
    """train.predict over row shards on the cluster, each worker holding the model resident. Shards are whole
    multiples of the forward batch (`batch_size`, train.predict's 4096 by default), so every batch is the one the
    in-process path runs and the outputs are identical, not merely close."""
    from pipelines.classify.train import check_inputs

    model_dir = Path(model_dir).resolve()
    meta = json.loads((model_dir / "model.json").read_text())
    modalities = meta["cfg"]["modalities"]
    n = check_inputs(features, available, modalities)
    for m in modalities:
        if features[m].shape[1] != meta["dims"][m]:
            raise ValueError(f"{m}: model expects {meta['dims'][m]}-d vectors, got {features[m].shape[1]}-d")
    digest = model_digest(model_dir)
    bounds = _shard_bounds(n, rows, batch_size)
    parts = [({m: np.asarray(features[m][s:e]) for m in modalities},
              {m: np.asarray(available[m][s:e], bool) for m in modalities}) for s, e in bounds]
    scattered = client.scatter(parts, hash=False)  # arrays go to the workers as data, not inside the task graph
    out = client.gather([client.submit(predict_shard, str(model_dir), digest, part, batch_size) for part in scattered])
    if not out:
        raise ValueError("nothing to predict: no feature rows")
    paths = [p for o in out for p in o[0]]
    conf, prob, fallback = (np.concatenate([o[i] for o in out]) for i in (1, 2, 3))
    return (paths, conf, prob, fallback) if return_fallback else (paths, conf, prob)
