"""Compare two benchmark.json files (e.g. a `dvc repro` on the full benchmark against reports/benchmark/):
every model's test/val hF1 and every cross-platform cell, in points, and whether all are within a tolerance.

    python scripts/compare_metrics.py reports/benchmark/benchmark.json work/benchmark-dvc/report/benchmark.json --tol 0.1
"""
import argparse
import json
import sys


def figures(doc: dict) -> dict:
    out = {}
    for model, res in doc.get("results", {}).items():
        for split in ("val", "test"):
            if "hF1" in res.get(split, {}):
                out[f"{model} {split} hF1"] = 100 * res[split]["hF1"]
    for strategy, row in doc.get("cross_platform", {}).get("matrix_test", {}).items():
        for platform, v in row.items():
            if v is not None:
                out[f"holdout {platform} {strategy} test hF1"] = 100 * v
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference")
    ap.add_argument("candidate")
    ap.add_argument("--tol", type=float, default=0.1, help="allowed difference in points (default 0.1)")
    args = ap.parse_args()
    ref, new = (figures(json.load(open(p))) for p in (args.reference, args.candidate))
    missing = sorted(set(ref) - set(new))
    worst = 0.0
    print(f"| figure | {args.reference} | {args.candidate} | diff (points) |\n|---|---|---|---|")
    for k in sorted(set(ref) & set(new)):
        d = new[k] - ref[k]
        worst = max(worst, abs(d))
        print(f"| {k} | {ref[k]:.2f} | {new[k]:.2f} | {d:+.2f} |")
    for k in missing:
        print(f"| {k} | {ref[k]:.2f} | missing | |")
    ok = not missing and worst <= args.tol
    print(f"\n{len(ref) - len(missing)} figures compared, largest difference {worst:.2f} points: "
          f"{'within' if ok else 'NOT within'} +-{args.tol}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
