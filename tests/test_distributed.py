"""Scale-out on Dask, on a real dask.distributed LocalCluster: two worker processes (one thread each) talking to a
real scheduler over loopback TCP. Same embeddings / store / predictions on every executor; a worker killed
mid-shard; the Dagster run on the dagster-dask executor."""
import os
import shutil
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from pipelines.settings import SAMPLE_DIR, Settings

ROWS = 200  # myntra products in the test export (short titles: MiniLM is cheap)
KILL_TEXTS = 240  # H&M title + description texts embedded while a worker is killed


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    from orchestration.dask_preload import DASK_PRELOAD
    from pipelines.features.sharding import local_cluster

    os.environ.pop("PRODCAT_DASK_SCHEDULER", None)  # in-process runs must stay in process
    # identical bits need identical intra-op threads: with 2 torch threads instead of 1 a few MiniLM vectors move
    # by one ulp. Workers run 1 thread each; so do the in-process and multiprocess runs here.
    threads = os.environ.get("PRODCAT_THREADS")
    os.environ["PRODCAT_THREADS"] = "1"
    try:
        with local_cluster(n_workers=2, threads_per_worker=1, preload=DASK_PRELOAD) as cluster, Client(cluster) as c:
            assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
            yield c
    finally:
        os.environ.pop("PRODCAT_THREADS") if threads is None else os.environ.update(PRODCAT_THREADS=threads)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The sample's Myntra export cut to its first ROWS products, with their images."""
    root = tmp_path_factory.mktemp("raw")
    src, dst = SAMPLE_DIR / "myntra", root / "myntra"
    (dst / "images").mkdir(parents=True)
    styles = pd.read_csv(src / "styles.csv", dtype=str, keep_default_na=False)
    styles = styles[[(src / "images" / f"{i}.jpg").exists() for i in styles["id"]]].head(ROWS)
    styles.to_csv(dst / "styles.csv", index=False)
    for i in styles["id"]:
        shutil.copy(src / "images" / f"{i}.jpg", dst / "images" / f"{i}.jpg")
    return root


def _store(work) -> dict:
    """Every entry of a content-addressed store: {(encoder key, content key): vector}."""
    out = {}
    for shard in sorted((work / "store").glob("*/shard-*.npz")):
        with np.load(shard, allow_pickle=False) as z:
            out.update({(shard.parent.name, k): v for k, v in zip(z["keys"].tolist(), z["vectors"])})
    return out


def _data_version(instance, key, partition):
    records = instance.fetch_materializations(AssetKey(key), limit=5).records
    return [r.asset_materialization.tags["dagster/data_version"] for r in records
            if r.asset_materialization.partition == partition][0]


