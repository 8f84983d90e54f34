"""`prodcat bench infer`: two-stage inference throughput (a script that prints figures, not a timed test).

Batch: items/s from raw title/description/image path to a final path, for stage 1 only, stage 2 only and routed,
with stage 2's embeddings computed in a fresh (cold) cache, as for new products; stage 2 also warm (second pass).
Service: `prodcat serve` started as a real process on a free loopback port, `--concurrency` clients sending
`--requests` single-product POST /classify requests in total (bounded load); p50/p99 latency and requests/s
(`prodcat bench serve` has the full service benchmark: text and mixed loads, RSS over 10,000 requests).
"""
from __future__ import annotations

import json
import tempfile
import time

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


def service_figures(settings, products: pd.DataFrame, requests: int, concurrency: int) -> dict:
    """`prodcat serve` in a child process on loopback, `requests` single products (with their images) from
    `concurrency` clients; the load driver of `prodcat bench serve`."""
    from pipelines.bench.serve import Server, drive, product_body

    bodies = [product_body(r, with_image=True) for _, r in products.head(requests).iterrows()]
    payloads = [json.dumps(b).encode() for b in bodies]
    server = Server(settings)
    try:
        drive(server.url, payloads[:5], 1, 120, server.token)  # warm-up: first requests pay lazy initialisation
        figures = drive(server.url, payloads, concurrency, 600, server.token).figures(concurrency)
    finally:
        server.stop()
    return {"requests": figures["requests"], "concurrency": concurrency,
            "errors": sum(figures["errors"].values()), "startup_s": server.startup_s,
            "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"], "requests_per_s": figures["requests_per_s"],
            "routed_share": figures["stage2_share"], "with_image": sum("image_base64" in b for b in bodies)}


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
    print(f"\nservice: {s['requests']} requests, {s['concurrency']} clients: p50 {s['p50_ms']} ms, "
          f"p99 {s['p99_ms']} ms, {s['requests_per_s']} req/s, errors {s['errors']}")
    return 0
