"""`prodcat bench infer`: two-stage inference throughput (a script that prints figures, not a timed test).

Batch: items/s from raw title/description/image path to a final path, for stage 1 only, stage 2 only and routed,
with stage 2's embeddings computed in a fresh (cold) cache, as for new products; stage 2 also warm (second pass).
Service: `prodcat serve` started as a real process on a free loopback port, `--concurrency` clients sending
`--requests` single-product POST /classify requests in total (bounded load); p50/p99 latency and requests/s.
"""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd


def bench_products(settings, n: int, seed: int = 0) -> pd.DataFrame:
    """n products drawn from every platform's raw export under the settings' data root."""
    from pipelines.inference.export import read_export_unlabelled
    from pipelines.settings import PLATFORMS

    parts = [read_export_unlabelled(p, settings.raw_dir(p))[0].assign(platform=p) for p in PLATFORMS
             if settings.raw_dir(p).exists()]
    table = pd.concat(parts, ignore_index=True)
    return table.sample(n=min(n, len(table)), random_state=seed).reset_index(drop=True)


def batch_figures(settings, products: pd.DataFrame) -> dict:
    from pipelines.inference.features import Stage2Features
    from pipelines.inference.two_stage import TwoStage

    args = (products["title"].tolist(), products["description"].tolist(), products["image_path"].tolist())
    out = {}
    for mode in ("stage1", "stage2", "routed"):
        clf = TwoStage.load(settings, mode=mode)
        with tempfile.TemporaryDirectory() as store:
            if clf.features2 is not None:  # cold cache: new products have no stored embeddings
                clf.features2 = Stage2Features(settings, clf.features2.modalities, store=store)
            passes = ("cold", "warm") if mode == "stage2" else ("cold",)
            for label in passes:
                t0 = time.perf_counter()
                res = clf.classify(*args, num_workers=settings.loader_workers, progress=not settings.quiet)
                seconds = time.perf_counter() - t0
                key = mode if label == "cold" else f"{mode}_warm_cache"
                out[key] = {"items": len(products), "seconds": round(seconds, 2),
                            "items_per_s": round(len(products) / seconds, 1),
                            "routed_share": round(float((res["stage"] == 2).mean()), 4),
                            "needs_review_share": round(float(res["needs_review"].mean()), 4)}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _payload(row) -> dict:
    body = {"product_id": str(row["product_id"]), "title": row["title"], "description": row["description"] or ""}
    path = row["image_path"]
    if isinstance(path, str) and Path(path).is_file():
        body["image_base64"] = base64.b64encode(Path(path).read_bytes()).decode()
    return body


def _serve_command(settings, port: int) -> list:
    """`prodcat serve` as a child process. It inherits this process's environment (which, with the --data flag,
    made these settings at the `prodcat bench infer` entry point), so it builds the same Settings itself."""
    return [sys.executable, "-m", "orchestration.cli", "serve", "--port", str(port), "--data", str(settings.data_root)]


def service_figures(settings, products: pd.DataFrame, requests: int, concurrency: int) -> dict:
    import httpx

    port = _free_port()
    proc = subprocess.Popen(_serve_command(settings, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t_start = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read()[-1500:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        startup = time.time() - t_start
        bodies = [_payload(r) for _, r in products.head(requests).iterrows()]
        with httpx.Client(base_url=url, timeout=60) as c:  # warm-up: first requests pay lazy initialisation
            for b in bodies[:5]:
                c.post("/classify", json=b).raise_for_status()
        latencies, stages, errors, lock = [], [], [], threading.Lock()
        queue = list(range(len(bodies)))

        def client():
            with httpx.Client(base_url=url, timeout=60) as c:
                while True:
                    with lock:
                        if not queue:
                            return
                        i = queue.pop()
                    t0 = time.perf_counter()
                    r = c.post("/classify", json=bodies[i])
                    ms = 1000 * (time.perf_counter() - t0)
                    with lock:
                        if r.status_code == 200:
                            latencies.append(ms), stages.append(r.json()["stage"])
                        else:
                            errors.append(r.status_code)

        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = np.array(latencies)
    return {"requests": len(bodies), "concurrency": concurrency, "errors": len(errors), "startup_s": round(startup, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "requests_per_s": round(len(lat) / wall, 1), "routed_share": round(float(np.mean(np.array(stages) == 2)), 4)
            if stages else None, "with_image": sum("image_base64" in b for b in bodies)}


def main(args, settings) -> int:
    from pipelines.features.encoders import cpu_threads

    products = bench_products(settings, max(args.n, args.requests))
    report = {"data": str(settings.data_root), "work": str(settings.work_dir),
              "cpu_threads": cpu_threads(settings.threads),
              "batch": batch_figures(settings, products.head(args.n)),
              "service": service_figures(settings, products, args.requests, args.concurrency)}
    print(json.dumps(report, indent=2))
    print("\n| what | items | items/s | routed % |\n|---|---|---|---|")
    for k, v in report["batch"].items():
        print(f"| batch {k} | {v['items']} | {v['items_per_s']} | {100 * v['routed_share']:.1f} |")
    s = report["service"]
    print(f"\nservice: {s['requests']} requests, {s['concurrency']} clients: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
          f"{s['requests_per_s']} req/s, errors {s['errors']}")
    return 0
