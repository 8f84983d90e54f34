"""Coverage of the platform mapping tables on a raw data root.

Usage: python scripts/check_mappings.py [DATA_ROOT] [--sample N]
For each platform it reads the raw export, builds the native category paths the adapters produce,
looks them up in data/mappings/<platform>.csv and prints rows, rows mapped, rows per unmapped reason,
rows with no rule (with the most frequent unmatched native paths) and the mapped share of fashion rows
(fashion = every row whose rule is not an `out of scope:` reason). `--sample N` also prints N random
mapped rows per platform (title -> mapped path) for checking by eye.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.ingest.mapping import load_mapping  # noqa: E402
from pipelines.settings import BENCHMARK_DIR  # noqa: E402
from pipelines.taxonomy.tree import load_taxonomy, path_str  # noqa: E402

DEFAULT_ROOT = BENCHMARK_DIR
MIN_FASHION_SHARE = 0.95


# platform -> (export file, title column, native-path builder taking a row): the adapters' own (data/shops/*.yaml),
# so the checker sees exactly what normalisation sees
from pipelines.ingest.shops import get_adapter  # noqa: E402

PLATFORMS = {p: (f"{p}/{get_adapter(p).EXPORT_FILE}", title, get_adapter(p).native_path)
             for p, title in (("myntra", "productDisplayName"), ("hm", "prod_name"), ("flipkart", "product_name"))}


def read_export(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"raw export {path} does not exist (is the data root right?)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def check_platform(platform: str, data_root: Path, taxonomy, top: int = 15, sample: int = 0, seed: int = 0) -> dict:
    export, title_col, native_fn = PLATFORMS[platform]
    df = read_export(data_root / export)
    mapping = load_mapping(ROOT / "data" / "mappings" / f"{platform}.csv", taxonomy)
    natives = [tuple(native_fn(row)) for row in df.to_dict("records")]
    rules = [mapping.lookup(n) for n in natives]
    mapped = [r is not None and not r.unmapped_reason for r in rules]
    reasons = Counter(r.unmapped_reason for r in rules if r is not None and r.unmapped_reason)
    no_rule = Counter(path_str(n) for n, r in zip(natives, rules) if r is None)
    out_of_scope = sum(c for reason, c in reasons.items() if reason.startswith("out of scope:"))
    fashion = len(df) - out_of_scope  # rows with no rule count as fashion rows that are not mapped (conservative)
    n_mapped = sum(mapped)
    share = n_mapped / fashion if fashion else 0.0

    print(f"== {platform}: {data_root / export}")
    print(f"rows {len(df)}  mapped {n_mapped}  unmapped by reason {sum(reasons.values())}  "
          f"no rule {sum(no_rule.values())}")
    for reason, count in reasons.most_common():
        print(f"  {count:6d}  {reason}")
    if no_rule and top:
        print(f"  top unmatched native paths ({len(no_rule)} distinct):")
        for native, count in no_rule.most_common(top):
            print(f"  {count:6d}  {native[:140]}")
    with_rule = fashion - sum(no_rule.values())
    flag = "ok" if share >= MIN_FASHION_SHARE else f"BELOW {MIN_FASHION_SHARE:.0%}"
    print(f"fashion rows {fashion}  mapped share {share:.4f}  ({flag}; "
          f"{n_mapped / with_rule if with_rule else 0.0:.4f} of the {with_rule} that have a rule)")
    if sample:
        picks = pd.Series([i for i, m in enumerate(mapped) if m]).sample(min(sample, n_mapped), random_state=seed)
        for i in picks:
            print(f"    {df.iloc[i][title_col][:60]:60s} -> {path_str(rules[i].category_path)}")
    return {"platform": platform, "rows": len(df), "mapped": n_mapped, "unmapped_by_reason": dict(reasons),
            "no_rule": sum(no_rule.values()), "fashion_rows": fashion, "fashion_mapped_share": share}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_root", nargs="?", default=str(DEFAULT_ROOT))
    ap.add_argument("--platforms", nargs="*", default=list(PLATFORMS), choices=list(PLATFORMS))
    ap.add_argument("--top", type=int, default=15, help="how many unmatched native paths to list")
    ap.add_argument("--sample", type=int, default=0, help="print this many random mapped rows per platform")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    taxonomy = load_taxonomy()
    results = [check_platform(p, Path(args.data_root), taxonomy, args.top, args.sample, args.seed)
               for p in args.platforms]
    return 0 if all(r["fashion_mapped_share"] >= MIN_FASHION_SHARE for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
