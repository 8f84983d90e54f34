"""Content-addressed cache: hits, incremental adds, per-encoder invalidation, atomic resume after a kill,
per-item failures for bad inputs, and which shard faults quarantine a shard (only bad content) and which do not
(I/O errors; a shard another process moved away)."""
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipelines.settings import SAMPLE_DIR
from pipelines.features.encoders import load_encoder
from pipelines.features.store import EmbeddingStore, MissingEntries, embed_images, embed_texts


@pytest.fixture(scope="module")
def tiny(tiny_roberta):
    return load_encoder({"name": "tiny-roberta", "family": "hf_text", "model": str(tiny_roberta), "max_length": 16,
                         "batch_size": 32})


def titles(n):
    import pandas as pd

    return pd.read_csv(SAMPLE_DIR / "myntra" / "styles.csv", dtype=str)["productDisplayName"].fillna("").tolist()[:n]


def test_cache_hits_dedup_and_incremental(tiny, tmp_path):
    texts = titles(400)
    first = embed_texts(texts, tiny, tmp_path)
    unique = len({t for t in texts if t.strip()})
    assert first.n_computed == unique  # identical content encoded once
    again = embed_texts(texts, tiny, tmp_path)
    assert again.n_computed == 0 and np.array_equal(again.vectors[again.ok], first.vectors[first.ok])
    more = texts + [f"brand new product number {i}" for i in range(4)]  # +1%
    grown = embed_texts(more, tiny, tmp_path)
    assert grown.n_computed == 4
    assert np.allclose(grown.vectors[:400][first.ok], first.vectors[first.ok])


def test_changing_the_encoder_invalidates_only_its_own_entries(tiny, tiny_roberta, tmp_path):
    texts = titles(100)
    embed_texts(texts, tiny, tmp_path)
    other = load_encoder({"name": "tiny-roberta", "family": "hf_text", "model": str(tiny_roberta), "max_length": 8})
    assert other.key != tiny.key
    assert embed_texts(texts, other, tmp_path).n_computed > 0
    assert embed_texts(texts, tiny, tmp_path).n_computed == 0  # the first encoder's entries are untouched


def test_bad_inputs_are_per_item_failures_not_zero_vectors(tmp_path):
    image = load_encoder("efficientnet-lite0")
    good = next((SAMPLE_DIR / "myntra" / "images").glob("*.jpg"))
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    res = embed_images([str(good), str(tmp_path / "truncated.jpg"), str(tmp_path / "garbage.jpg"),
                        str(tmp_path / "missing.jpg"), None], image, tmp_path / "store", num_workers=0)
    assert res.ok.tolist() == [True, False, False, False, False]
    assert res.errors[1].startswith("corrupt image") and res.errors[3].startswith("missing image")
    assert res.errors[4] == "no image"
    assert np.isnan(res.vectors[1:]).all() and np.isfinite(res.vectors[0]).all()
    text = load_encoder("minilm")
    t = embed_texts(["", "   ", "x" * 100_000], text, tmp_path / "store")
    assert t.errors[:2] == ["empty text", "empty text"] and t.ok.tolist() == [False, False, True]


KILL_SCRIPT = """
import sys, time
import pipelines.features.store as es
from pipelines.features.encoders import load_encoder
es.CHUNK = 64
enc = load_encoder({"name": "tiny-roberta", "family": "hf_text", "model": sys.argv[1], "max_length": 16})
orig = enc.encode
def slow(batch):
    time.sleep(0.15)
    return orig(batch)
enc.encode = slow
texts = [f"product {i} " + "word " * (i % 7) for i in range(2000)]
es.embed_texts(texts, enc, sys.argv[2], progress=False)
print("finished")
"""


def test_killed_run_resumes_without_corrupt_entries(tiny_roberta, tmp_path):
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_roberta), str(store)],
                            cwd=Path(__file__).parents[1])
    deadline = time.time() + 120
    while time.time() < deadline and len(list(store.rglob("shard-*.npz"))) < 3:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run, possibly mid-write
    proc.wait()
    shards_before = {p.name for p in store.rglob("shard-*.npz")}
    assert len(shards_before) >= 3
    enc = load_encoder({"name": "tiny-roberta", "family": "hf_text", "model": str(tiny_roberta), "max_length": 16})
    opened = EmbeddingStore(store, enc.key)  # every shard left behind is whole and readable
    done = len(opened)
    texts = [f"product {i} " + "word " * (i % 7) for i in range(2000)]
    res = embed_texts(texts, enc, store)
    assert res.ok.all() and res.n_cached == done and res.n_computed == 2000 - done  # finished chunks not redone
    assert shards_before <= {p.name for p in store.rglob("shard-*.npz")}