@pytest.fixture(scope="module")
def engines(raw, client, tmp_path_factory):
    """normalized_products + text_embeddings [myntra] materialised in process, on the multiprocess executor and
    on the dask executor (existing scheduler), each into its own work dir and Dagster instance."""
    from orchestration.definitions import build_definitions
    from orchestration.runners import stage_runner
    from pipelines.features.sharding import resident_loads

    out = {}
    for executor in ("in_process", "multiprocess", "dask"):
        root = tmp_path_factory.mktemp(executor)
        # only the dask executor's steps shard over the cluster; in-process and multiprocess runs stay in process
        scheduler = client.scheduler.address if executor == "dask" else ""
        settings = Settings(data_root=raw, work_dir=root / "work", threads=1, dask_scheduler=scheduler)
        defs = build_definitions(settings)
        (root / "dagster").mkdir()
        (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        instance = DagsterInstance.local_temp(str(root / "dagster"))  # persistent: other processes read it
        run = stage_runner(executor, settings)
        loads_before = client.run(resident_loads)
        t0 = time.perf_counter()
        results = [run(defs, (a,), instance, "myntra")
                   for a in ("normalized_products", "text_embeddings")]
        print(f"{executor}: {time.perf_counter() - t0:.1f} s")
        out[executor] = {"work": root / "work", "instance": instance, "results": results,
                         "seconds": time.perf_counter() - t0, "loads_before": loads_before,
                         "loads_after": client.run(resident_loads)}
    return out


def test_same_embeddings_store_and_data_versions_on_every_executor(engines):
    from pipelines.features.matrices import load_matrix

    ref = engines["in_process"]
    ref_manifest = pd.read_parquet(ref["work"] / "assets" / "text_embeddings" / "myntra.parquet")
    ref_matrix = load_matrix(ref["work"], "text", "myntra")
    ref_store = _store(ref["work"])
    n = len(pd.read_parquet(ref["work"] / "assets" / "normalized_products" / "myntra.parquet"))
    assert len(ref_manifest) == n > ROWS / 2 and ref_manifest["ok"].all() and len(ref_store) > 0.8 * n
    for executor in ("multiprocess", "dask"):
        run = engines[executor]
        manifest = pd.read_parquet(run["work"] / "assets" / "text_embeddings" / "myntra.parquet")
        pd.testing.assert_frame_equal(manifest, ref_manifest)
        assert np.array_equal(load_matrix(run["work"], "text", "myntra"), ref_matrix)  # bitwise
        store = _store(run["work"])
        assert store.keys() == ref_store.keys()
        assert all(np.array_equal(store[k], ref_store[k]) for k in ref_store)
        for key in ("normalized_products", "text_embeddings"):
            assert _data_version(run["instance"], key, "myntra") == _data_version(ref["instance"], key, "myntra")


def test_dagster_run_on_the_dask_executor_shards_over_the_cluster(engines):
    run = engines["dask"]
    for result, asset in zip(run["results"], ("normalized_products", "text_embeddings")):
        assert result.success
        assert "existing" in result.dagster_run.run_config["execution"]["config"]["cluster"]
        mats = [e.materialization for e in result.get_asset_materialization_events()]
        assert [(m.asset_key.to_user_string(), m.partition) for m in mats] == [(asset, "myntra")]
        checks = result.get_asset_check_evaluations()
        assert all(c.passed for c in checks)
    assert any(c.check_name for c in run["results"][0].get_asset_check_evaluations())  # the blocking GX suite ran
    meta = run["results"][1].get_asset_materialization_events()[0].materialization.metadata
    assert meta["rows"].value > ROWS / 2 and meta["computed"].value > 0.8 * meta["rows"].value
    # the shards were encoded on the workers, each loading MiniLM once and keeping it resident
    minilm = [{k: v for k, v in w["loads"].items() if k.startswith("encoder:minilm")} for w in run["loads_after"].values()]
    assert any(minilm) and all(v == 1 for w in minilm for v in w.values())
    assert not any(k.startswith("encoder:minilm") for w in run["loads_before"].values() for k in w["loads"])


def _dask_size(obj) -> int:
    from dask.sizeof import sizeof

    return sizeof(obj)


def test_workers_size_dagster_step_events(engines, client):
    """dask sizes each task result; dagster-dask's results are lists of Dagster events, which dask cannot size
    on its own (a warning per step). The workers' preload registers a size for them."""
    events = engines["dask"]["results"][1].all_events
    sizes = client.run(_dask_size, events)  # on every worker of the cluster
    assert len(sizes) == 2 and all(s > 0 for s in sizes.values())


def test_batch_predictions_identical_in_process_and_on_the_cluster(engines, client, tmp_path):
    from pipelines.ingest.catalogue import read_products
    from pipelines.features.sharding import predict_distributed
    from pipelines.features.matrices import load_matrix
    from pipelines.taxonomy.tree import load_taxonomy
    from pipelines.classify.train import load_model, predict, strategy_config, train_classifier

    work = engines["in_process"]["work"]
    products = read_products(work / "assets" / "normalized_products" / "myntra.parquet")
    x = load_matrix(work, "text", "myntra")
    ok = ~np.isnan(x).any(1)
    cfg = strategy_config("text") | {"epochs": 3, "patience": 3}
    model = train_classifier(cfg, {"text": np.nan_to_num(x)}, {"text": ok}, products["category_path"].tolist(),
                             products["split"].to_numpy(), load_taxonomy(), tmp_path / "m", max_epochs=3).model_dir
    local = predict(model, {"text": np.nan_to_num(x)}, {"text": ok}, return_fallback=True)
    local_small = load_model(model).predict_arrays({"text": np.nan_to_num(x)}, {"text": ok}, batch_size=32)
    for executor in ("in_process", "dask"):  # the features each engine produced, predicted on the cluster
        xe = {"text": np.nan_to_num(load_matrix(engines[executor]["work"], "text", "myntra"))}
        whole = predict_distributed(model, xe, {"text": ok}, client, return_fallback=True)
        sharded = predict_distributed(model, xe, {"text": ok}, client, rows=64, batch_size=32)  # 64-row shards
        for dist, ref in ((whole, local), (sharded, local_small)):
            assert dist[0] == ref[0] and len(dist[0]) == len(x)
            assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(dist[1:], ref[1:]))


