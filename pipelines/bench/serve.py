"""`prodcat bench serve`: the HTTP service under bounded loopback load - requests/s, p50/p99 latency and RSS.

The service runs as a real `prodcat serve` process on a free loopback port (never another interface); N client
threads (httpx, keep-alive) send a fixed number of requests per mix, each phase also capped in time:

- text: single products, title + description only (issue 19's target: >= 300 requests/s, p99 < 100 ms with 16
  clients on the 2-core machine);
- mixed: 80% single products, 20% batches of 16, with images where the sample has them (target: p99 < 1 s);
- soak: then `--soak` (10,000) more requests, both mixes alternated, the server's RSS sampled every 1,000 (target:
  flat - once every path is warm, the last sample within 5% and 32 MB of the one before the soak; the samples after
  the warm-up and each load are printed too, so a one-time step while a path warms up shows).

Products are drawn from the raw exports of the settings' data root. The figures are printed (and written as JSON
with --out); a target missed is printed as such, never adjusted.
"""
from __future__ import annotations

import base64
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAUNCHER = [sys.executable, "-m", "orchestration.cli"]  # the `prodcat` entry point
TARGETS = {"text_rps": 300.0, "text_p99_ms": 100.0, "mixed_p99_ms": 1000.0}
RSS_SAMPLE_EVERY = 1000


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def product_body(row, with_image: bool) -> dict:
    """A product as the service takes it (a missing description is '', never 'nan')."""
    from pipelines.features.store import text_value

    body = {"product_id": str(row["product_id"]), "title": text_value(row["title"])[:500],
            "description": text_value(row["description"])[:5000]}
    path = row["image_path"]
    if with_image and isinstance(path, str) and Path(path).is_file() and Path(path).stat().st_size <= 2_000_000:
        body["image_base64"] = base64.b64encode(Path(path).read_bytes()).decode()
    return body


def request_bodies(products, mix: str, n: int, seed: int = 0) -> list[bytes]:
    """n request bodies (JSON bytes): 'text' = single products without images; 'mixed' = 80% single products,
    20% batches of 16, images included where the export has them."""
    rng = random.Random(seed)
    singles = [product_body(r, with_image=mix == "mixed") for _, r in products.iterrows()]
    singles = [b for b in singles if b["title"].strip()]
    out = []
    for _ in range(n):
        if mix == "mixed" and rng.random() < 0.2:
            out.append(json.dumps({"products": rng.sample(singles, min(16, len(singles)))}).encode())
        else:
            out.append(json.dumps(rng.choice(singles)).encode())
    return out


