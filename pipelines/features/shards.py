"""The embedding store's files: immutable npz shards in one directory per encoder, the key index over them, and
which faults set a shard aside.

Layout: <store>/<encoder key>/shard-<uuid>.npz, each holding `keys` (sha256 of the text or image bytes) and
`vectors` (float32). Shards are written to a temp name, fsynced, then renamed: a killed writer leaves only whole
shards (and perhaps a `.tmp-*` file, swept after an hour), and several processes may write at once (unique names,
no shared mutable index). The index (key -> shard, row) is rebuilt from the shards' keys on open; vectors are read
lazily, only from shards that hold something asked for.

Faults: only a shard whose content is provably bad (not an npz, wrong arrays, shape or dtype, non-finite vectors)
is quarantined (renamed `.corrupt`, its entries recomputed). An I/O error (EMFILE, EIO, permissions) says nothing
about the bytes: the shard stays in place and is retried on the next refresh. A reader whose shard vanished since it
indexed it (another process quarantined or removed it) re-indexes, and what is found nowhere counts as missing.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import time
import uuid
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipelines.files import atomic_write_bytes

STALE_TMP_SECONDS = 3600  # temp shards older than this belong to a dead writer


class ShardFormatError(ValueError):
    """A shard whose bytes are provably not a shard of this store (not an npz, missing arrays, wrong shape or
    dtype, non-finite vectors). Only these are quarantined; an I/O error says nothing about the content."""


class MissingEntries(KeyError):
    """Keys the store no longer holds (their shard vanished: quarantined or removed by another process)."""


# what reading a damaged npz raises: zip/CRC errors, truncated headers, missing members, pickled content
FORMAT_ERRORS = (ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError,
                 struct.error)


def read_shard(shard: Path, dim: int | None, vectors: bool = False):
    """(keys, shape) of a shard, or (keys, vectors) with vectors=True. Raises ShardFormatError for bad content;
    OSError (missing file, EMFILE, EIO, permissions) passes through untouched: it is not a verdict on the bytes."""
    try:
        with np.load(shard, allow_pickle=False) as z:
            keys, data = z["keys"], z["vectors"]
    except FORMAT_ERRORS as e:
        raise ShardFormatError(f"{type(e).__name__}: {e}") from e
    if keys.ndim != 1 or keys.dtype.kind != "U" or data.ndim != 2 or len(keys) != len(data):
        raise ShardFormatError(f"{keys.shape} keys of type {keys.dtype}, vectors {data.shape}")
    if dim is not None and data.shape[1] != dim:
        raise ShardFormatError(f"vectors {data.shape}, expected dim {dim}")
    if data.dtype != np.float32 or not np.isfinite(data).all():
        raise ShardFormatError(f"vectors of type {data.dtype}, or non-finite values")
    return (keys, data) if vectors else (keys, data.shape)


class EmbeddingStore:
    """One encoder's namespace of the cache."""

    def __init__(self, root: str | Path, encoder_key: str, dim: int | None = None, meta: dict | None = None):
        self.dir = Path(root) / encoder_key
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.index: dict[str, tuple[Path, int]] = {}
        self._keys: dict[Path, int] = {}  # shard -> number of rows
        self._vectors: dict[Path, np.ndarray] = {}
        if meta is not None and not (self.dir / "meta.json").exists():
            atomic_write_bytes(self.dir / "meta.json", json.dumps(meta, indent=1, default=str).encode())
        self._sweep_stale_tmp()
        self.refresh()

    def _sweep_stale_tmp(self):
        for tmp in self.dir.glob(".tmp-*"):
            try:
                if time.time() - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except OSError:
                pass  # another process got there first

    def refresh(self, skip=()):
        """Pick up shards written since (by this or another process), except those in `skip`. A shard with bad
        content is quarantined (renamed to .corrupt; its items get recomputed); one that cannot be read right now
        (EMFILE, EIO, permissions) stays in place and is retried on the next refresh; one that is gone is simply
        not there."""
        for shard in sorted(self.dir.glob("shard-*.npz")):
            if shard in self._keys or shard in skip:
                continue
            try:
                keys, _ = read_shard(shard, self.dim)
            except FileNotFoundError:
                continue  # quarantined or removed by another process since the listing
            except ShardFormatError as e:
                self._quarantine(shard, e)
                continue
            except OSError as e:
                warnings.warn(f"embedding store: cannot read {shard} now ({type(e).__name__}: {e}); skipped for "
                              "this refresh, left in place")
                continue
            self._keys[shard] = len(keys)
            for i, k in enumerate(keys.tolist()):
                self.index.setdefault(k, (shard, i))

    def _quarantine(self, shard: Path, error: Exception):
        bad = shard.with_name(shard.name + ".corrupt")
        warnings.warn(f"embedding store: bad shard {shard} ({error}); moved to {bad.name}, its entries will be "
                      "recomputed")
        try:
            os.replace(shard, bad)
        except OSError:
            pass  # another process moved it first

    def reindex(self, skip=()):
        """Rebuild the index from the shards present now (minus `skip`): after a shard vanished, keys it held may
        live in another shard (written by another process), which the first-come index did not record."""
        self.index.clear()
        self._keys.clear()
        self._vectors = {s: v for s, v in self._vectors.items() if s.exists() and s not in skip}
        self.refresh(skip)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shards(self) -> list[Path]:
        return sorted(self._keys)

    def _load_vectors(self, shards) -> list[Path]:
        """Read the given shards' vectors into memory; returns those that are gone or unreadable now."""
        lost = []
        for shard in shards:
            if shard in self._vectors:
                continue
            try:
                self._vectors[shard] = read_shard(shard, self.dim, vectors=True)[1]
            except FileNotFoundError:
                lost.append(shard)
            except ShardFormatError as e:  # changed since it was indexed: the bytes are bad now
                self._quarantine(shard, e)
                lost.append(shard)
            except OSError as e:
                warnings.warn(f"embedding store: cannot read vectors of {shard} now ({type(e).__name__}: {e}); "
                              "left in place, its entries count as missing for this call")
                lost.append(shard)
        return lost

    def pin(self, keys) -> None:
        """Hold in memory the vectors of every stored key in `keys`. A shard that vanished since it was indexed
        (another process quarantined or removed it) makes the store re-index; keys found nowhere any more drop
        out of the store, so callers recompute them instead of failing when they read them back."""
        lost: set[Path] = set()
        for _ in range(3):  # shards may vanish while we re-index
            needed = {self.index[k][0] for k in keys if k in self.index}
            newly_lost = self._load_vectors(sorted(needed))
            if not newly_lost:
                return
            lost.update(newly_lost)
            self.reindex(skip=lost)  # an unreadable shard stays out until a later refresh finds it readable

    def get(self, keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.dim or 0), np.float32)
        self.pin(keys)
        missing = [k for k in keys if k not in self.index or self.index[k][0] not in self._vectors]
        if missing:
            raise MissingEntries(f"{len(missing)} entries are no longer in {self.dir} (their shard vanished), "
                                 f"e.g. {missing[0]}")
        return np.stack([self._vectors[s][i] for s, i in (self.index[k] for k in keys)])

    def put(self, keys: list[str], vectors: np.ndarray):
        if not keys:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(keys) != len(vectors) or not np.isfinite(vectors).all():
            raise ValueError(f"refusing to store {len(keys)} keys with vectors {vectors.shape} (or non-finite values)")
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), vectors=vectors)
        shard = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        atomic_write_bytes(shard, buf.getvalue())
        self._keys[shard], self._vectors[shard] = len(keys), vectors
        for i, k in enumerate(keys):
            self.index.setdefault(k, (shard, i))
