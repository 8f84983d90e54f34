"""`prodcat` command line. Every command works on the embedded sample unless PRODCAT_DATA=benchmark (or a path)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_normalize(args) -> int:
    from pipelines.ingest.normalize import normalize_platform

    result = normalize_platform(args.platform, Path(args.input))
    out = result.write(args.out)
    cov = result.coverage
    print(json.dumps({k: cov[k] for k in ("platform", "rows_in", "rows_normalised", "rows_quarantined",
                                          "fashion_rows", "fashion_mapped_share", "unmapped_by_reason",
                                          "quarantined_by_kind", "image_status", "splits")}, indent=2))
    print(f"wrote {out}/products.parquet, quarantine.parquet, coverage.json")
    return 0


def cmd_run(args) -> int:
    _use_data(args.data)
    from orchestration.jobs import run_main
    from pipelines import settings as config

    executor = getattr(args, "executor", "in_process")
    print(f"prodcat main job on {config.data_root()} -> {config.work_dir()} (executor: {executor})")
    only = set(args.only.split(",")) if getattr(args, "only", "") else None
    run_main(executor=executor, only=only)
    return 0


def cmd_benchmark(args) -> int:
    """The whole graph on a data root (default the full benchmark), then the report copied to --out."""
    import shutil

    _use_data(args.data)
    from orchestration.jobs import run_main
    from pipelines import settings as config

    print(f"prodcat benchmark on {config.data_root()} -> {config.work_dir()}")
    run_main()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((config.work_dir() / "report").iterdir()):  # tables, sections and the PNGs they link
        if f.suffix in (".json", ".md", ".png"):
            shutil.copy(f, out / f.name)
    print((out / "benchmark.md").read_text())
    return 0


def cmd_bench_embed(args) -> int:
    from pipelines.bench.embed import main as bench

    return bench(args)


def cmd_bench_capacity(args) -> int:
    from pipelines.bench.capacity import main as capacity

    return capacity(args)


def _use_data(data: str):
    """--data sample|benchmark|DIR selects the work dir (models, registry, caches) like PRODCAT_DATA."""
    import os

    if data:
        os.environ["PRODCAT_DATA"] = data if data in ("sample", "benchmark") else str(Path(data).resolve())


def cmd_classify(args) -> int:
    from pipelines.inference.two_stage import classify_export

    _use_data(args.data)
    summary = classify_export(args.platform, Path(args.input), Path(args.out), model_dir=args.model,
                              mode=args.stage, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_serve(args) -> int:
    from pipelines.inference.service import serve

    _use_data(args.data)
    return serve(args.host, args.port, model_dir=args.model, mode=args.stage)


def cmd_bench_infer(args) -> int:
    from pipelines.bench.infer import main as bench

    _use_data(args.data)
    return bench(args)


def cmd_recategorise(args) -> int:
    from pipelines import settings as config
    from pipelines.recategorise.pipeline import run_recategorisation

    _use_data(args.data)
    overrides = json.loads(args.config) if args.config else None
    print(f"prodcat recategorise on {config.data_root()} -> {args.out} (store {config.work_dir() / 'store'})")
    run_recategorisation(config.data_root(), Path(args.out), args.node, overrides, config.work_dir() / "store")
    print(f"wrote {Path(args.out) / 'index.html'}")
    return 0


def cmd_taxonomy_accept(args) -> int:
    from pipelines.taxonomy.versions import accept_from_report

    result = accept_from_report(args.report, args.node, args.clusters, args.out, args.names, args.path)
    print(json.dumps(result, indent=2))
    return 0


def cmd_taxonomy(args) -> int:
    if getattr(args, "action", None) == "accept":
        return cmd_taxonomy_accept(args)
    from pipelines.taxonomy.tree import load_taxonomy

    tax = load_taxonomy(args.path)
    print(json.dumps({"name": tax.name, "version": tax.version, "size": tax.size_per_level(),
                      "shallow": [" > ".join(s) for s in tax.shallow]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipelines.settings import PLATFORMS

    ap = argparse.ArgumentParser(prog="prodcat", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("normalize", help="raw shop export -> products.parquet, quarantine.parquet, coverage.json")
    p.add_argument("--platform", required=True, choices=PLATFORMS)
    p.add_argument("--input", required=True, help="the shop's raw export directory")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_normalize)

    p = sub.add_parser("run", help="materialise every asset (Dagster, in process) and print a summary")
    p.add_argument("--data", default="", help="'sample' (default), 'benchmark' or a directory of raw exports")
    p.add_argument("--executor", choices=["in_process", "multiprocess", "dask"], default="in_process",
                   help="dask: on $PRODCAT_DASK_SCHEDULER or a LocalCluster of $PRODCAT_DASK_WORKERS (2) processes")
    p.add_argument("--only", default="", help="comma-separated asset names: run only the stages made of them, e.g. "
                   "holdout_training_set,holdout_fewshot,holdout_evaluations,holdout_report")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("benchmark", help="run every strategy and baseline on a data root; write benchmark.json/.md")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "benchmark"))
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_benchmark)

    p = sub.add_parser("bench", help="throughput benchmarks (print figures; not tests)")
    bench = p.add_subparsers(dest="what", required=True)
    b = bench.add_parser("embed", help="end-to-end vs bare forward items/s, cold vs warm cache, peak memory")
    b.add_argument("--modality", choices=["text", "image"], default="image")
    b.add_argument("--n", type=int, default=1000)
    b.add_argument("--data", default="sample", help="'sample', 'benchmark' or a raw-export directory")
    b.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    b.set_defaults(fn=cmd_bench_embed)
    b = bench.add_parser("capacity", help="per-item costs measured on the sample (1 core) -> workers (CPU/GPU) to "
                                          "embed + classify N products in T hours, full vs two-stage routed")
    b.add_argument("--n", type=int, default=256, help="sample items timed per step")
    b.add_argument("--products", type=int, default=10_000_000)
    b.add_argument("--hours", type=float, default=1.0)
    b.add_argument("--routed-share", type=float, default=None, help="default: routing.json's measured share")
    b.add_argument("--efficiency", type=float, default=0.7, help="useful share of a worker's time")
    b.add_argument("--gpu-text-per-s", type=float, default=4000.0, help="ASSUMED MiniLM texts/s per GPU")
    b.add_argument("--gpu-image-per-s", type=float, default=2000.0, help="ASSUMED EfficientNet-Lite0 images/s per GPU")
    b.add_argument("--out", default="", help="also write the figures as JSON here")
    b.set_defaults(fn=cmd_bench_capacity)
    b = bench.add_parser("infer", help="two-stage inference: batch items/s (stage 1, stage 2, routed) and service "
                                       "p50/p99 latency and throughput under bounded loopback load")
    b.add_argument("--n", type=int, default=1000, help="products for the batch figures")
    b.add_argument("--requests", type=int, default=300, help="HTTP requests for the service figures")
    b.add_argument("--concurrency", type=int, default=4, help="concurrent loopback clients")
    b.add_argument("--data", default="", help="'sample' (default), 'benchmark' or a raw-export directory")
    b.set_defaults(fn=cmd_bench_infer)

    p = sub.add_parser("classify", help="classify a raw shop export (two-stage: lexical model, then the champion)")
    p.add_argument("--platform", required=True, choices=PLATFORMS)
    p.add_argument("--input", required=True, help="the shop's raw export directory")
    p.add_argument("--out", required=True, help="predictions file, .parquet or .csv (quarantine written beside it)")
    p.add_argument("--model", default=None, help="stage-2 model dir (default: the registered champion)")
    p.add_argument("--stage", choices=["routed", "stage1", "stage2"], default="routed")
    p.add_argument("--data", default="", help="models of 'sample' (default) or 'benchmark' (or a data dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_classify)

    p = sub.add_parser("serve", help="HTTP service: POST /classify, GET /taxonomy, GET /health (OpenAPI at /docs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="stage-2 model dir (default: the registered champion)")
    p.add_argument("--stage", choices=["routed", "stage1", "stage2"], default="routed")
    p.add_argument("--data", default="", help="models of 'sample' (default) or 'benchmark' (or a data dir)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("taxonomy", help="print the shared taxonomy's size per level")
    p.add_argument("--path", default=None)
    p.set_defaults(fn=cmd_taxonomy)
    actions = p.add_subparsers(dest="action")
    a = actions.add_parser("accept", help="accept recategorisation proposals into a new taxonomy version")
    a.add_argument("--report", required=True, help="a recategorisation output dir (or one node's report dir)")
    a.add_argument("--node", required=True, help="e.g. 'Footwear > Shoes'")
    a.add_argument("--clusters", required=True, type=int, nargs="+", help="cluster ids to accept")
    a.add_argument("--names", nargs="+", default=None, help="names for the new sub-nodes (default: proposed)")
    a.add_argument("--out", required=True, help="the new taxonomy file (e.g. data/taxonomy.v2.yaml) or a dir")
    a.add_argument("--path", default=None, help="the taxonomy to extend (default: data/taxonomy.yaml)")

    p = sub.add_parser("recategorise", help="cluster shallow taxonomy nodes, propose sub-categories, HTML report")
    p.add_argument("--data", default="sample", help="'sample', 'benchmark' or a directory of raw exports")
    p.add_argument("--out", required=True)
    p.add_argument("--node", action="append", default=None, help="'Footwear > Shoes' (repeatable; default: the "
                                                                 "taxonomy's shallow nodes)")
    p.add_argument("--config", default="", help='JSON overrides of models/configs/recategorise.yaml, e.g. '
                                                '\'{"simclr": {"epochs": 5}}\'')
    p.set_defaults(fn=cmd_recategorise)
    return ap


def main(argv=None) -> int:
    from pipelines.ingest.shops import BadExport

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (BadExport, FileNotFoundError, ValueError) as e:
        print(f"prodcat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