class Server:
    """`prodcat serve` on a free loopback port, in a child process (its own settings from the environment), with
    a fresh random token (so a PRODCAT_TOKEN in the environment cannot lock the benchmark out, and the figures
    include the token check)."""

    def __init__(self, settings, model_dir=None, stage: str = "routed", startup_s: float = 300):
        import secrets

        self.port, self.token = free_loopback_port(), secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = LAUNCHER + ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--data", str(settings.data_root),
                          "--stage", stage, "--token", self.token] + (["--model", str(model_dir)] if model_dir else [])
        self.log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would block the server mid-benchmark
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.startup_s = self._wait_ready(startup_s)

    def log_tail(self, chars: int = 1500) -> str:
        self.log.seek(0)
        return self.log.read()[-chars:]

    def _wait_ready(self, limit_s: float) -> float:
        import httpx

        t0 = time.time()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prodcat serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.head(f"{self.url}/ready", timeout=2).status_code == 200:
                    return round(time.time() - t0, 1)
            except httpx.TransportError:
                pass
            if time.time() - t0 > limit_s:
                self.stop()
                raise RuntimeError(f"prodcat serve not ready after {limit_s:g} s")
            time.sleep(0.3)

    def rss_mb(self) -> float:
        import psutil

        return round(psutil.Process(self.proc.pid).memory_info().rss / 2**20, 1)

    def cpu_s(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/stats", timeout=10, headers={"authorization": f"Bearer {self.token}"}).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@dataclass
class LoadResult:
    latencies_ms: list = field(default_factory=list)
    single_ms_by_stage: dict = field(default_factory=lambda: {1: [], 2: []})  # single-product requests only
    statuses: dict = field(default_factory=dict)
    products: int = 0
    stage2: int = 0
    seconds: float = 0.0

    def figures(self, clients: int) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(0)
        ok = int(self.statuses.get(200, 0))
        pct = (lambda q: round(float(np.percentile(lat, q)), 1) if len(lat) else None)
        return {"clients": clients, "requests": int(sum(self.statuses.values())), "ok": ok,
                "errors": {str(k): v for k, v in self.statuses.items() if k != 200},
                "seconds": round(self.seconds, 2), "requests_per_s": round(ok / self.seconds, 1) if self.seconds else 0,
                "products_per_s": round(self.products / self.seconds, 1) if self.seconds else 0,
                "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": pct(100),
                "single_p99_ms_by_stage": {str(k): round(float(np.percentile(v, 99)), 1) if v else None
                                           for k, v in self.single_ms_by_stage.items()},
                "stage2_share": round(self.stage2 / self.products, 4) if self.products else None}


def drive(url: str, bodies: list[bytes], clients: int, max_seconds: float, token: str | None = None) -> LoadResult:
    """Send every body once (or until max_seconds), from `clients` threads with one keep-alive connection each."""
    import httpx

    result, lock, cursor = LoadResult(), threading.Lock(), iter(range(len(bodies)))
    deadline = time.perf_counter() + max_seconds
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})

    def client():
        with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = c.post("/classify", content=bodies[i])
                    status = r.status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                ms = 1000 * (time.perf_counter() - t0)
                record(status, ms, r.json() if status == 200 else None)

    def record(status, ms, doc):
        results = (doc.get("results", [doc]) if isinstance(doc, dict) else [])
        with lock:
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies_ms.append(ms)
                if "results" not in doc:
                    result.single_ms_by_stage[doc["stage"]].append(ms)
                result.products += len(results)
                result.stage2 += sum(1 for x in results if x.get("stage") == 2)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result


def soak(server: Server, text: list[bytes], mixed: list[bytes], total: int, done: int, clients: int,
         max_seconds: float) -> list[dict]:
    """Alternate text and mixed loads in chunks of RSS_SAMPLE_EVERY until `total` more requests were answered;
    one RSS sample per chunk (`done`: requests answered before, for the sample labels)."""
    samples, deadline, k, end = [], time.time() + max_seconds, 0, done + total
    while done < end and time.time() < deadline:
        pool = text if k % 2 == 0 else mixed
        chunk = [pool[(k * RSS_SAMPLE_EVERY + j) % len(pool)] for j in range(min(RSS_SAMPLE_EVERY, end - done))]
        res = drive(server.url, chunk, clients, max(deadline - time.time(), 1), server.token)
        done, k = done + sum(res.statuses.values()), k + 1
        samples.append({"after": "soak", "requests": done, "rss_mb": server.rss_mb()})
    return samples


def rss_flat(samples: list[dict], soak_requests: int) -> bool | None:
    """Once every path is warm (after the text and the mixed load), the server's RSS over `soak_requests` more
    requests: the last sample within 5% and 32 MB of the one taken before the soak. None when the soak fell short
    (time cap) of the requests asked for."""
    before = [s for s in samples if s["after"] != "soak"]
    during = [s for s in samples if s["after"] == "soak"]
    if not before or not during or during[-1]["requests"] - before[-1]["requests"] < soak_requests:
        return None
    growth = during[-1]["rss_mb"] - before[-1]["rss_mb"]
    return growth <= min(32.0, 0.05 * before[-1]["rss_mb"])