def _two_shards(tiny, root):
    """A store namespace holding two shards written by two embedding calls (100 titles, then 50 more)."""
    texts = titles(150)
    embed_texts(texts[:100], tiny, root, progress=False)
    embed_texts(texts, tiny, root, progress=False)
    shards = sorted((root / tiny.key).glob("shard-*.npz"))
    assert len(shards) == 2
    return texts, shards


def test_only_bad_content_is_quarantined(tiny, tmp_path):
    _, shards = _two_shards(tiny, tmp_path)
    ns = tmp_path / tiny.key
    (ns / "shard-garbage.npz").write_bytes(b"not an npz at all")
    with np.load(shards[0]) as z:  # a whole npz whose vectors do not fit its keys
        np.savez(ns / "shard-mismatch.npz", keys=z["keys"], vectors=z["vectors"][:3])
    with pytest.warns(UserWarning, match="bad shard"):
        store = EmbeddingStore(tmp_path, tiny.key, tiny.dim)
    assert sorted(p.name for p in ns.glob("*.corrupt")) == ["shard-garbage.npz.corrupt", "shard-mismatch.npz.corrupt"]
    assert store.shards == shards and all(s.exists() for s in shards)


def test_unreadable_shard_is_left_in_place_not_quarantined(tiny, tmp_path):
    """An I/O error (here EISDIR; in production EMFILE, EIO, EACCES) says nothing about the bytes: the shard is
    skipped for this refresh with a warning, stays where it is, and is picked up once it reads again."""
    texts, shards = _two_shards(tiny, tmp_path)
    ns = tmp_path / tiny.key
    blocked = ns / "shard-unreadable.npz"
    blocked.mkdir()  # open() fails with IsADirectoryError, an OSError like EMFILE
    with pytest.warns(UserWarning, match="left in place"):
        store = EmbeddingStore(tmp_path, tiny.key, tiny.dim)
    assert blocked.is_dir() and not list(ns.glob("*.corrupt"))
    assert store.shards == shards and len(store) == len(set(texts))
    blocked.rmdir()
    shards[1].rename(blocked)  # readable again (under that name): the next refresh indexes it
    store.refresh()
    assert blocked in store.shards


def test_reader_reindexes_when_another_process_moves_a_shard_away(tiny, tmp_path):
    texts, shards = _two_shards(tiny, tmp_path)
    before = embed_texts(texts, tiny, tmp_path, progress=False)
    reader = EmbeddingStore(tmp_path, tiny.key, tiny.dim)  # indexes both shards, reads no vectors yet
    with np.load(shards[1]) as z:
        moved_keys = z["keys"].tolist()
    os.replace(shards[1], shards[1].with_name(shards[1].name + ".corrupt"))  # what another process did
    with pytest.raises(MissingEntries, match="vanished"):
        reader.get(moved_keys[:2])  # found nowhere: a named error, not FileNotFoundError
    again = embed_texts(texts, tiny, reader)  # the open store re-indexes and recomputes what is gone
    assert again.ok.all() and again.n_computed == len(moved_keys)
    assert np.allclose(again.vectors, before.vectors, atol=1e-6)
    recomputed = [s for s in sorted((tmp_path / tiny.key).glob("shard-*.npz")) if s != shards[0]]
    assert len(recomputed) == 1
    duplicate = recomputed[0].with_name("shard-zzzz.npz")  # the same entries in a second shard, indexed after it
    duplicate.write_bytes(recomputed[0].read_bytes())
    second = EmbeddingStore(tmp_path, tiny.key, tiny.dim)
    assert second.index[moved_keys[0]][0] == recomputed[0]
    os.replace(recomputed[0], recomputed[0].with_name(recomputed[0].name + ".corrupt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shard moved away is no fault to warn about: the reader just re-indexes
        vectors = second.get(moved_keys)
    assert second.index[moved_keys[0]][0] == duplicate
    assert np.allclose(vectors, again.vectors[[again.keys.index(k) for k in moved_keys]])
