"""Embedding throughput on the same inputs: bare forward pass vs end-to-end (decode + cache + model),
cold vs warm cache, peak memory. Prints figures; not a test."""
from __future__ import annotations

import resource
import tempfile
import time


def _inputs(modality: str, n: int, settings):
    """The first n products of the settings' data root: Myntra for images (only those whose file exists: the
    bare pass opens files directly), H&M for texts (long descriptions)."""
    from pathlib import Path

    from pipelines.ingest.normalize import normalize_platform
    from pipelines.taxonomy.tree import load_taxonomy

    platform = "myntra" if modality == "image" else "hm"
    products = normalize_platform(platform, settings.raw_dir(platform), taxonomy=load_taxonomy(settings.taxonomy_path),
                                  verify_images=False).products
    if modality == "image":
        products = products[products["image_path"].notna() & products["image_path"].map(lambda p: Path(str(p)).is_file())]
    return products.head(n).reset_index(drop=True)


def bare_forward(encoder, products, modality: str) -> float:
    """Items/s of the model alone on already-prepared batches (what the end-to-end path should approach)."""
    import torch

    from pipelines.features.store import text_of

    if modality == "text":
        texts = sorted((text_of(t, d) for t, d in zip(products["title"], products["description"])), key=len)
        t0 = time.perf_counter()
        for s in range(0, len(texts), encoder.batch_size):
            encoder.encode(texts[s:s + encoder.batch_size])
        return len(texts) / (time.perf_counter() - t0)
    from pipelines.ingest.images import load_image

    batches = []
    paths = products["image_path"].tolist()
    for s in range(0, len(paths), encoder.batch_size):
        batches.append(torch.stack([encoder.preprocess(load_image(p)) for p in paths[s:s + encoder.batch_size]]))
    t0 = time.perf_counter()
    for x in batches:
        encoder.encode_tensor(x)
    return len(paths) / (time.perf_counter() - t0)


def main(args, settings) -> int:
    """`prodcat bench embed`: rounds of (bare forward, cold end-to-end into a fresh store, warm re-run), interleaved
    so that drift in the machine's speed hits both sides of a ratio alike; prints every round and the medians.
    args: modality, n, repeats; settings: the run's Settings (data root, threads, loader workers, weights cache)."""
    import statistics

    from pipelines.features.encoders import DEFAULTS, load_encoder
    from pipelines.features.store import embed_products

    spec = DEFAULTS[args.modality]
    run = {"progress": not settings.quiet, "loader_workers": settings.loader_workers, "threads": settings.threads,
           "weights_cache": settings.weights_cache}
    products = _inputs(args.modality, args.n, settings)
    encoder = load_encoder(spec, threads=settings.threads, weights_cache=settings.weights_cache)
    encoder.encode(["warm up"]) if args.modality == "text" else None
    rounds = []
    for r in range(max(1, args.repeats)):
        bare = bare_forward(encoder, products, args.modality)
        with tempfile.TemporaryDirectory() as store:
            t0 = time.perf_counter()
            manifest, _ = embed_products(products, args.modality, spec, store, **run)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            embed_products(products, args.modality, spec, store, **run)
            warm = time.perf_counter() - t0
        computed = manifest.attrs["n_computed"]
        e2e = computed / cold
        rounds.append({"bare": bare, "e2e": e2e, "cold": cold, "warm": warm})
        print(f"round {r + 1}: bare {bare:7.1f} items/s | end-to-end {e2e:7.1f} items/s "
              f"(ratio {e2e / bare:.3f}) | cold {cold:.2f} s, warm {warm:.3f} s")
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    ratio = statistics.median(x["e2e"] / x["bare"] for x in rounds)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"modality={args.modality} items={len(products)} unique_encoded={computed} encoder={encoder.key} "
          f"rounds={len(rounds)} (medians below)")
    print(f"bare forward      {med['bare']:8.1f} items/s")
    print(f"end-to-end (cold) {med['e2e']:8.1f} items/s   ratio e2e/bare = {ratio:.3f}")
    print(f"cold run {med['cold']:.2f} s   warm run {med['warm']:.3f} s   ratio warm/cold = "
          f"{statistics.median(x['warm'] / x['cold'] for x in rounds):.4f}")
    print(f"peak RSS {peak_mb:.0f} MB")
    return 0
