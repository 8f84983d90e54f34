"""`prodcat` command line. Every command works on the embedded sample unless PRODCAT_DATA=benchmark (or a path)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_normalize(args) -> int:
    from pipelines.normalize import normalize_platform

    result = normalize_platform(args.platform, Path(args.input))
    out = result.write(args.out)
    cov = result.coverage
    print(json.dumps({k: cov[k] for k in ("platform", "rows_in", "rows_normalised", "rows_quarantined",
                                          "fashion_rows", "fashion_mapped_share", "unmapped_by_reason",
                                          "quarantined_by_kind", "image_status", "splits")}, indent=2))
    print(f"wrote {out}/products.parquet, quarantine.parquet, coverage.json")
    return 0


def cmd_run(args) -> int:
    import os

    if args.data:
        os.environ["PRODCAT_DATA"] = args.data
    from orchestration.jobs import run_main
    from pipelines import config

    print(f"prodcat main job on {config.data_root()} -> {config.work_dir()}")
    run_main()
    return 0


def cmd_benchmark(args) -> int:
    """The whole graph on a data root (default the full benchmark), then the report copied to --out."""
    import os
    import shutil

    os.environ["PRODCAT_DATA"] = str(Path(args.data).resolve()) if args.data != "sample" else "sample"
    from orchestration.jobs import run_main
    from pipelines import config

    print(f"prodcat benchmark on {config.data_root()} -> {config.work_dir()}")
    run_main()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("benchmark.json", "benchmark.md"):
        shutil.copy(config.work_dir() / "report" / name, out / name)
    print((out / "benchmark.md").read_text())
    return 0


def cmd_bench_embed(args) -> int:
    from pipelines.bench_embed import main as bench

    return bench(args)


def cmd_taxonomy(args) -> int:
    from pipelines.taxonomy import load_taxonomy

    tax = load_taxonomy(args.path)
    print(json.dumps({"name": tax.name, "version": tax.version, "size": tax.size_per_level(),
                      "shallow": [" > ".join(s) for s in tax.shallow]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipelines.config import PLATFORMS

    ap = argparse.ArgumentParser(prog="prodcat", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("normalize", help="raw shop export -> products.parquet, quarantine.parquet, coverage.json")
    p.add_argument("--platform", required=True, choices=PLATFORMS)
    p.add_argument("--input", required=True, help="the shop's raw export directory")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_normalize)

    p = sub.add_parser("run", help="materialise every asset (Dagster, in process) and print a summary")
    p.add_argument("--data", default="", help="'sample' (default), 'benchmark' or a directory of raw exports")
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
    b.set_defaults(fn=cmd_bench_embed)

    p = sub.add_parser("taxonomy", help="print the shared taxonomy's size per level")
    p.add_argument("--path", default=None)
    p.set_defaults(fn=cmd_taxonomy)
    return ap


def main(argv=None) -> int:
    from pipelines.platforms import BadExport

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (BadExport, FileNotFoundError, ValueError) as e:
        print(f"prodcat {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