def test_worker_killed_mid_shard_run_completes_store_whole_nothing_recomputed(client, tmp_path):
    from pipelines.features.sharding import embed_distributed, resident_loads
    from pipelines.features.store import embed_texts, text_of
    from pipelines.features.encoders import encoder_config, load_encoder
    from pipelines.ingest.normalize import normalize_platform

    products = normalize_platform("hm", SAMPLE_DIR / "hm", verify_images=False).products  # long texts: slow shards
    texts = [text_of(t, d) for t, d in zip(products["title"], products["description"])][:KILL_TEXTS]
    spec = encoder_config("minilm") | {"batch_size": 16}  # batch size is not part of the cache key
    store = tmp_path / "store"
    pids = client.run(os.getpid)
    box = {}
    runner = threading.Thread(target=lambda: box.update(res=embed_distributed(texts, "text", spec, store, client,
                                                                             shard_items=32)))
    runner.start()
    killed, deadline = None, time.time() + 90
    while killed is None and runner.is_alive() and time.time() < deadline:
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("prodcat-embed") for k in keys)]
        if busy and len(list(store.glob("*/shard-*.npz"))) >= 2:  # some shards finished, one is being encoded
            killed = busy[0]
            os.kill(pids[killed], signal.SIGKILL)
        time.sleep(0.02)
    runner.join(timeout=180)
    assert killed is not None, "the run finished before a worker could be killed"
    res = box["res"]
    distinct = {k for k in res.keys if k}
    assert res.ok.sum() == sum(1 for t in texts if t.strip()) and res.stats["shards_retried"] >= 1
    # the store: only whole shards (a dead writer leaves at most a .tmp- file), each entry written exactly once
    shards = sorted(store.glob("*/shard-*.npz"))
    rows = 0
    for shard in shards:
        with np.load(shard, allow_pickle=False) as z:
            assert len(z["keys"]) == len(z["vectors"]) and np.isfinite(z["vectors"]).all()
            rows += len(z["keys"])
    assert rows == len(distinct) and not list(store.glob("*/*.corrupt"))
    # vectors are the encoder's own, and a rerun encodes nothing
    local = embed_texts(texts, load_encoder(spec, threads=1), tmp_path / "local", progress=False)  # as the workers
    assert np.array_equal(res.vectors, local.vectors, equal_nan=True) and res.keys == local.keys
    again = embed_distributed(texts, "text", spec, store, client, shard_items=32)
    assert again.n_computed == 0 and again.n_cached == res.ok.sum() and sorted(store.glob("*/shard-*.npz")) == shards
    # the nanny restarted the killed worker: a new process, which loaded the encoder once
    after = client.run(resident_loads)
    assert pids[killed] not in {w["pid"] for w in after.values()}
    assert all(n == 1 for w in after.values() for n in w["loads"].values())
