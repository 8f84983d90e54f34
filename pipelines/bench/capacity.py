"""Capacity model: how many workers embed and classify N products in T hours, from per-item costs measured here.

`prodcat bench capacity [--n 256] [--products 10000000] [--hours 1]` measures, on the sample and on ONE thread
(one core = one Dask worker with threads_per_worker=1), the CPU time per item of every step a product goes through
(process CPU time, not wall time: on a shared machine wall time mostly measures waiting for a core):

    text_embed    MiniLM (tokenise + forward) on title . description, length-sorted batches as in embed_texts
    image_decode  JPEG read + decode + pad/resize/normalise (CPU work even on a GPU worker)
    image_embed   EfficientNet-Lite0 forward
    lexical       TF-IDF (word + char n-grams) + SVD + LinearSVC expert scores: stage-1 features
    stage1        the stage-1 classifier forward (strategies/stage1.yaml) on lexical features
    stage2        the fused classifier forward (strategies/attention.yaml) on text, image, joint, lexical

Classifier costs do not depend on trained weights, so the classifiers are timed freshly initialised at their real
sizes. Then, for `products` items within `hours`:

    full   = text_embed + image_decode + image_embed + lexical + stage2        (every product through stage 2)
    routed = lexical + stage1 + share * (text_embed + image_decode + image_embed + stage2)
    CPU workers = ceil(products * cost / (3600 * hours * efficiency))

`share` is the routed share measured by the routing_threshold asset (<work>/models/stage1/routing.json of the
benchmark, else the sample) or --routed-share. GPU workers cannot be measured on this machine (no GPU): their
encoder throughput is an input (--gpu-text-per-s, --gpu-image-per-s, stated as assumptions in the output); the
decode they still need is measured CPU work, so each GPU worker also needs ceil(gpu rate * decode cost) cores.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

GPU_TEXT_PER_S = 4000.0  # ASSUMED MiniLM-L6 sentences/s on one T4-class GPU (fp32, short texts); not measured here
GPU_IMAGE_PER_S = 2000.0  # ASSUMED EfficientNet-Lite0 224 px forwards/s on one T4-class GPU; not measured here
EFFICIENCY = 0.7  # share of a worker's time spent encoding (scheduling, I/O, stragglers, retries take the rest)


def _per_item(fn, n: int, repeat: int = 2) -> float:
    """CPU seconds per item of fn() over n items (the process's CPU time, all threads: what the work costs a core,
    even on a machine shared with other jobs, where wall time would mostly measure waiting); best of `repeat`."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n


