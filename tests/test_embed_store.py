"""Content-addressed cache: hits, incremental adds, per-encoder invalidation, atomic resume after a kill,
per-item failures for bad inputs."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.settings import SAMPLE_DIR
from pipelines.features.store import EmbeddingStore, embed_images, embed_texts
from pipelines.features.encoders import load_encoder


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
es.embed_texts(texts, enc, sys.argv[2])
print("finished")
"""


def test_killed_run_resumes_without_corrupt_entries(tiny_roberta, tmp_path):
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tiny_roberta), str(store)],
                            env=dict(os.environ, PRODCAT_QUIET="1"), cwd=Path(__file__).parents[1])
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
