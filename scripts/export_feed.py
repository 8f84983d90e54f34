"""Export a shop's products as a feed: Google Merchant Center TSV or RSS XML, Shopify product CSV, or JSON Lines.

    python scripts/export_feed.py --shop hm --format google-tsv --out data/feeds/hm/products.tsv --limit 40
    python scripts/export_feed.py --shop hm --format jsonl --out /tmp/hm/products.jsonl   # + products.yaml contract
    python scripts/export_feed.py --shop myntra --format shopify --out /tmp/myntra/products.csv \\
        --data-root ../shared/benchmark --image-base http://127.0.0.1:8000

The shop is read from its native export (`<data root>/<shop>/`, through data/shops/<shop>.yaml) with
normalisation's row checks, so the feed holds exactly the products the native export gives; images are copied
beside the feed (pipelines/ingest/feeds/writers.py). `--limit N` keeps whole product groups, picked by a hash of
the group id (a stable, varied sample), until N products. Reading the feed back (`prodcat onboard --feed ...`, or
pipelines.ingest.feeds.load_feed) gives the same ids, titles, groups and native paths: tests/test_feeds.py checks it.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.ingest.feeds.writers import FEED_WRITERS, export_feed, shop_records  # noqa: E402
from pipelines.ingest.shops import BadExport, get_adapter  # noqa: E402
from pipelines.settings import SAMPLE_DIR  # noqa: E402


def sample_groups(records: list[dict], limit: int) -> list[dict]:
    """Whole groups, in the order of a hash of their id, until `limit` products (0 = every record)."""
    if not limit:
        return records
    groups: dict[str, list] = {}
    for rec in records:
        groups.setdefault(rec["group_id"], []).append(rec)
    chosen = []
    for gid in sorted(groups, key=lambda g: hashlib.sha256(g.encode()).hexdigest()):
        if len(chosen) >= limit:
            break
        chosen += groups[gid]
    return chosen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shop", required=True, help="a shop with a contract in data/shops/ (myntra, hm, flipkart, ...)")
    ap.add_argument("--format", required=True, choices=sorted(FEED_WRITERS), help="feed format to write")
    ap.add_argument("--out", required=True, type=Path, help="the feed file; images go to its folder's images/")
    ap.add_argument("--data-root", type=Path, default=SAMPLE_DIR, help="holds <shop>/ (default: data/sample)")
    ap.add_argument("--limit", type=int, default=0, help="about this many products, whole groups (0 = all)")
    ap.add_argument("--image-base", default="", help="link images under this URL instead of relative paths")
    args = ap.parse_args(argv)
    try:
        adapter = get_adapter(args.shop)
        records = sample_groups(shop_records(adapter, args.data_root / args.shop), args.limit)
        images = export_feed(records, args.format, args.out, args.shop, args.image_base)
    except (BadExport, OSError, ValueError) as e:
        print(f"export_feed: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(records)} products of {args.shop} ({len({r['group_id'] for r in records})} groups, "
          f"{images} with an image) as {args.format}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