def measured_phase(server: Server, bodies: list[bytes], args) -> dict:
    """One load's figures, with the CPU the server and this client process spent per request (the clients share
    the machine's cores with the server)."""
    server_cpu, client_cpu = server.cpu_s(), time.process_time()
    figures = drive(server.url, bodies, args.concurrency, args.max_seconds, server.token).figures(args.concurrency)
    n = max(figures["requests"], 1)
    figures["server_cpu_ms_per_request"] = round(1000 * (server.cpu_s() - server_cpu) / n, 2)
    figures["client_cpu_ms_per_request"] = round(1000 * (time.process_time() - client_cpu) / n, 2)
    return figures


def run_bench(settings, args) -> dict:
    from pipelines.bench.infer import bench_products

    products = bench_products(settings, args.products, seed=0)
    text = request_bodies(products, "text", args.requests, seed=1)
    mixed = request_bodies(products, "mixed", args.requests, seed=2)
    server = Server(settings, model_dir=args.model or None, stage=args.stage)
    try:
        warm = drive(server.url, text[:200] + mixed[:200], args.concurrency, 120, server.token)  # lazy initialisation
        report = {"startup_s": server.startup_s}
        rss = [{"after": "warm-up", "requests": sum(warm.statuses.values()), "rss_mb": server.rss_mb()}]
        for name, bodies in (("text", text), ("mixed", mixed)):
            report[name] = measured_phase(server, bodies, args)
            rss.append({"after": f"{name} load", "requests": rss[-1]["requests"] + report[name]["requests"],
                        "rss_mb": server.rss_mb()})
        rss += soak(server, text, mixed, args.soak, rss[-1]["requests"], args.concurrency, args.soak_seconds)
        report["rss"], report["server_stats"] = rss, server.stats()
    finally:
        server.stop()
    report["rss_flat"] = rss_flat(report["rss"], args.soak)
    report["targets"] = {
        "text: >= 300 req/s": report["text"]["requests_per_s"] >= TARGETS["text_rps"],
        "text: p99 < 100 ms": (report["text"]["p99_ms"] or 1e9) < TARGETS["text_p99_ms"],
        "mixed: p99 < 1 s": (report["mixed"]["p99_ms"] or 1e9) < TARGETS["mixed_p99_ms"],
        f"RSS flat over {args.soak:,} requests": report["rss_flat"]}
    return report


def summary_lines(report: dict) -> list[str]:
    lines = ["| load | clients | requests | ok | req/s | products/s | p50 ms | p99 ms | single p99 ms, stage 1 / 2 | "
             "stage 2 % | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("text", "mixed"):
        r = report[name]
        share = "-" if r["stage2_share"] is None else f"{100 * r['stage2_share']:.1f}"
        by_stage = " / ".join(str(r["single_p99_ms_by_stage"][k] or "-") for k in ("1", "2"))
        lines.append(f"| {name} | {r['clients']} | {r['requests']} | {r['ok']} | {r['requests_per_s']} | "
                     f"{r['products_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {by_stage} | {share} | "
                     f"{r['errors'] or 0} |")
    rss = ", ".join(f"{s['requests']}: {s['rss_mb']}" for s in report["rss"])
    lines += ["", f"server RSS (MB) by requests answered: {rss} -> flat: {report['rss_flat']}", "",
              "targets: " + "; ".join(f"{k}: {'met' if v else ('n/a' if v is None else 'NOT met')}"
                                      for k, v in report["targets"].items())]
    return lines


def main(args, settings) -> int:
    from pipelines.features.encoders import cpu_threads

    report = {"data": str(settings.data_root), "work": str(settings.work_dir), "stage": args.stage,
              "cpu_threads": cpu_threads(settings.threads)} | run_bench(settings, args)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("data", "stage", "startup_s", "text", "mixed")}, indent=2))
    print("\n".join(summary_lines(report)))
    return 0