def sample_inputs(n: int, settings):
    """n texts (title . description) across the platforms of the settings' data root, n existing image files,
    and labelled train texts."""
    from pipelines.features.store import text_of
    from pipelines.ingest.normalize import normalize_platform
    from pipelines.settings import PLATFORMS
    from pipelines.taxonomy.tree import load_taxonomy

    taxonomy = load_taxonomy(settings.taxonomy_path)
    tables = [normalize_platform(p, settings.raw_dir(p), taxonomy=taxonomy, verify_images=False).products
              for p in PLATFORMS]
    texts, images, train_texts, train_labels = [], [], [], []
    for t in tables:
        rows = [text_of(a, b) for a, b in zip(t["title"], t["description"])]
        texts += rows[: n // len(tables) + 1]
        images += [p for p in t["image_path"] if isinstance(p, str) and Path(p).is_file()]
        train = (t["split"] == "train").to_numpy()
        train_texts += [r for r, keep in zip(rows, train) if keep]
        train_labels += [" > ".join(c) for c, keep in zip(t["category_path"], train) if keep]
    if len(images) < 8:
        raise ValueError(f"only {len(images)} decodable image files in {settings.data_root}: cannot time image steps")
    return texts[:n], images[:n], train_texts, train_labels


def _time_encoders(texts: list, images: list, settings) -> tuple[dict, dict]:
    """CPU seconds per item of text_embed, image_decode and image_embed on one thread; and the two encoders."""
    import torch
    from pipelines.ingest.images import load_image

    from pipelines.features.encoders import DEFAULTS, load_encoder

    text_enc, image_enc = (load_encoder(DEFAULTS[m], threads=1, weights_cache=settings.weights_cache)
                           for m in ("text", "image"))
    costs = {}
    ordered = sorted(texts, key=len)
    text_enc.encode(ordered[:4])  # first call pays lazy init
    costs["text_embed"] = _per_item(lambda: [text_enc.encode(ordered[s:s + text_enc.batch_size])
                                             for s in range(0, len(ordered), text_enc.batch_size)], len(ordered))

    def decode():
        out = []
        for p in images:
            with load_image(p) as im:  # the pipeline's guarded read + full decode
                out.append(image_enc.preprocess(im))
        return out

    costs["image_decode"] = _per_item(decode, len(images))
    batches = [torch.stack(decode()[s:s + image_enc.batch_size]) for s in range(0, len(images), image_enc.batch_size)]
    image_enc.encode_tensor(batches[0][:2])
    costs["image_embed"] = _per_item(lambda: [image_enc.encode_tensor(b) for b in batches], len(images))
    return costs, {"text": text_enc, "image": image_enc}


def _time_classifiers(dims: dict, taxonomy) -> dict:
    """CPU seconds per row of the stage-1 and stage-2 classifier forwards (fresh weights at their real sizes)."""
    from models.classifier import HierarchicalClassifier
    from pipelines.classify.train import strategy_config

    costs = {}
    for name, strategy in (("stage1", "stage1"), ("stage2", "attention")):
        cfg = strategy_config(strategy)
        model = HierarchicalClassifier(cfg, {m: dims[m] for m in cfg["modalities"]},
                                       [list(x) for x in taxonomy.nodes], taxonomy.depth).eval()
        rows = 4096
        x = {m: np.random.default_rng(0).standard_normal((rows, dims[m])).astype(np.float32) for m in cfg["modalities"]}
        ok = {m: np.ones(rows, bool) for m in cfg["modalities"]}
        model.predict_arrays(x, ok, batch_size=256)
        costs[name] = _per_item(lambda: model.predict_arrays(x, ok), rows)
    return costs


def measure(n: int, settings) -> dict:
    """Seconds per item of each step on ONE thread (see module doc), whatever Settings.threads says: one core is
    one Dask worker with threads_per_worker=1. The caller (the CLI) keeps the tokenizer on that core too
    (TOKENIZERS_PARALLELISM=false, an environment setting only the entry point may make)."""
    import torch

    from pipelines.classify.baselines import tfidf_svm_model
    from pipelines.features import lexical
    from pipelines.features.encoders import configure_threads
    from pipelines.taxonomy.tree import load_taxonomy

    configure_threads(1)
    texts, images, train_texts, train_labels = sample_inputs(n, settings)
    costs, encoders = _time_encoders(texts, images, settings)
    svd = lexical.fit_lexical(train_texts, dim=min(256, len(train_texts) - 1))
    expert = tfidf_svm_model(0).fit(train_texts, train_labels)
    costs["lexical"] = _per_item(lambda: (lexical.transform(svd, texts), lexical.expert_scores(expert, texts)),
                                 len(texts))
    lex_dim = lexical.transform(svd, texts[:1]).shape[1] + len(expert.classes_)
    dims = {"text": encoders["text"].dim, "image": encoders["image"].dim, "joint": 256, "lexical": lex_dim}
    costs.update(_time_classifiers(dims, load_taxonomy(settings.taxonomy_path)))
    return {"seconds_per_item": costs, "threads": torch.get_num_threads(), "n_texts": len(texts),
            "n_images": len(images), "text_encoder": encoders["text"].key, "image_encoder": encoders["image"].key}


def routed_share(default: float | None = None) -> tuple[float, str]:
    """The stage-2 share measured by the routing_threshold asset (test split), benchmark first, else `default`."""
    from pipelines.settings import ROOT

    for root in ("benchmark", "sample"):
        path = ROOT / "work" / root / "models" / "stage1" / "routing.json"
        if default is None and path.exists():
            routing = json.loads(path.read_text())
            return float(routing["test"]["routed_share"]), f"measured: {path.relative_to(ROOT)} (test split)"
    if default is None:
        default = 0.4
        return default, "ASSUMED (no routing.json yet; stage1.yaml's max_share budget)"
    return default, "given (--routed-share)"


def plan(costs: dict, products: int = 10_000_000, hours: float = 1.0, share: float = 0.4,
         efficiency: float = EFFICIENCY, gpu_text_per_s: float = GPU_TEXT_PER_S,
         gpu_image_per_s: float = GPU_IMAGE_PER_S) -> dict:
    """Workers for `products` in `hours` from per-item seconds (one core each), full vs two-stage routed."""
    c = costs
    budget = 3600.0 * hours * efficiency  # useful seconds one worker has
    stage2_extra = c["text_embed"] + c["image_decode"] + c["image_embed"] + c["stage2"]
    per_item = {"full": c["lexical"] + stage2_extra, "routed": c["lexical"] + c["stage1"] + share * stage2_extra}
    out = {"products": products, "hours": hours, "efficiency": efficiency, "routed_share": share,
           "cpu_seconds_per_item": per_item,
           "items_per_s_needed": products / (3600.0 * hours)}
    for mode, routed in (("full", 1.0), ("routed", share)):
        cpu = math.ceil(products * per_item[mode] / budget)
        gpu_items = products * routed
        # GPU worker: encoders on the GPU at the assumed rates (both models share it), decode + lexical + classifier
        # forwards on its CPU cores
        gpu_seconds_per_item = 1.0 / gpu_text_per_s + 1.0 / gpu_image_per_s
        gpus = math.ceil(gpu_items * gpu_seconds_per_item / budget)
        cpu_side = products * (c["lexical"] + (c["stage1"] if mode == "routed" else 0.0)) + \
            gpu_items * (c["image_decode"] + c["stage2"])
        out[mode] = {"cpu_workers": cpu, "cpu_core_hours": round(products * per_item[mode] / 3600.0, 1),
                     "gpu_workers": gpus, "cpu_cores_beside_gpus": math.ceil(cpu_side / budget),
                     "cores_per_gpu_worker": math.ceil(cpu_side / budget / max(gpus, 1))}
    out["routing_saves"] = {"cpu_workers": out["full"]["cpu_workers"] - out["routed"]["cpu_workers"],
                            "cpu_share": round(1 - per_item["routed"] / per_item["full"], 3),
                            "gpu_workers": out["full"]["gpu_workers"] - out["routed"]["gpu_workers"]}
    out["assumptions"] = {"gpu_text_per_s": gpu_text_per_s, "gpu_image_per_s": gpu_image_per_s,
                          "note": "GPU rates are inputs, not measured (no GPU on this machine); CPU costs are measured"}
    return out


def markdown(measured: dict, model: dict, share_source: str) -> str:
    c = measured["seconds_per_item"]
    lines = ["| step | ms/item (1 core) | items/s per core |", "|---|---:|---:|"]
    lines += [f"| {k} | {1000 * v:.3f} | {1 / v:,.0f} |" for k, v in c.items()]
    lines += ["", f"{model['products']:,} products in {model['hours']} h ({model['items_per_s_needed']:,.0f} items/s), "
              f"worker efficiency {model['efficiency']}, routed share {model['routed_share']:.3f} ({share_source})", "",
              "| plan | CPU s/item | CPU workers (1 core) | GPU workers | CPU cores beside GPUs |", "|---|---:|---:|---:|---:|"]
    for mode in ("full", "routed"):
        m = model[mode]
        lines.append(f"| {mode} | {model['cpu_seconds_per_item'][mode]:.4f} | {m['cpu_workers']:,} | "
                     f"{m['gpu_workers']:,} | {m['cpu_cores_beside_gpus']:,} |")
    s = model["routing_saves"]
    lines += ["", f"two-stage routing saves {s['cpu_workers']:,} CPU workers ({100 * s['cpu_share']:.1f} % of CPU time) "
              f"and {s['gpu_workers']:,} GPU workers; GPU rates assumed: {model['assumptions']['gpu_text_per_s']:.0f} "
              f"texts/s, {model['assumptions']['gpu_image_per_s']:.0f} images/s per GPU (not measured)"]
    return "\n".join(lines)


def main(args, settings) -> int:
    """`prodcat bench capacity`: args n, routed_share, products, hours, efficiency, gpu_text_per_s,
    gpu_image_per_s, out; settings: the run's Settings (data root, taxonomy, weights cache)."""
    measured = measure(args.n, settings)
    share, source = routed_share(args.routed_share)
    model = plan(measured["seconds_per_item"], args.products, args.hours, share, args.efficiency,
                 args.gpu_text_per_s, args.gpu_image_per_s)
    print(markdown(measured, model, source))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"measured": measured, "model": model, "routed_share_source": source}, indent=2))
        print(f"wrote {out}")
    return 0
